"""The canvas of one road scene: a pinhole camera, colour/label/depth buffers, and the primitives
every object is drawn with (depth-tested painting, textures, colour jitter, boxes with shaded faces,
camera-facing sprites). The drawing functions of each kind of object take the canvas as their
first argument: :mod:`.street` (layout, sky, ground, buildings, walls, fences, hedges, trees),
:mod:`.furniture` (poles, signs, traffic lights, bins) and :mod:`.road_users` (vehicles, bicycles,
people, the ego vehicle).
"""
from __future__ import annotations

import math

import numpy as np

from ..cityscapes import SKY

NEAR_PLANE = 0.5  # near clipping plane (m)
_FAR = 1e9  # depth of the sky


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Bilinearly interpolated Gaussian noise with features about ``cell`` pixels wide, (h, w)."""
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    fy = (np.arange(h, dtype=np.float32) + 0.5) / cell
    fx = (np.arange(w, dtype=np.float32) + 0.5) / cell
    iy, ix = fy.astype(np.intp), fx.astype(np.intp)
    ty, tx = (fy - iy)[:, None], (fx - ix)[None, :]
    a, b = grid[iy][:, ix], grid[iy][:, ix + 1]
    c, d = grid[iy + 1][:, ix], grid[iy + 1][:, ix + 1]
    return (a * (1 - tx) + b * tx) * (1 - ty) + (c * (1 - tx) + d * tx) * ty


def rgb_of(*c) -> np.ndarray:
    return np.array(c, dtype=np.float32)


SKIN = [rgb_of(0.93, 0.75, 0.62), rgb_of(0.80, 0.58, 0.44), rgb_of(0.55, 0.38, 0.26), rgb_of(0.36, 0.24, 0.17)]
CLOTHES = [rgb_of(0.1, 0.1, 0.12), rgb_of(0.2, 0.25, 0.45), rgb_of(0.6, 0.1, 0.1), rgb_of(0.85, 0.85, 0.85),
           rgb_of(0.4, 0.4, 0.42), rgb_of(0.15, 0.35, 0.2), rgb_of(0.75, 0.6, 0.35), rgb_of(0.9, 0.7, 0.1),
           rgb_of(0.45, 0.25, 0.15), rgb_of(0.5, 0.55, 0.7)]
VEHICLE = [rgb_of(0.85, 0.85, 0.85), rgb_of(0.08, 0.08, 0.09), rgb_of(0.55, 0.56, 0.58), rgb_of(0.35, 0.36, 0.38),
           rgb_of(0.6, 0.08, 0.08), rgb_of(0.1, 0.2, 0.5), rgb_of(0.15, 0.3, 0.2), rgb_of(0.8, 0.7, 0.2),
           rgb_of(0.3, 0.45, 0.65), rgb_of(0.5, 0.4, 0.3), rgb_of(0.7, 0.3, 0.1), rgb_of(0.42, 0.42, 0.4)]
FACADE = [rgb_of(0.75, 0.7, 0.6), rgb_of(0.55, 0.55, 0.55), rgb_of(0.85, 0.83, 0.78), rgb_of(0.6, 0.32, 0.25),
          rgb_of(0.45, 0.35, 0.3), rgb_of(0.85, 0.75, 0.5), rgb_of(0.5, 0.55, 0.6), rgb_of(0.38, 0.38, 0.4),
          rgb_of(0.7, 0.6, 0.55), rgb_of(0.3, 0.3, 0.32)]
GREENS = [rgb_of(0.22, 0.35, 0.12), rgb_of(0.3, 0.42, 0.15), rgb_of(0.15, 0.25, 0.12), rgb_of(0.4, 0.45, 0.2),
          rgb_of(0.45, 0.38, 0.15), rgb_of(0.2, 0.3, 0.2)]
TERRAINS = [rgb_of(0.35, 0.45, 0.2), rgb_of(0.5, 0.48, 0.3), rgb_of(0.45, 0.37, 0.27), rgb_of(0.42, 0.5, 0.28)]
PAVEMENTS = [rgb_of(0.6, 0.6, 0.6), rgb_of(0.55, 0.45, 0.42), rgb_of(0.7, 0.66, 0.58), rgb_of(0.5, 0.5, 0.52),
             rgb_of(0.62, 0.55, 0.5)]
CONCRETE = [rgb_of(0.6, 0.6, 0.58), rgb_of(0.5, 0.48, 0.45), rgb_of(0.65, 0.55, 0.45), rgb_of(0.55, 0.3, 0.25),
            rgb_of(0.4, 0.42, 0.45)]


class Canvas:
    """One image being drawn: camera, colour/label/depth buffers and the painting primitives.

    World coordinates in metres: X to the right, Y up from the road, Z forward (depth).
    Pixel (r, c) has its centre at (r + 0.5, c + 0.5); a world point projects to
    ``x = vx + F * X / Z``, ``y = h0 + F * (Hc - Y) / Z``.
    """

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.rng, self.H, self.W = rng, h, w
        self.F = w * rng.uniform(0.8, 1.1)
        self.h0 = h * rng.uniform(0.34, 0.48)
        self.vx = w * rng.uniform(0.4, 0.6)
        self.Hc = rng.uniform(1.3, 1.7)
        self.xc = np.arange(w, dtype=np.float32) + 0.5
        self.yc = np.arange(h, dtype=np.float32) + 0.5
        self.img = np.zeros((h, w, 3), np.float32)
        self.lab = np.full((h, w), SKY, np.uint8)
        self.zb = np.full((h, w), _FAR, np.float32)
        self.fine = _smooth_noise(rng, h, w, max(1.5, w / 64))
        self.coarse = _smooth_noise(rng, h, w, max(4.0, w / 12))
        self.pool: list[float] = []  # uniform numbers for colour jitter

    def px(self, Z: float) -> float:
        """Metres per pixel at depth Z."""
        return Z / self.F

    def region(self, xs, ys):
        c0 = max(0, int(math.floor(min(xs))))
        c1 = min(self.W, int(math.ceil(max(xs))) + 1)
        r0 = max(0, int(math.floor(min(ys))))
        r1 = min(self.H, int(math.ceil(max(ys))) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        return r0, r1, c0, c1

    def col(self, X, Z):
        return self.vx + self.F * X / Z

    def row(self, Y, Z):
        return self.h0 + self.F * (self.Hc - Y) / Z

    def paint(self, reg, mask, rgb, cls: int, depth, alpha=None) -> None:
        """Write ``rgb``/``cls`` where ``mask`` holds and ``depth`` is nearer than what is there.

        ``mask`` and array ``depth``/``rgb``/``alpha`` broadcast to the region's shape.
        """
        r0, r1, c0, c1 = reg
        zs = self.zb[r0:r1, c0:c1]
        vis = (depth < zs) & mask
        if vis.shape != zs.shape:
            vis = np.broadcast_to(vis, zs.shape)
        if not vis.any():
            return
        if np.ndim(depth):
            np.copyto(zs, depth, where=vis)
        else:
            zs[vis] = depth
        self.lab[r0:r1, c0:c1][vis] = cls
        img = self.img[r0:r1, c0:c1]
        if alpha is None:
            np.copyto(img, rgb, where=vis[..., None])
        else:
            a = np.broadcast_to(alpha, zs.shape)[..., None]
            np.copyto(img, a * rgb + (1 - a) * img, where=vis[..., None])

    def tex(self, reg, amp_fine: float, amp_coarse: float = 0.0) -> np.ndarray:
        r0, r1, c0, c1 = reg
        t = amp_fine * self.fine[r0:r1, c0:c1]
        if amp_coarse:
            t = t + amp_coarse * self.coarse[r0:r1, c0:c1]
        return t[..., None]

    def jitter(self, colour, amount: float = 0.12) -> np.ndarray:
        """A colour near ``colour``: overall gain and per-channel shift of about ``amount``."""
        if len(self.pool) < 4:
            self.pool = self.rng.random(256).tolist()
        pool = self.pool
        g, r, gr, b = pool.pop(), pool.pop(), pool.pop(), pool.pop()
        k, s = 1 - amount + 2 * amount * g, 0.6 * amount
        c0, c1, c2 = colour.tolist()
        return np.array([min(max(c0 * k + (r - 0.5) * s, 0.02), 1.0), min(max(c1 * k + (gr - 0.5) * s, 0.02), 1.0),
                         min(max(c2 * k + (b - 0.5) * s, 0.02), 1.0)], np.float32)

    def pick(self, options) -> np.ndarray:
        return self.jitter(options[self.rng.integers(len(options))])

    def box(self, X0, X1, Z0, Z1, Y0, Y1, cls, shader) -> None:
        """An axis-aligned box; ``shader(face, u, v, reg) -> (keep, rgb[, alpha])`` colours each visible face.

        Faces: 0 the face towards the camera (Z = Z0; u = X - X0, v = Y - Y0), 1 the side
        facing the street centre (u = Z - Z0, v = Y - Y0), 2 the top (u = X - X0, v = Z - Z0).
        ``u`` and ``v`` may be (1, w) or (h, 1) arrays; ``keep`` (None: all) cuts out holes.
        """
        Z0 = max(Z0, NEAR_PLANE)
        if Z1 <= Z0:
            return
        F, vx, h0, Hc = self.F, self.vx, self.h0, self.Hc
        xs = (vx + F * X0 / Z0, vx + F * X1 / Z0, vx + F * X0 / Z1, vx + F * X1 / Z1)
        reg = self.region(xs, (h0 + F * (Hc - Y1) / Z0, h0 + F * (Hc - Y0) / Z0,
                               h0 + F * (Hc - Y1) / Z1, h0 + F * (Hc - Y0) / Z1))
        if reg is None:
            return
        r0, r1, c0, c1 = reg
        if not (self.zb[r0:r1, c0:c1] > Z0).any():
            return  # hidden behind nearer things
        xc, yc = self.xc[c0:c1], self.yc[r0:r1]
        # front face: a screen rectangle
        u = ((xc - vx) * (Z0 / F) - X0)[None, :]
        v = (Hc - (yc - h0) * (Z0 / F) - Y0)[:, None]
        ok = (u >= 0) & (u <= X1 - X0) & (v >= 0) & (v <= Y1 - Y0)
        if ok.any():
            self._shade(reg, ok, Z0, cls, shader(0, u, v, reg))
        # side face towards the street centre
        Xs = X1 if X1 < 0 else (X0 if X0 > 0 else None)
        if Xs is not None and F * abs(Xs) * (1 / Z0 - 1 / Z1) > 0.5:  # skip sub-pixel slivers
            Zs = (F * Xs / (xc - vx))[None, :]
            v = Hc - (yc[:, None] - h0) * (Zs / F) - Y0
            ok = (Zs >= Z0) & (Zs <= Z1) & (v >= 0) & (v <= Y1 - Y0)
            if ok.any():
                self._shade(reg, ok, Zs, cls, shader(1, Zs - Z0, v, reg))
        # top, when it is below the camera
        if Y1 < Hc and yc[-1] > h0 and F * (Hc - Y1) * (1 / Z0 - 1 / Z1) > 0.5:
            Zt = (F * (Hc - Y1) / (yc - h0))[:, None]
            Xt = (xc[None, :] - vx) * (Zt / F)
            ok = (Zt >= Z0) & (Zt <= Z1) & (Xt >= X0) & (Xt <= X1)
            if ok.any():
                self._shade(reg, ok, Zt, cls, shader(2, Xt - X0, Zt - Z0, reg))

    def _shade(self, reg, ok, depth, cls, shaded) -> None:
        keep, rgb = shaded[:2]
        alpha = shaded[2] if len(shaded) > 2 else None
        self.paint(reg, ok if keep is None else ok & keep, rgb, cls, depth, alpha)

    def sprite(self, X, Z, half_width, top, bottom=0.0):
        """Region around a camera-facing object at (X, Z) and its metric coordinates.

        Returns ``(reg, a, b, px)``: ``a`` (1, w) metres right of X, ``b`` (h, 1) metres above
        the road, ``px`` metres per pixel; None when off screen or behind the camera.
        """
        if Z < NEAR_PLANE:
            return None
        xp, p = self.col(X, Z), self.px(Z)
        hw = max(half_width, 1.5 * p) / p
        reg = self.region([xp - hw - 1, xp + hw + 1], [self.row(top, Z) - 1, self.row(bottom, Z) + 1])
        if reg is None:
            return None
        r0, r1, c0, c1 = reg
        if not (self.zb[r0:r1, c0:c1] > Z).any():
            return None  # hidden behind nearer things
        a = ((self.xc[c0:c1] - xp) * p)[None, :]
        b = (self.Hc - (self.yc[r0:r1] - self.h0) * p)[:, None]
        return reg, a, b, p

    def later(self, Z: float, draw, *args) -> None:
        """Queue one object, drawn as ``draw(canvas, *args)``; ``Z`` (its nearest depth) orders the drawing."""
        self.todo.append((Z, draw, args))

    def finish(self) -> np.ndarray:
        """Camera response: white balance, saturation, contrast, brightness, vignetting and noise."""
        rng = self.rng
        gains = rng.uniform(0.85, 1.15, 3)
        saturation, contrast, brightness = rng.uniform(0.5, 1.3), rng.uniform(0.7, 1.25), rng.uniform(-0.15, 0.15)
        # one colour matrix: grey + saturation * (gains * rgb - grey), then contrast around 0.5 and brightness
        mix = saturation * np.eye(3) + (1 - saturation) / 3 * np.ones((3, 3))
        matrix = (contrast * mix * gains[None, :]).T.astype(np.float32)
        img = self.img @ matrix
        img += np.float32(0.5 - 0.5 * contrast + brightness)
        if rng.random() < 0.5:
            yy = (self.yc[:, None] / self.H - 0.5) ** 2 + (self.xc[None, :] / self.W - 0.5) ** 2
            img *= (1 - rng.uniform(0.1, 0.4) * yy)[..., None]
        noise = rng.standard_normal(img.shape, dtype=np.float32)
        noise *= np.float32(rng.uniform(0.01, 0.045))
        img += noise
        return np.clip(img, 0, 1, out=img)


def fraction(x: np.ndarray) -> np.ndarray:
    """``x % 1`` (much faster than numpy's float modulo)."""
    return x - np.floor(x)


def segment_mask(a, b, x0, y0, x1, y1, half_width) -> np.ndarray:
    """Pixels within ``half_width`` of the segment (x0, y0)-(x1, y1) in metric sprite coordinates."""
    dx, dy = x1 - x0, y1 - y0
    L2 = dx * dx + dy * dy or 1e-9
    t = np.clip(((a - x0) * dx + (b - y0) * dy) / L2, 0, 1)
    return (a - x0 - t * dx) ** 2 + (b - y0 - t * dy) ** 2 <= half_width * half_width
