"""Road users: cars, trucks, buses and trams, bicycles and motorcycles with riders, people, and the ego
vehicle's bonnet."""
from __future__ import annotations

import numpy as np

from ..labels import IGNORE_INDEX
from ..cityscapes import BICYCLE, BUS, CAR, MOTORCYCLE, PERSON, RIDER, TRAIN, TRUCK
from .canvas import CLOTHES, SKIN, VEHICLE, NEAR_PLANE, fraction, rgb_of, segment_mask, Canvas
from .street import in_cross


def vehicle_shader(cv: Canvas, body, facing_front: bool, kind: str, dims, cabin=None):
    """Shades a vehicle box: wheels, windows, lights, the gap under the body and, for cars, the cabin.

    ``dims`` = (width, length, height); ``cabin`` = (body height, start, end) for a car: above
    the body only the cabin (between fractions start-end of the length, narrowing upwards) is solid.
    """
    w, length, h = dims
    glass = cv.jitter(rgb_of(0.15, 0.18, 0.22), 0.3)
    light = rgb_of(1.0, 0.95, 0.8) if facing_front else rgb_of(0.85, 0.1, 0.1)
    pal = np.stack([body, rgb_of(0.06, 0.06, 0.06), glass, light, rgb_of(0.9, 0.9, 0.85)])
    TYRE, GLASS, LAMP, PLATE = range(1, 5)  # 0 is the body
    clearance = 0.18 if kind not in ("truck", "truck_cab") else 0.45
    wheels_at = (0.18, 0.82) if kind == "car" else (0.12, 0.3, 0.85)
    wheel_r = 0.33 if kind == "car" else 0.5
    lower, f0, f1 = cabin if cabin is not None else (h, 0.0, 1.0)
    top = h - lower

    def shader(face, u, v, reg):
        r0, r1, c0, c1 = reg
        fine = cv.fine[r0:r1, c0:c1]
        if face == 2:
            keep = None if cabin is None else (v > f0 * length) & (v < f1 * length) & (u > 0.15) & (u < w - 0.15)
            return keep, body * (1.05 + 0.03 * fine[..., None])
        u, v = u + 0 * v, v + 0 * u
        part = np.zeros(u.shape, np.intp)
        if face == 0:
            wheel = (v < wheel_r * 1.1) & ((u < 0.16 * w) | (u > 0.84 * w))
            keep = (v > clearance) | wheel
            if cabin is not None:
                above = v > lower
                inset = 0.12 + 0.22 * w * (v - lower) / top
                keep &= ~above | ((u > inset) & (u < w - inset))
                part[above & (u > inset + 0.08) & (u < w - inset - 0.08) & (v < h - 0.08)] = GLASS
            elif kind in ("bus", "train", "truck_cab"):
                part[(u > 0.08 * w) & (u < 0.92 * w) & (v > 0.45 * h) & (v < 0.88 * h)] = GLASS
            part[wheel] = TYRE
            part[(np.abs(v - 0.72 * lower) < 0.08 * lower + 0.05) & ((u < 0.17 * w) | (u > 0.83 * w))] = LAMP
            if kind in ("car", "truck"):
                part[(np.abs(v - 0.35 * lower) < 0.07) & (np.abs(u - w / 2) < 0.25)] = PLATE
        else:
            wheel = np.zeros(u.shape, bool)
            for f in wheels_at:
                wheel |= (u - f * length) ** 2 + (v - wheel_r) ** 2 < wheel_r ** 2
            keep = (v > clearance) | wheel
            if cabin is not None:
                above = v > lower
                slant = 0.12 * length * (v - lower) / top
                a0, a1 = f0 * length + slant, f1 * length - slant
                keep &= ~above | ((u > a0) & (u < a1))
                part[above & (u > a0 + 0.1) & (u < a1 - 0.1) & (v < h - 0.08)
                     & (np.abs(fraction((u - a0) / (a1 - a0 + 1e-6) * 2) - 0.5) < 0.44)] = GLASS
            elif kind in ("bus", "train"):
                part[(v > 0.42 * h) & (v < 0.85 * h) & (fraction(u / 1.6) < 0.85)] = GLASS
            elif kind == "truck_cab":
                part[(v > 0.55 * h) & (v < 0.85 * h) & (u < 0.6 * length)] = GLASS
            part[wheel] = TYRE
        shade = 0.8 + 0.2 * np.minimum(np.maximum(v / lower, 0), 1) + 0.04 * fine
        return keep, pal[part] * shade[..., None]

    return shader


def car(cv: Canvas, X, Z, facing_front) -> None:
    rng = cv.rng
    w, length = rng.uniform(1.7, 1.95), rng.uniform(3.8, 4.9)
    h = rng.uniform(1.35, 1.75)
    cabin = (h * rng.uniform(0.5, 0.6), rng.uniform(0.2, 0.32), rng.uniform(0.7, 0.85))
    X0 = X - w / 2
    shadow(cv, X0, X0 + w, Z, Z + length)
    shader = vehicle_shader(cv, cv.pick(VEHICLE), facing_front, "car", (w, length, h), cabin)
    cv.box(X0, X0 + w, Z, Z + length, 0.0, h, CAR, shader)


def big_vehicle(cv: Canvas, X, Z, cls, facing_front) -> None:
    rng = cv.rng
    if cls == TRUCK:
        w, h = rng.uniform(2.3, 2.55), rng.uniform(3.0, 3.9)
        cargo_len, cab_len = rng.uniform(5, 9), 2.2
        body = cv.pick(VEHICLE + [rgb_of(0.9, 0.9, 0.9)] * 3)
        cab = cv.pick(VEHICLE)
        shadow(cv, X - w / 2, X + w / 2, Z, Z + cargo_len + cab_len)
        if facing_front:  # the cab is nearest
            cv.box(X - w / 2, X + w / 2, Z, Z + cab_len, 0.0, h * 0.8, TRUCK,
                     vehicle_shader(cv, cab, True, "truck_cab", (w, cab_len, h * 0.8)))
            cv.box(X - w / 2, X + w / 2, Z + cab_len + 0.2, Z + cab_len + cargo_len, 0.0, h, TRUCK,
                     vehicle_shader(cv, body, True, "truck", (w, cargo_len, h)))
        else:
            cv.box(X - w / 2, X + w / 2, Z, Z + cargo_len, 0.0, h, TRUCK,
                     vehicle_shader(cv, body, False, "truck", (w, cargo_len, h)))
            cv.box(X - w / 2, X + w / 2, Z + cargo_len + 0.2, Z + cargo_len + cab_len, 0.0, h * 0.8, TRUCK,
                     vehicle_shader(cv, cab, False, "truck_cab", (w, cab_len, h * 0.8)))
        return
    if cls == BUS:
        w, h, length = 2.55, rng.uniform(3.0, 3.4), rng.uniform(10, 14)
        body = cv.pick([rgb_of(0.9, 0.85, 0.2), rgb_of(0.85, 0.85, 0.85), rgb_of(0.7, 0.1, 0.1), rgb_of(0.15, 0.3, 0.6),
                          rgb_of(0.3, 0.55, 0.3)])
        kind = "bus"
    else:
        w, h, length = 2.4, rng.uniform(3.3, 3.7), rng.uniform(20, 32)
        body = cv.pick([rgb_of(0.95, 0.85, 0.2), rgb_of(0.9, 0.9, 0.92), rgb_of(0.75, 0.15, 0.15),
                          rgb_of(0.2, 0.45, 0.7)])
        kind = "train"
    shadow(cv, X - w / 2, X + w / 2, Z, Z + length)
    shader = vehicle_shader(cv, body, facing_front, kind, (w, length, h))
    cv.box(X - w / 2, X + w / 2, Z, Z + length, 0.0, h, cls, shader)


def shadow(cv: Canvas, X0, X1, Z0, Z1) -> None:
    """Darken the road under a vehicle (labels unchanged)."""
    if not hasattr(cv, "GZ") or Z0 > 40:
        return
    Z0 = max(Z0, NEAR_PLANE)
    reg = cv.region([cv.col(X0 - 0.2, Z0), cv.col(X1 + 0.2, Z0), cv.col(X0, Z1), cv.col(X1, Z1)],
                      [cv.row(0, Z0 - 0.3), cv.row(0, Z1)])
    if reg is None:
        return
    r0, r1, c0, c1 = reg
    r0 = max(r0, cv.ground_r0)
    if r0 >= r1:
        return
    Z = cv.GZ[r0 - cv.ground_r0: r1 - cv.ground_r0, c0:c1]
    X = (cv.xc[None, c0:c1] - cv.vx) * Z / cv.F
    m = (Z > Z0 - 0.3) & (Z < Z1) & (X > X0 - 0.2) & (X < X1 + 0.2) & (cv.zb[r0:r1, c0:c1] >= Z)
    cv.img[r0:r1, c0:c1][m] *= 0.45


def bicycle(cv: Canvas, X, Z, rider: bool, motor: bool = False) -> None:
    rng = cv.rng
    side_view = rng.random() < 0.5
    sp = cv.sprite(X, Z, 1.1 if side_view else 0.45, 1.9 if rider else 1.2)
    if sp is None:
        return
    reg, a, b, p = sp
    flip = rng.choice([-1.0, 1.0])
    a = a * flip
    t = max(0.035, 0.5 * p)  # half-thickness of tubes: at least one pixel wide
    frame_c = cv.pick(VEHICLE)
    veh = np.zeros(np.broadcast_shapes(a.shape, b.shape), bool)
    dark = np.zeros_like(veh)
    if side_view:
        r = 0.34 if not motor else 0.32
        for cx in (-0.55, 0.55) if not motor else (-0.7, 0.7):
            d = np.sqrt((a - cx) ** 2 + (b - r) ** 2)
            ring = np.abs(d - r + t) <= t if not motor else d <= r
            veh |= ring
            dark |= ring
        if motor:
            body = ((a / 0.62) ** 2 + ((b - 0.68) / 0.24) ** 2) <= 1
            veh |= body
        else:
            pts = [(-0.55, 0.34), (-0.12, 0.92), (0.0, 0.3), (0.45, 0.86), (0.55, 0.34)]
            for (x0, y0), (x1, y1) in [(pts[0], pts[1]), (pts[1], pts[2]), (pts[2], pts[0]), (pts[2], pts[3]),
                                       (pts[1], pts[3]), (pts[3], pts[4]), ((0.38, 1.0), (0.52, 1.0))]:
                veh |= segment_mask(a, b, x0, y0, x1, y1, t)
        hip, knee, foot = (-0.12, 0.95), (0.18, 0.62), (0.0, 0.3)
        shoulder, hand = (0.2, 1.45), (0.45, 1.0)
    else:
        wheel = (np.abs(a) <= max(0.04 if not motor else 0.08, p)) & (b >= 0) & (b <= 0.7)
        veh |= wheel
        dark |= wheel
        veh |= segment_mask(a, b, -0.3, 1.0, 0.3, 1.0, t)
        if motor:
            veh |= (np.abs(a) <= 0.32) & (b >= 0.35) & (b <= 0.95)
        hip, knee, foot = (0.12, 0.95), (0.16, 0.6), (0.15, 0.3)
        shoulder, hand = (0.2, 1.45), (0.3, 1.0)
    cls = MOTORCYCLE if motor else BICYCLE
    rgb = np.where(dark[..., None], rgb_of(0.08, 0.08, 0.08), frame_c)
    if motor:
        rgb = rgb * (1 + cv.tex(reg, 0.05))
    cv.paint(reg, veh, rgb, cls, Z)
    if rider:
        person_shape(cv, reg, a, b, p, Z, RIDER, riding=(hip, knee, foot, shoulder, hand), side_view=side_view)


def traffic(cv: Canvas) -> None:
    rng = cv.rng
    lanes = [cv.XL + (k + 0.5) * cv.lane_w for k in range(cv.lanes)]
    two_way = rng.random() < 0.6
    for k, X in enumerate(lanes):
        oncoming = two_way and X < -cv.lane_w * 0.6
        z = rng.uniform(5, 14) if k != cv.cam_lane else rng.uniform(7, 20)
        while z < 70:
            if rng.random() < 0.6:
                x = X + rng.uniform(-0.3, 0.3)
                r = rng.random()
                if r < 0.06:
                    cv.later(z, big_vehicle, x, z, TRUCK, oncoming)
                    z += 9
                elif r < 0.16:
                    cv.later(z, bicycle, x, z, True, rng.random() < 0.55)
                else:
                    cv.later(z, car, x, z, oncoming)
                    z += 4
            z += rng.uniform(8, 30)
    for cls, p in ((TRUCK, 0.3), (BUS, 0.4), (TRAIN, 0.2)):
        if rng.random() < p:
            X = lanes[int(rng.integers(len(lanes)))] if cls != TRAIN else (cv.XL + cv.XR) / 2
            z = rng.uniform(7, 40)
            cv.later(z, big_vehicle, X + rng.uniform(-0.2, 0.2), z, cls, rng.random() < 0.5)
    for side, s in cv.sides.items():  # a row of cars parked along the kerb
        if rng.random() < 0.45:
            X = s["edge"] - side * rng.uniform(1.0, 1.3)
            z = rng.uniform(3, 12)
            end = z + rng.uniform(10, 50)
            while z < end:
                if rng.random() < 0.75 and not in_cross(cv, z, z + 5):
                    cv.later(z, car, X, z, rng.random() < 0.5)
                z += rng.uniform(5.2, 7)
    for _ in range(rng.poisson(1.3)):  # cyclists and motorcyclists near the road edge
        side = rng.choice([-1, 1])
        X = cv.sides[side]["edge"] - side * rng.uniform(0.6, 1.5)
        z = rng.uniform(4, 35)
        cv.later(z, bicycle, X, z, True, rng.random() < 0.55)


def people(cv: Canvas) -> None:
    rng = cv.rng
    for s in cv.sides.values():
        lo, hi = sorted((s["curb"], s["walk_out"]))
        for _ in range(rng.poisson(3.5)):
            z = rng.uniform(3.5, 40)
            cv.later(z, person, rng.uniform(lo + 0.3, hi - 0.3), z)
    if cv.cross is not None:  # pedestrians on the zebra crossing
        for _ in range(rng.poisson(1.5)):
            z = cv.cross[0] - rng.uniform(1.5, 3.5)
            cv.later(z, person, rng.uniform(cv.XL, cv.XR), z)


def person(cv: Canvas, X, Z) -> None:
    rng = cv.rng
    height = rng.uniform(1.5, 1.95) if rng.random() < 0.9 else rng.uniform(1.0, 1.4)
    sp = cv.sprite(X, Z, 0.45 * height / 1.75, height + 0.05)
    if sp is None:
        return
    reg, a, b, p = sp
    person_shape(cv, reg, a, b * (1.75 / height), p * 1.75 / height, Z, PERSON, scale_a=1.75 / height)


def person_shape(cv: Canvas, reg, a, b, p, Z, cls, riding=None, side_view=False, scale_a=1.0) -> None:
    """A person drawn in a 1.75 m frame: standing, or seated with hip/knee/foot/shoulder/hand given."""
    rng = cv.rng
    a = a * scale_a + 0 * b  # (h, w)
    t = 0.5 * p
    hair = rgb_of(0.1, 0.08, 0.06) if rng.random() < 0.7 else rgb_of(0.6, 0.45, 0.2)
    pal = np.stack([cv.pick(CLOTHES), cv.pick(CLOTHES), cv.pick(SKIN), cv.jitter(hair)])
    hx = 0.0 if riding is None or not side_view else riding[3][0] * 0.6
    head = ((a - hx) / max(0.1, t)) ** 2 + ((b - 1.63) / max(0.12, t)) ** 2 <= 1
    if riding is None:
        stride = rng.uniform(0.0, 0.25)
        aa = np.abs(a)
        upper = (b >= 0.85) & (b <= 1.5) & (aa <= np.maximum(0.15 + 0.06 * (b - 0.85), t))
        upper |= (b >= 0.9) & (b <= 1.45) & (np.abs(aa - 0.2 - 0.03 * (1.45 - b)) <= max(0.045, t))
        spread = 0.07 + stride * (0.88 - b) * 0.57
        legs = (b >= 0) & (b < 0.88) & (np.abs(aa - spread) <= max(0.065, t))
    else:
        hip, knee, foot, shoulder, hand = riding
        upper = segment_mask(a, b, hip[0] * side_view, hip[1], shoulder[0] * side_view, shoulder[1], max(0.14, t))
        upper |= segment_mask(a, b, shoulder[0], shoulder[1] - 0.05, hand[0], hand[1], max(0.045, t))
        legs = segment_mask(a, b, hip[0], hip[1], knee[0], knee[1], max(0.07, t)) | \
            segment_mask(a, b, knee[0], knee[1], foot[0], foot[1], max(0.06, t))
        if not side_view:
            upper |= segment_mask(a, b, -shoulder[0], shoulder[1] - 0.05, -hand[0], hand[1], max(0.045, t))
            legs |= segment_mask(a, b, -hip[0], hip[1], -knee[0], knee[1], max(0.07, t)) | \
                segment_mask(a, b, -knee[0], knee[1], -foot[0], foot[1], max(0.06, t))
    part = upper.astype(np.intp)  # 0 trousers, 1 top, 2 skin, 3 hair
    part[head] = 2
    part[head & (b > 1.67)] = 3
    rgb = pal[part] * (1 + 0.05 * cv.fine[reg[0]:reg[1], reg[2]:reg[3], None])
    cv.paint(reg, head | upper | legs, rgb, cls, Z - 0.1)


def ego_vehicle(cv: Canvas) -> None:
    """The bonnet of the car carrying the camera at the bottom of the image (ignored, as in Cityscapes)."""
    rng = cv.rng
    d = cv.H * rng.uniform(0.05, 0.13)
    k = rng.uniform(0.2, 0.6)
    xn = (cv.xc - cv.W / 2) / (cv.W / 2)
    top = cv.H - d * (1 - k * xn ** 2)
    m = cv.yc[:, None] >= top[None, :]
    paint = cv.pick(VEHICLE)
    refl = np.clip((cv.yc[:, None] - top[None, :]) / max(d, 1), 0, 1)[..., None]
    rgb = paint * (0.6 + 0.5 * (1 - refl)) + cv.tex((0, cv.H, 0, cv.W), 0.03)
    cv.paint((0, cv.H, 0, cv.W), m, rgb, IGNORE_INDEX, 0.0)
