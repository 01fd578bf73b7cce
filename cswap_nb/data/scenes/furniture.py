"""Street furniture: poles with signs and traffic lights, bins, parked bicycles and the other objects
by the road (the trees are planted by :func:`.street.tree`)."""
from __future__ import annotations

import numpy as np

from ..cityscapes import POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN
from ..labels import IGNORE_INDEX
from .canvas import CLOTHES, CONCRETE, Canvas, rgb_of
from .road_users import bicycle
from .street import fence, in_cross, plain_shader, tree, wall


def furniture(cv: Canvas) -> None:
    rng = cv.rng
    for side, s in cv.sides.items():
        curb, out = s["curb"], s["walk_out"]
        # poles near the kerb, each with a lamp, signs or a traffic light
        z = rng.uniform(3, 14)
        while z < 60:
            if not in_cross(cv, z, z):
                cv.later(z, pole_with_stuff, curb + side * rng.uniform(0.3, 0.8), z, side)
            z += rng.uniform(9, 24)
        if rng.random() < 0.5:  # a row of trees
            X = curb + side * 0.6 if s["verge"] else out - side * rng.uniform(0.6, 1.2)
            z = rng.uniform(2, 10)
            step = rng.uniform(8, 16)
            while z < 50:
                if not in_cross(cv, z - 2, z + 2):
                    cv.later(z, tree, X, z)
                z += step
        if rng.random() < 0.3:  # fence or low wall along the sidewalk
            z0 = rng.uniform(2, 30)
            z1 = z0 + rng.uniform(6, 25)
            if not in_cross(cv, z0, z1):
                if rng.random() < 0.6:
                    cv.later(np.inf, fence, out, z0, z1, side)
                else:
                    cv.later(z0, wall, out, z0, z1, side)
        for _ in range(rng.poisson(0.5)):  # litter bins: clutter without a class
            X = rng.uniform(min(curb, out), max(curb, out))
            Z = rng.uniform(4, 40)
            w = rng.uniform(0.25, 0.4)
            shader = plain_shader(cv, cv.pick(CONCRETE + CLOTHES[:3]))
            cv.later(Z, Canvas.box, X - w, X + w, Z, Z + 2 * w, 0.0, rng.uniform(0.8, 1.2), IGNORE_INDEX, shader)
        if rng.random() < 0.6:  # parked bicycles
            X = rng.uniform(min(curb, out), max(curb, out))
            z = rng.uniform(4, 25)
            for k in range(int(rng.integers(1, 5))):
                cv.later(z + 0.8 * k, bicycle, X, z + 0.8 * k, False, rng.random() < 0.35)
    if cv.cross is not None and rng.random() < 0.7:  # overhead traffic lights at the junction
        z = cv.cross[0] - 0.5
        for X in rng.uniform(cv.XL + 1, cv.XR - 1, int(rng.integers(1, 3))):
            cv.later(z - 0.05, traffic_light, X, z - 0.05, rng.uniform(4.5, 6.0))
        cv.later(z, pole_sprite, cv.XR + 0.5, z, 6.5, cv.XL + 1.0)


def pole_sprite(cv: Canvas, X, Z, height, arm_to=None, width=None) -> None:
    rng = cv.rng
    width = width or rng.uniform(0.12, 0.3)
    grey = cv.pick([rgb_of(0.45, 0.45, 0.47), rgb_of(0.3, 0.32, 0.3), rgb_of(0.6, 0.6, 0.6), rgb_of(0.2, 0.25, 0.22)])
    sp = cv.sprite(X, Z, width / 2, height)
    if sp is not None:
        reg, a, b, p = sp
        hw = max(width / 2, p)  # at least 2 pixels wide
        m = (np.abs(a) <= hw) & (b >= 0) & (b <= height)
        shade = (1 + 0.25 * a / hw)[..., None]
        cv.paint(reg, m, grey * shade + cv.tex(reg, 0.02), POLE, Z)
    if arm_to is not None:  # horizontal arm over the road
        lo, hi = sorted((X, arm_to))
        sp = cv.sprite((lo + hi) / 2, Z, (hi - lo) / 2, height + 0.3, height - 0.3)
        if sp is not None:
            reg, a, b, p = sp
            m = (np.abs(a) <= (hi - lo) / 2) & (np.abs(b - height + 0.1) <= max(0.08, 0.5 * p))
            cv.paint(reg, m, grey, POLE, Z)


def pole_with_stuff(cv: Canvas, X, Z, side) -> None:
    rng = cv.rng
    kind = rng.choice(4, p=[0.25, 0.35, 0.3, 0.1])
    if kind == 0:  # street lamp reaching over the road
        h = rng.uniform(6, 9)
        reach = rng.uniform(1.0, 2.5)
        pole_sprite(cv, X, Z, h, arm_to=X - side * reach)
        sp = cv.sprite(X - side * reach, Z, 0.35, h, h - 0.35)
        if sp is not None:
            reg, a, b, p = sp
            m = (np.abs(a) <= max(0.35, p)) & (b <= h) & (b >= h - max(0.3, p))
            cv.paint(reg, m, cv.pick([rgb_of(0.3, 0.3, 0.3), rgb_of(0.8, 0.8, 0.75)]), POLE, Z - 0.05)
        if rng.random() < 0.3:
            sign(cv, X, Z - 0.05, rng.uniform(2.2, 3.0))
    elif kind == 1:  # sign post
        h = rng.uniform(2.6, 3.6)
        pole_sprite(cv, X, Z, h, width=rng.uniform(0.08, 0.15))
        sign(cv, X, Z - 0.05, h - 0.45)
        if rng.random() < 0.4:
            sign(cv, X, Z - 0.05, h - 1.15)
    elif kind == 2:  # traffic light post
        h = rng.uniform(2.8, 4.2)
        pole_sprite(cv, X, Z, h, width=rng.uniform(0.1, 0.2))
        traffic_light(cv, X, Z - 0.05, h - 0.5)
        if rng.random() < 0.4:
            traffic_light(cv, X - side * 3.5, Z - 0.05, h + 1.5)
            pole_sprite(cv, X, Z, h + 2.0, arm_to=X - side * 3.7)
    else:  # big direction sign on a pole
        h = rng.uniform(3.5, 5.0)
        pole_sprite(cv, X, Z, h)
        sign(cv, X - side * 0.8, Z - 0.05, h - 0.6, big=True)


def sign(cv: Canvas, X, Z, centre, big=False) -> None:
    rng = cv.rng
    size = rng.uniform(0.3, 0.45) if not big else rng.uniform(0.6, 1.0)
    sp = cv.sprite(X, Z, size * (2.0 if big else 1.0), centre + size + 0.05, centre - size - 0.05)
    if sp is None:
        return
    reg, a, b, p = sp
    s = max(size, 1.5 * p)
    d = b - centre
    red, white, blue = rgb_of(0.8, 0.1, 0.1), rgb_of(0.92, 0.92, 0.9), rgb_of(0.1, 0.25, 0.65)
    if big:
        m = (np.abs(a) <= 2 * s) & (np.abs(d) <= s)
        inner = (np.abs(a) <= 2 * s - 0.08) & (np.abs(d) <= s - 0.08)
        face = cv.pick([rgb_of(0.1, 0.4, 0.2), blue, rgb_of(0.9, 0.75, 0.1)])
        lettering = cv.fine[reg[0]:reg[1], reg[2]:reg[3], None] > 1.0
        rgb = np.where(inner[..., None], face * (1 + 0.6 * lettering), white)
    else:
        kind = rng.integers(5)
        if kind == 0:  # prohibition: red ring, white face
            r = np.sqrt(a * a + d * d)
            m = r <= s
            rgb = np.where((r < 0.7 * s)[..., None], white, red)
        elif kind == 1:  # mandatory: blue disc with a white arrow
            r = np.sqrt(a * a + d * d)
            m = r <= s
            rgb = np.where(((np.abs(a) < 0.15 * s) & (np.abs(d) < 0.6 * s))[..., None], white, blue)
        elif kind == 2:  # warning triangle
            m = (d >= -0.8 * s) & (np.abs(a) <= (s - d) * 0.58)
            rgb = np.where(((d >= -0.6 * s) & (np.abs(a) <= (0.7 * s - d) * 0.5))[..., None], white, red)
        elif kind == 3:  # priority road diamond
            m = np.abs(a) + np.abs(d) <= s
            rgb = np.where((np.abs(a) + np.abs(d) <= 0.65 * s)[..., None], rgb_of(0.95, 0.8, 0.1), white)
        else:  # information rectangle, or the grey back of a sign
            m = (np.abs(a) <= 0.8 * s) & (np.abs(d) <= s)
            rgb = cv.pick([blue, white, rgb_of(0.55, 0.55, 0.55)])
    rgb = np.broadcast_to(rgb, m.shape + (3,)) * (1 + cv.tex(reg, 0.04))
    cv.paint(reg, m, rgb, TRAFFIC_SIGN, Z)


def traffic_light(cv: Canvas, X, Z, centre) -> None:
    rng = cv.rng
    sp = cv.sprite(X, Z, 0.25, centre + 0.6, centre - 0.6)
    if sp is None:
        return
    reg, a, b, p = sp
    hw, hh = max(0.22, p), max(0.55, 2.0 * p)
    d = b - centre
    m = (np.abs(a) <= hw) & (np.abs(d) <= hh)
    housing = cv.pick([rgb_of(0.12, 0.12, 0.12), rgb_of(0.2, 0.25, 0.2), rgb_of(0.75, 0.65, 0.15)])
    lamps = [rgb_of(1.0, 0.15, 0.1), rgb_of(1.0, 0.7, 0.1), rgb_of(0.2, 1.0, 0.5)]
    on = rng.integers(3)
    rgb = np.broadcast_to(housing, m.shape + (3,)).copy()
    for k, off in enumerate((0.3, 0.0, -0.3)):
        lamp = (a * a + (d - off * hh / 0.55) ** 2) <= max(0.1, 0.5 * p) ** 2
        rgb[lamp] = lamps[k] if k == on else lamps[k] * 0.25
    cv.paint(reg, m, rgb, TRAFFIC_LIGHT, Z)
