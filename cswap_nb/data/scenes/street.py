"""The street itself: its cross-section, the sky, the ground (road, markings, sidewalks, terrain), and
what lines it (buildings, walls, fences, hedges) up to the street's end."""
from __future__ import annotations

import math

import numpy as np

from ..cityscapes import BUILDING, FENCE, ROAD, SIDEWALK, TERRAIN, VEGETATION, WALL
from .canvas import CONCRETE, FACADE, GREENS, PAVEMENTS, TERRAINS, NEAR_PLANE, fraction, rgb_of, Canvas


def layout(cv: Canvas) -> None:
    """The street cross-section (metres, X) and the distance of the street's end."""
    rng = cv.rng
    cv.lane_w = rng.uniform(2.9, 3.6)
    cv.lanes = int(rng.choice([2, 2, 3, 4]))
    road_w = cv.lanes * cv.lane_w
    cv.XL = -road_w * rng.uniform(0.2, 0.65)
    cv.XR = cv.XL + road_w
    cv.cam_lane = int((0 - cv.XL) // cv.lane_w)
    sides = {}
    for side in (-1, 1):
        edge = cv.XL if side < 0 else cv.XR
        verge = rng.uniform(0.8, 2.5) if rng.random() < 0.25 else 0.0
        walk = rng.uniform(1.8, 5.0)
        strip = rng.uniform(1.0, 4.0) if rng.random() < 0.35 else 0.0
        park = rng.random() < 0.15
        curb = edge + side * verge
        sides[side] = dict(edge=edge, curb=curb, walk_out=curb + side * walk,
                           line=curb + side * (walk + strip), park=park, verge=verge)
    cv.sides = sides
    cv.Zend = rng.uniform(50, 180)
    cv.cross = None
    if rng.random() < 0.35:
        z = rng.uniform(12, 45)
        cv.cross = (z, z + rng.uniform(8, 14))


def in_cross(cv: Canvas, Z0, Z1) -> bool:
    return cv.cross is not None and Z1 > cv.cross[0] - 0.5 and Z0 < cv.cross[1] + 0.5


def sky(cv: Canvas) -> None:
    """A vertical gradient (clear, overcast or dusk) with soft clouds, above the horizon."""
    rng = cv.rng
    kind = rng.choice(3, p=[0.5, 0.35, 0.15])
    if kind == 0:
        top, hor = rgb_of(0.25, 0.45, 0.8), rgb_of(0.68, 0.8, 0.92)
    elif kind == 1:
        g = rng.uniform(0.6, 0.9)
        top, hor = rgb_of(g, g, g + 0.03), rgb_of(g + 0.05, g + 0.05, g + 0.05)
    else:
        top, hor = rgb_of(0.3, 0.35, 0.6), rgb_of(0.95, 0.65, 0.4)
    top, hor = cv.jitter(top, 0.1), cv.jitter(hor, 0.1)
    r1 = min(cv.H, int(math.ceil(cv.h0)) + 1)  # the ground covers the rest
    t = np.minimum(cv.yc[:r1] / max(cv.h0, 1.0), 1)[:, None, None]
    cloud = np.clip(cv.coarse[:r1] * rng.uniform(0.3, 0.8) - rng.uniform(0.0, 0.6), 0, 1)[..., None]
    shade = rng.uniform(0.75, 1.0)
    cv.img[:r1] = (top + (hor - top) * t) * (1 - cloud) + cloud * shade + cv.tex((0, r1, 0, cv.W), 0.01)


def ground(cv: Canvas) -> None:
    """Road, lane markings, sidewalks and terrain on the ground plane below the horizon."""
    rng = cv.rng
    below = cv.yc > cv.h0 + 0.05
    if not below.any():
        return
    r0 = cv.ground_r0 = int(np.argmax(below))
    Z = (cv.F * cv.Hc / (cv.yc[r0:] - cv.h0))[:, None]  # (h, 1)
    X = (cv.xc[None, :] - cv.vx) * (Z / cv.F)  # (h, w)
    p = Z / cv.F
    shape = X.shape
    cv.GZ = np.broadcast_to(Z, shape)
    left, right = cv.sides[-1], cv.sides[1]
    lab = np.full(shape, TERRAIN, np.uint8)
    walk = ((X >= left["walk_out"]) & (X <= left["curb"])) | ((X >= right["curb"]) & (X <= right["walk_out"]))
    lab[walk] = SIDEWALK
    road = (X >= cv.XL) & (X <= cv.XR)
    if cv.cross is not None:
        road |= (Z >= cv.cross[0]) & (Z <= cv.cross[1])
    lab[road] = ROAD

    # colours: asphalt, paving stones (one colour per side), grass/earth
    walk &= ~road
    stone_l, stone_r = cv.pick(PAVEMENTS), cv.pick(PAVEMENTS)
    grass, dirt = cv.pick(TERRAINS), cv.pick(TERRAINS)
    asphalt = cv.jitter(rgb_of(*([rng.uniform(0.28, 0.55)] * 3)), 0.08)
    mix = np.clip(0.5 + 0.6 * cv.coarse[r0:], 0, 1)[..., None]
    col = grass * mix + dirt * (1 - mix)
    col[walk] = np.where((X < 0)[walk][:, None], stone_l, stone_r)
    col[road] = asphalt
    fine, coarse = cv.fine[r0:], cv.coarse[r0:]
    gain = 1 + np.where(road, 0.05 * fine + 0.06 * coarse, np.where(walk, 0.05 * fine + 0.04 * coarse, 0.15 * fine))
    grid = (fraction(X * (1 / 0.6)) < 0.12) | (fraction(Z * (1 / 0.6)) < 0.12)
    gain[walk & grid] *= 0.9
    half = np.maximum(0.15, 0.5 * p)
    gain[walk & ((np.abs(X - left["curb"]) < half) | (np.abs(X - right["curb"]) < half))] *= 1.15
    col *= gain[..., None]

    # lane markings, painted with their pixel coverage so that far lines fade out
    paint = rgb_of(0.9, 0.9, 0.88) if rng.random() < 0.8 else rgb_of(0.9, 0.75, 0.2)
    period, duty, phase = rng.uniform(6, 12), rng.uniform(0.3, 0.6), rng.uniform(0, 12)
    dashed = fraction((Z + phase) / period) < duty
    half = np.maximum(0.07, 0.5 * p)
    cover = np.minimum(1.0, 0.07 / half)  # (h, 1)
    lines = [cv.XL + k * cv.lane_w for k in range(1, cv.lanes)]
    solid = [cv.XL + 0.3, cv.XR - 0.3] if rng.random() < 0.6 else []
    on = np.zeros(shape, bool)
    for b in lines + solid:
        m = np.abs(X - b) < half
        on |= (m & dashed) if b in lines else m
    marks = np.where(on & road, cover, 0.0)
    if cv.cross is not None and rng.random() < 0.8:
        z0 = cv.cross[0]
        zebra = (Z > z0 - 4.0) & (Z < z0 - 1.0) & (fraction((X - cv.XL) / 1.1) < 0.5) & road
        marks[zebra] = 0.9
    m = marks > 0
    col[m] = col[m] * (1 - marks[m][:, None]) + paint * marks[m][:, None]
    if rng.random() < 0.4:  # a building's shadow over part of the street
        edge = rng.uniform(cv.XL - 3, cv.XL + 0.6 * (cv.XR - cv.XL))
        shadow = (X - edge) * rng.choice([-1, 1]) > 0
        col[shadow] *= rgb_of(0.55, 0.58, 0.68) * rng.uniform(0.8, 1.1)
    cv.img[r0:] = col
    cv.lab[r0:] = lab
    cv.zb[r0:] = cv.GZ


def building_shader(cv: Canvas, base):
    rng = cv.rng
    floor_h, col_w = rng.uniform(2.8, 3.8), rng.uniform(2.0, 4.0)
    win_w, win_h = rng.uniform(0.3, 0.65) / 2, rng.uniform(0.35, 0.6) / 2
    glass = cv.jitter(rgb_of(0.18, 0.22, 0.28) if rng.random() < 0.7 else rgb_of(0.55, 0.62, 0.7), 0.3)
    trim = cv.jitter(base * rng.uniform(0.6, 1.3), 0.1)
    pal = np.stack([base, trim, glass])
    shop, phase = rng.random() < 0.5, rng.uniform(0, 100)

    def shader(face, u, v, reg):
        if face == 2:
            return None, base * 0.8
        u, v = u + 0 * v, v + 0 * u
        iu, iv = np.floor(u / col_w), np.floor(v / floor_h)
        fu, fv = u / col_w - iu, v / floor_h - iv
        upper = v >= floor_h
        part = ((fv < 0.08) & upper).astype(np.intp)
        win = (np.abs(fu - 0.5) < win_w) & (np.abs(fv - 0.55) < win_h) & upper
        if shop:
            win |= ~upper & (v > 0.4) & (v < floor_h * 0.8) & (np.abs(fu - 0.5) < 0.4)
        part[win] = 2
        sparkle = np.sin(iu * 12.9898 + iv * 78.233 + phase)
        gain = np.where(win, 1 + 0.35 * sparkle, 1 + 0.08 * cv.coarse[reg[0]:reg[1], reg[2]:reg[3]])
        return None, pal[part] * (gain + 0.06 * cv.fine[reg[0]:reg[1], reg[2]:reg[3]])[..., None]

    return shader


def plain_shader(cv: Canvas, base, amp=0.08, bricks=False):
    def shader(face, u, v, reg):
        c = base * (1 + cv.tex(reg, amp, amp))
        if bricks and face != 2:
            line = fraction((v + 0 * u) / 0.3) < 0.15
            c = c * np.where(line, 0.85, 1.0)[..., None]
        return None, c if face != 2 else c * 1.1

    return shader


def foliage_shader(cv: Canvas, base, height, ragged=0.25):
    def shader(face, u, v, reg):
        r0, r1, c0, c1 = reg
        t = cv.fine[r0:r1, c0:c1]
        keep = None if face == 2 else v < height * (1 - ragged * np.clip(0.5 + 0.5 * t, 0, 1.5))
        c = base * (1 + 0.35 * t[..., None] + cv.tex(reg, 0.0, 0.15))
        return keep, c

    return shader


def fence_shader(cv: Canvas, base, height):
    post = cv.rng.uniform(1.5, 3.0)

    def shader(face, u, v, reg):
        bar = (fraction(u / post) < 0.08) | (np.abs(v - 0.9 * height) < 0.06) | (np.abs(v - 0.15 * height) < 0.06)
        mesh = (fraction((u + v) / 0.25) < 0.3) | (fraction((u - v) / 0.25) < 0.3)
        alpha = np.where(bar, 1.0, np.where(mesh, 0.75, 0.45)).astype(np.float32)
        return None, base * (1 + cv.tex(reg, 0.05)), alpha

    return shader


def fence(cv: Canvas, X, Z0, Z1, side) -> None:
    h = cv.rng.uniform(1.0, 2.2)
    base = cv.pick([rgb_of(0.45, 0.45, 0.45), rgb_of(0.3, 0.35, 0.3), rgb_of(0.55, 0.45, 0.35), rgb_of(0.7, 0.7, 0.7)])
    X0, X1 = (X - 0.05, X) if side < 0 else (X, X + 0.05)
    cv.box(X0, X1, Z0, Z1, 0.0, h, FENCE, fence_shader(cv, base, h))


def street_side(cv: Canvas, side: int) -> None:
    """Buildings along the street, with gaps (trees, hedges, walls, fences, set-back houses) or a park."""
    rng = cv.rng
    s = cv.sides[side]
    line = s["line"]
    z = NEAR_PLANE
    while z < cv.Zend:
        if cv.cross is not None and cv.cross[0] - 0.5 <= z < cv.cross[1]:
            z = cv.cross[1]  # the far corner: its facade runs along the cross street
            length = rng.uniform(10, 30)
            cv.later(z, building, line, z, z + length, side, 90.0)
            z += length
            continue
        length = rng.uniform(8, 30) * (1 + z / 40)
        z1 = z + length
        if cv.cross is not None and z < cv.cross[0] < z1:
            z1 = cv.cross[0]
        if s["park"] or rng.random() < 0.28:  # a gap between buildings, or a park
            kind = 0 if s["park"] else rng.choice(4, p=[0.35, 0.25, 0.2, 0.2])
            if kind == 0:
                for zt in np.arange(z + rng.uniform(0.5, 3), min(z1, 70), rng.uniform(4, 9)):
                    cv.later(zt, tree, line + side * rng.uniform(0.5, 5), zt, True)
                if rng.random() < 0.5:
                    cv.later(z, hedge, line, z, z1, side)
            elif kind == 1:
                cv.later(z, wall, line, z, z1, side)
            elif kind == 2:
                cv.later(np.inf, fence, line, z, z1, side)
            if not s["park"] or rng.random() < 0.3:
                back = line + side * rng.uniform(8, 20)
                cv.later(z, building, back, max(NEAR_PLANE, z - 5), z1 + 5, side)
        else:
            setback = rng.uniform(0, 1.5) if rng.random() < 0.3 else 0.0
            cv.later(z, building, line + side * setback, z, z1, side)
        z = z1


def building(cv: Canvas, line, Z0, Z1, side, depth=None) -> None:
    rng = cv.rng
    h = rng.uniform(5, 26) if rng.random() < 0.85 else rng.uniform(26, 45)
    depth = depth or rng.uniform(8, 20)
    base = cv.pick(FACADE)
    X0, X1 = (line - depth, line) if side < 0 else (line, line + depth)
    cv.box(X0, X1, Z0, Z1, 0.0, h, BUILDING, building_shader(cv, base))


def wall(cv: Canvas, line, Z0, Z1, side, h=None) -> None:
    h = h or cv.rng.uniform(0.8, 3.0)
    t = cv.rng.uniform(0.2, 0.5)
    X0, X1 = (line - t, line) if side < 0 else (line, line + t)
    cv.box(X0, X1, Z0, Z1, 0.0, h, WALL, plain_shader(cv, cv.pick(CONCRETE), bricks=cv.rng.random() < 0.4))


def hedge(cv: Canvas, line, Z0, Z1, side) -> None:
    h = cv.rng.uniform(0.8, 2.2)
    t = cv.rng.uniform(0.6, 1.5)
    X0, X1 = (line - t, line) if side < 0 else (line, line + t)
    cv.box(X0, X1, Z0, Z1, 0.0, h, VEGETATION, foliage_shader(cv, cv.pick(GREENS), h))


def street_end(cv: Canvas) -> None:
    """What closes the street far away: a row of buildings, trees, or open sky."""
    rng = cv.rng
    kind = rng.choice(3, p=[0.55, 0.3, 0.15])
    if kind == 2:
        return
    Z = cv.Zend
    X, X_end = cv.sides[-1]["line"] - 20, cv.sides[1]["line"] + 20
    while X < X_end:
        w = rng.uniform(8, 25)
        if kind == 0:
            shader = building_shader(cv, cv.pick(FACADE))
            cv.later(Z, Canvas.box, X, X + w, Z, Z + 15, 0.0, rng.uniform(6, 30), BUILDING, shader)
        else:
            h = rng.uniform(5, 15)
            shader = foliage_shader(cv, cv.pick(GREENS), h, 0.4)
            cv.later(Z, Canvas.box, X, X + w, Z, Z + 10, 0.0, h, VEGETATION, shader)
        X += w


def tree(cv: Canvas, X, Z, big=False) -> None:
    rng = cv.rng
    rx = rng.uniform(1.2, 2.8) * (1.5 if big else 1.0)
    ry = rx * rng.uniform(0.9, 1.4)
    base = rng.uniform(1.8, 3.5)
    cy = base + ry
    sp = cv.sprite(X, Z, rx * 1.3, cy + ry * 1.3)
    if sp is None:
        return
    reg, a, b, p = sp
    r0, r1, c0, c1 = reg
    t = cv.fine[r0:r1, c0:c1]
    crown = (a / rx) ** 2 + ((b - cy) / ry) ** 2 < 1 + 0.35 * t
    trunk = (np.abs(a) <= max(0.15, p)) & (b >= 0) & (b <= cy)
    green = cv.pick(GREENS)
    bark = cv.jitter(rgb_of(0.3, 0.22, 0.15))
    light = np.clip((b - cy) / ry, -1, 1)[..., None] * 0.2
    rgb = np.where(crown[..., None], green * (1 + 0.4 * t[..., None] + light), bark)
    cv.paint(reg, crown | trunk, rgb, VEGETATION, Z)
