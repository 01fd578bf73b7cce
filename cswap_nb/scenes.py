"""Procedural road scenes labelled with the 19 Cityscapes classes, and the Cityscapes conventions.

Segmentation needs a dataset that works offline, so this module draws street scenes from a
seed: a pinhole camera 1.3-1.7 m above a flat road looks down a street towards a vanishing
point; buildings, walls, fences, hedges and trees line the street, poles carry traffic signs
and lights, cars, trucks, buses and trams drive or park, people walk on the sidewalks and
ride bicycles and motorcycles. Everything is placed in metres and projected with
perspective, so objects get smaller and move up towards the horizon with distance, and
occlusion follows depth (a z-buffer: whatever is nearest the camera in a pixel wins).

Labels are Cityscapes **trainIds** (0 road ... 18 bicycle, see :data:`CITYSCAPES_CLASSES`);
255 (:data:`IGNORE_INDEX`) marks pixels that no class describes, as in Cityscapes: the
bonnet of the ego vehicle at the bottom of some images and street clutter (litter bins).
Colour alone does not give the class away: every instance has its own colour, surfaces are
textured, and each image gets its own white balance, saturation, brightness, contrast and
sensor noise (grey cars, grey roads and grey facades are told apart by shape and context).

Image ``i`` of :func:`road_scenes` depends only on ``(seed, start + i)``: it is drawn with
``numpy.random.default_rng([seed, start + i])``, whatever ``n`` is and whatever the global
torch/numpy random state is.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]
"""The 19 Cityscapes evaluation classes, indexed by trainId."""

CITYSCAPES_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]
"""The standard Cityscapes colour (RGB) of each trainId."""

IGNORE_INDEX = 255
"""Label of pixels that belong to no class; metrics and losses skip them."""

SCENE_MEAN = (0.485, 0.456, 0.406)
SCENE_STD = (0.229, 0.224, 0.225)
"""Per-channel (R, G, B) normalisation of road scenes and Cityscapes images (the ImageNet
statistics that DDRNet and most segmentation backbones expect): ``x = (rgb - mean) / std``
with ``rgb`` in [0, 1]."""

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY, PERSON,
 RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)

DEFAULT_SIZE = (64, 128)
_NEAR = 0.5  # near clipping plane (m)
_FAR = 1e9  # depth of the sky


def _check_size(size) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
        ok = (h, w) == tuple(size)
    except (TypeError, ValueError):
        ok = False
    if not ok or h <= 0 or w <= 0 or h % 8 or w % 8:
        raise ValueError(f"size must be (height, width) with both sides positive multiples of 8 (DDRNet "
                         f"downsamples by 8), e.g. (64, 128) or (256, 512); got {size!r}")
    return h, w


def _check_int(value, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------
# Public helpers: generate, colour, display
# ---------------------------------------------------------------------------------------------

def road_scenes(n: int, size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0, start: int = 0) -> tuple[Tensor, Tensor]:
    """Draw ``n`` road scenes: images ``x`` (n, 3, H, W) float32 and labels ``y`` (n, H, W) int64.

    ``x`` is normalised per channel with :data:`SCENE_MEAN` / :data:`SCENE_STD` (undo it with
    :func:`denormalize`); ``y`` holds Cityscapes trainIds 0-18 and 255 (ignored). Image ``i``
    is scene number ``start + i`` of ``seed``, so windows of the same stream agree:
    ``road_scenes(5, start=10)[0][0]`` equals ``road_scenes(20)[0][10]``. Both sides of ``size``
    must be multiples of 8.
    """
    n = _check_int(n, "n")
    seed = _check_int(seed, "seed")
    start = _check_int(start, "start")
    h, w = _check_size(size)
    rgb = np.empty((n, h, w, 3), dtype=np.float32)
    labels = np.empty((n, h, w), dtype=np.uint8)
    for i in range(n):
        rgb[i], labels[i] = road_scene(start + i, (h, w), seed)
    return normalize(torch.from_numpy(rgb).permute(0, 3, 1, 2)), torch.from_numpy(labels).long()


def road_scene(index: int, size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One scene as numpy arrays: RGB (H, W, 3) float32 in [0, 1] and trainIds (H, W) uint8."""
    index = _check_int(index, "index")
    seed = _check_int(seed, "seed")
    h, w = _check_size(size)
    return _Scene(np.random.default_rng([seed, index]), h, w).render()


def normalize(rgb: Tensor) -> Tensor:
    """RGB in [0, 1], (N, 3, H, W) or (3, H, W) -> network input (float32, contiguous)."""
    mean = torch.tensor(SCENE_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(SCENE_STD, dtype=torch.float32).view(3, 1, 1)
    return ((rgb.float() - mean) / std).contiguous()


def denormalize(x: Tensor) -> Tensor:
    """Undo :func:`normalize` for display: (N, 3, H, W) or (3, H, W) -> RGB in [0, 1], same shape.

    For ``matplotlib.imshow`` move the channels last: ``denormalize(x[0]).permute(1, 2, 0)``.
    """
    if not isinstance(x, Tensor) or x.ndim not in (3, 4) or x.shape[-3] != 3:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"denormalize expects a tensor (3, H, W) or (N, 3, H, W), got {got}")
    mean = torch.tensor(SCENE_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(SCENE_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x.detach() * std + mean).clamp(0, 1)


_PALETTE_LUT = np.zeros((256, 3), dtype=np.uint8)
_PALETTE_LUT[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE


def colorize(labels) -> np.ndarray:
    """trainId labels (..., H, W) (tensor or array) -> uint8 RGB (..., H, W, 3) in the Cityscapes palette.

    255 (ignored) and any other value from 19 to 255 are drawn black.
    """
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"colorize expects integer labels (trainIds), got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"labels must lie in [0, 255], got values from {arr.min()} to {arr.max()}")
    return _PALETTE_LUT[arr.astype(np.intp)]


def class_frequencies(labels: Tensor, num_classes: int = 19) -> Tensor:
    """Fraction of all pixels per class (num_classes,) and, last, the ignored fraction: shape (C + 1,)."""
    flat = labels.reshape(-1).long()
    flat = torch.where(flat == IGNORE_INDEX, num_classes, flat)
    return torch.bincount(flat, minlength=num_classes + 1).double() / max(1, flat.numel())


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

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


def _rgb(*c) -> np.ndarray:
    return np.array(c, dtype=np.float32)


SKIN = [_rgb(0.93, 0.75, 0.62), _rgb(0.80, 0.58, 0.44), _rgb(0.55, 0.38, 0.26), _rgb(0.36, 0.24, 0.17)]
CLOTHES = [_rgb(0.1, 0.1, 0.12), _rgb(0.2, 0.25, 0.45), _rgb(0.6, 0.1, 0.1), _rgb(0.85, 0.85, 0.85),
           _rgb(0.4, 0.4, 0.42), _rgb(0.15, 0.35, 0.2), _rgb(0.75, 0.6, 0.35), _rgb(0.9, 0.7, 0.1),
           _rgb(0.45, 0.25, 0.15), _rgb(0.5, 0.55, 0.7)]
VEHICLE = [_rgb(0.85, 0.85, 0.85), _rgb(0.08, 0.08, 0.09), _rgb(0.55, 0.56, 0.58), _rgb(0.35, 0.36, 0.38),
           _rgb(0.6, 0.08, 0.08), _rgb(0.1, 0.2, 0.5), _rgb(0.15, 0.3, 0.2), _rgb(0.8, 0.7, 0.2),
           _rgb(0.3, 0.45, 0.65), _rgb(0.5, 0.4, 0.3), _rgb(0.7, 0.3, 0.1), _rgb(0.42, 0.42, 0.4)]
FACADE = [_rgb(0.75, 0.7, 0.6), _rgb(0.55, 0.55, 0.55), _rgb(0.85, 0.83, 0.78), _rgb(0.6, 0.32, 0.25),
          _rgb(0.45, 0.35, 0.3), _rgb(0.85, 0.75, 0.5), _rgb(0.5, 0.55, 0.6), _rgb(0.38, 0.38, 0.4),
          _rgb(0.7, 0.6, 0.55), _rgb(0.3, 0.3, 0.32)]
GREENS = [_rgb(0.22, 0.35, 0.12), _rgb(0.3, 0.42, 0.15), _rgb(0.15, 0.25, 0.12), _rgb(0.4, 0.45, 0.2),
          _rgb(0.45, 0.38, 0.15), _rgb(0.2, 0.3, 0.2)]
TERRAINS = [_rgb(0.35, 0.45, 0.2), _rgb(0.5, 0.48, 0.3), _rgb(0.45, 0.37, 0.27), _rgb(0.42, 0.5, 0.28)]
PAVEMENTS = [_rgb(0.6, 0.6, 0.6), _rgb(0.55, 0.45, 0.42), _rgb(0.7, 0.66, 0.58), _rgb(0.5, 0.5, 0.52),
             _rgb(0.62, 0.55, 0.5)]
CONCRETE = [_rgb(0.6, 0.6, 0.58), _rgb(0.5, 0.48, 0.45), _rgb(0.65, 0.55, 0.45), _rgb(0.55, 0.3, 0.25),
            _rgb(0.4, 0.42, 0.45)]


class _Scene:
    """One image: camera, z-buffer canvas and the drawing of every kind of object.

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

    # --- geometry ---------------------------------------------------------------------------
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

    # --- painting ---------------------------------------------------------------------------
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

    # --- boxes: buildings, walls, fences, hedges, vehicles --------------------------------
    def box(self, X0, X1, Z0, Z1, Y0, Y1, cls, shader) -> None:
        """An axis-aligned box; ``shader(face, u, v, reg) -> (keep, rgb[, alpha])`` colours each visible face.

        Faces: 0 the face towards the camera (Z = Z0; u = X - X0, v = Y - Y0), 1 the side
        facing the street centre (u = Z - Z0, v = Y - Y0), 2 the top (u = X - X0, v = Z - Z0).
        ``u`` and ``v`` may be (1, w) or (h, 1) arrays; ``keep`` (None: all) cuts out holes.
        """
        Z0 = max(Z0, _NEAR)
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

    # --- sprites: flat objects facing the camera ---------------------------------------
    def sprite(self, X, Z, half_width, top, bottom=0.0):
        """Region around a camera-facing object at (X, Z) and its metric coordinates.

        Returns ``(reg, a, b, px)``: ``a`` (1, w) metres right of X, ``b`` (h, 1) metres above
        the road, ``px`` metres per pixel; None when off screen or behind the camera.
        """
        if Z < _NEAR:
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

    # =======================================================================================
    def render(self) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self._render()

    def _render(self) -> tuple[np.ndarray, np.ndarray]:
        self.todo = []
        self.layout()
        self.sky()
        self.ground()
        for side in (-1, 1):
            self.street_side(side)
        self.street_end()
        self.furniture()
        self.traffic()
        self.people()
        # near to far: the z-buffer resolves occlusion, and objects hidden behind nearer ones
        # are skipped cheaply; see-through fences come last so that they blend with what is behind
        self.todo.sort(key=lambda item: item[0])
        for _, draw, args in self.todo:
            draw(*args)
        if self.rng.random() < 0.4:
            self.ego_vehicle()
        return self.finish(), self.lab

    def later(self, Z: float, draw, *args) -> None:
        """Queue one object; ``Z`` (its nearest depth) orders the drawing."""
        self.todo.append((Z, draw, args))

    def layout(self) -> None:
        """The street cross-section (metres, X) and the distance of the street's end."""
        rng = self.rng
        self.lane_w = rng.uniform(2.9, 3.6)
        self.lanes = int(rng.choice([2, 2, 3, 4]))
        road_w = self.lanes * self.lane_w
        self.XL = -road_w * rng.uniform(0.2, 0.65)
        self.XR = self.XL + road_w
        self.cam_lane = int((0 - self.XL) // self.lane_w)
        sides = {}
        for side in (-1, 1):
            edge = self.XL if side < 0 else self.XR
            verge = rng.uniform(0.8, 2.5) if rng.random() < 0.25 else 0.0
            walk = rng.uniform(1.8, 5.0)
            strip = rng.uniform(1.0, 4.0) if rng.random() < 0.35 else 0.0
            park = rng.random() < 0.15
            curb = edge + side * verge
            sides[side] = dict(edge=edge, curb=curb, walk_out=curb + side * walk,
                               line=curb + side * (walk + strip), park=park, verge=verge)
        self.sides = sides
        self.Zend = rng.uniform(50, 180)
        self.cross = None
        if rng.random() < 0.35:
            z = rng.uniform(12, 45)
            self.cross = (z, z + rng.uniform(8, 14))

    def in_cross(self, Z0, Z1) -> bool:
        return self.cross is not None and Z1 > self.cross[0] - 0.5 and Z0 < self.cross[1] + 0.5

    # --- background -------------------------------------------------------------------------
    def sky(self) -> None:
        """A vertical gradient (clear, overcast or dusk) with soft clouds, above the horizon."""
        rng = self.rng
        kind = rng.choice(3, p=[0.5, 0.35, 0.15])
        if kind == 0:
            top, hor = _rgb(0.25, 0.45, 0.8), _rgb(0.68, 0.8, 0.92)
        elif kind == 1:
            g = rng.uniform(0.6, 0.9)
            top, hor = _rgb(g, g, g + 0.03), _rgb(g + 0.05, g + 0.05, g + 0.05)
        else:
            top, hor = _rgb(0.3, 0.35, 0.6), _rgb(0.95, 0.65, 0.4)
        top, hor = self.jitter(top, 0.1), self.jitter(hor, 0.1)
        r1 = min(self.H, int(math.ceil(self.h0)) + 1)  # the ground covers the rest
        t = np.minimum(self.yc[:r1] / max(self.h0, 1.0), 1)[:, None, None]
        cloud = np.clip(self.coarse[:r1] * rng.uniform(0.3, 0.8) - rng.uniform(0.0, 0.6), 0, 1)[..., None]
        shade = rng.uniform(0.75, 1.0)
        self.img[:r1] = (top + (hor - top) * t) * (1 - cloud) + cloud * shade + self.tex((0, r1, 0, self.W), 0.01)

    def ground(self) -> None:
        """Road, lane markings, sidewalks and terrain on the ground plane below the horizon."""
        rng = self.rng
        below = self.yc > self.h0 + 0.05
        if not below.any():
            return
        r0 = self.ground_r0 = int(np.argmax(below))
        Z = (self.F * self.Hc / (self.yc[r0:] - self.h0))[:, None]  # (h, 1)
        X = (self.xc[None, :] - self.vx) * (Z / self.F)  # (h, w)
        p = Z / self.F
        shape = X.shape
        self.GZ = np.broadcast_to(Z, shape)
        left, right = self.sides[-1], self.sides[1]
        lab = np.full(shape, TERRAIN, np.uint8)
        walk = ((X >= left["walk_out"]) & (X <= left["curb"])) | ((X >= right["curb"]) & (X <= right["walk_out"]))
        lab[walk] = SIDEWALK
        road = (X >= self.XL) & (X <= self.XR)
        if self.cross is not None:
            road |= (Z >= self.cross[0]) & (Z <= self.cross[1])
        lab[road] = ROAD

        # colours: asphalt, paving stones (one colour per side), grass/earth
        walk &= ~road
        stone_l, stone_r = self.pick(PAVEMENTS), self.pick(PAVEMENTS)
        grass, dirt = self.pick(TERRAINS), self.pick(TERRAINS)
        asphalt = self.jitter(_rgb(*([rng.uniform(0.28, 0.55)] * 3)), 0.08)
        mix = np.clip(0.5 + 0.6 * self.coarse[r0:], 0, 1)[..., None]
        col = grass * mix + dirt * (1 - mix)
        col[walk] = np.where((X < 0)[walk][:, None], stone_l, stone_r)
        col[road] = asphalt
        fine, coarse = self.fine[r0:], self.coarse[r0:]
        gain = 1 + np.where(road, 0.05 * fine + 0.06 * coarse, np.where(walk, 0.05 * fine + 0.04 * coarse, 0.15 * fine))
        grid = (_frac(X * (1 / 0.6)) < 0.12) | (_frac(Z * (1 / 0.6)) < 0.12)
        gain[walk & grid] *= 0.9
        half = np.maximum(0.15, 0.5 * p)
        gain[walk & ((np.abs(X - left["curb"]) < half) | (np.abs(X - right["curb"]) < half))] *= 1.15
        col *= gain[..., None]

        # lane markings, painted with their pixel coverage so that far lines fade out
        paint = _rgb(0.9, 0.9, 0.88) if rng.random() < 0.8 else _rgb(0.9, 0.75, 0.2)
        period, duty, phase = rng.uniform(6, 12), rng.uniform(0.3, 0.6), rng.uniform(0, 12)
        dashed = _frac((Z + phase) / period) < duty
        half = np.maximum(0.07, 0.5 * p)
        cover = np.minimum(1.0, 0.07 / half)  # (h, 1)
        lines = [self.XL + k * self.lane_w for k in range(1, self.lanes)]
        solid = [self.XL + 0.3, self.XR - 0.3] if rng.random() < 0.6 else []
        on = np.zeros(shape, bool)
        for b in lines + solid:
            m = np.abs(X - b) < half
            on |= (m & dashed) if b in lines else m
        marks = np.where(on & road, cover, 0.0)
        if self.cross is not None and rng.random() < 0.8:
            z0 = self.cross[0]
            zebra = (Z > z0 - 4.0) & (Z < z0 - 1.0) & (_frac((X - self.XL) / 1.1) < 0.5) & road
            marks[zebra] = 0.9
        m = marks > 0
        col[m] = col[m] * (1 - marks[m][:, None]) + paint * marks[m][:, None]
        if rng.random() < 0.4:  # a building's shadow over part of the street
            edge = rng.uniform(self.XL - 3, self.XL + 0.6 * (self.XR - self.XL))
            shadow = (X - edge) * rng.choice([-1, 1]) > 0
            col[shadow] *= _rgb(0.55, 0.58, 0.68) * rng.uniform(0.8, 1.1)
        self.img[r0:] = col
        self.lab[r0:] = lab
        self.zb[r0:] = self.GZ

    # --- street sides: buildings with gaps (vegetation, walls, fences, side streets) -----
    def building_shader(self, base):
        rng = self.rng
        floor_h, col_w = rng.uniform(2.8, 3.8), rng.uniform(2.0, 4.0)
        win_w, win_h = rng.uniform(0.3, 0.65) / 2, rng.uniform(0.35, 0.6) / 2
        glass = self.jitter(_rgb(0.18, 0.22, 0.28) if rng.random() < 0.7 else _rgb(0.55, 0.62, 0.7), 0.3)
        trim = self.jitter(base * rng.uniform(0.6, 1.3), 0.1)
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
            gain = np.where(win, 1 + 0.35 * sparkle, 1 + 0.08 * self.coarse[reg[0]:reg[1], reg[2]:reg[3]])
            return None, pal[part] * (gain + 0.06 * self.fine[reg[0]:reg[1], reg[2]:reg[3]])[..., None]

        return shader

    def plain_shader(self, base, amp=0.08, bricks=False):
        def shader(face, u, v, reg):
            c = base * (1 + self.tex(reg, amp, amp))
            if bricks and face != 2:
                line = _frac((v + 0 * u) / 0.3) < 0.15
                c = c * np.where(line, 0.85, 1.0)[..., None]
            return None, c if face != 2 else c * 1.1

        return shader

    def foliage_shader(self, base, height, ragged=0.25):
        def shader(face, u, v, reg):
            r0, r1, c0, c1 = reg
            t = self.fine[r0:r1, c0:c1]
            keep = None if face == 2 else v < height * (1 - ragged * np.clip(0.5 + 0.5 * t, 0, 1.5))
            c = base * (1 + 0.35 * t[..., None] + self.tex(reg, 0.0, 0.15))
            return keep, c

        return shader

    def fence_shader(self, base, height):
        post = self.rng.uniform(1.5, 3.0)

        def shader(face, u, v, reg):
            bar = (_frac(u / post) < 0.08) | (np.abs(v - 0.9 * height) < 0.06) | (np.abs(v - 0.15 * height) < 0.06)
            mesh = (_frac((u + v) / 0.25) < 0.3) | (_frac((u - v) / 0.25) < 0.3)
            alpha = np.where(bar, 1.0, np.where(mesh, 0.75, 0.45)).astype(np.float32)
            return None, base * (1 + self.tex(reg, 0.05)), alpha

        return shader

    def fence(self, X, Z0, Z1, side) -> None:
        h = self.rng.uniform(1.0, 2.2)
        base = self.pick([_rgb(0.45, 0.45, 0.45), _rgb(0.3, 0.35, 0.3), _rgb(0.55, 0.45, 0.35), _rgb(0.7, 0.7, 0.7)])
        X0, X1 = (X - 0.05, X) if side < 0 else (X, X + 0.05)
        self.box(X0, X1, Z0, Z1, 0.0, h, FENCE, self.fence_shader(base, h))

    def street_side(self, side: int) -> None:
        """Buildings along the street, with gaps (trees, hedges, walls, fences, set-back houses) or a park."""
        rng = self.rng
        s = self.sides[side]
        line = s["line"]
        z = _NEAR
        while z < self.Zend:
            if self.cross is not None and self.cross[0] - 0.5 <= z < self.cross[1]:
                z = self.cross[1]  # the far corner: its facade runs along the cross street
                length = rng.uniform(10, 30)
                self.later(z, self.building, line, z, z + length, side, 90.0)
                z += length
                continue
            length = rng.uniform(8, 30) * (1 + z / 40)
            z1 = z + length
            if self.cross is not None and z < self.cross[0] < z1:
                z1 = self.cross[0]
            if s["park"] or rng.random() < 0.28:  # a gap between buildings, or a park
                kind = 0 if s["park"] else rng.choice(4, p=[0.35, 0.25, 0.2, 0.2])
                if kind == 0:
                    for zt in np.arange(z + rng.uniform(0.5, 3), min(z1, 70), rng.uniform(4, 9)):
                        self.later(zt, self.tree, line + side * rng.uniform(0.5, 5), zt, True)
                    if rng.random() < 0.5:
                        self.later(z, self.hedge, line, z, z1, side)
                elif kind == 1:
                    self.later(z, self.wall, line, z, z1, side)
                elif kind == 2:
                    self.later(np.inf, self.fence, line, z, z1, side)
                if not s["park"] or rng.random() < 0.3:
                    back = line + side * rng.uniform(8, 20)
                    self.later(z, self.building, back, max(_NEAR, z - 5), z1 + 5, side)
            else:
                setback = rng.uniform(0, 1.5) if rng.random() < 0.3 else 0.0
                self.later(z, self.building, line + side * setback, z, z1, side)
            z = z1

    def building(self, line, Z0, Z1, side, depth=None) -> None:
        rng = self.rng
        h = rng.uniform(5, 26) if rng.random() < 0.85 else rng.uniform(26, 45)
        depth = depth or rng.uniform(8, 20)
        base = self.pick(FACADE)
        X0, X1 = (line - depth, line) if side < 0 else (line, line + depth)
        self.box(X0, X1, Z0, Z1, 0.0, h, BUILDING, self.building_shader(base))

    def wall(self, line, Z0, Z1, side, h=None) -> None:
        h = h or self.rng.uniform(0.8, 3.0)
        t = self.rng.uniform(0.2, 0.5)
        X0, X1 = (line - t, line) if side < 0 else (line, line + t)
        self.box(X0, X1, Z0, Z1, 0.0, h, WALL, self.plain_shader(self.pick(CONCRETE), bricks=self.rng.random() < 0.4))

    def hedge(self, line, Z0, Z1, side) -> None:
        h = self.rng.uniform(0.8, 2.2)
        t = self.rng.uniform(0.6, 1.5)
        X0, X1 = (line - t, line) if side < 0 else (line, line + t)
        self.box(X0, X1, Z0, Z1, 0.0, h, VEGETATION, self.foliage_shader(self.pick(GREENS), h))

    def street_end(self) -> None:
        """What closes the street far away: a row of buildings, trees, or open sky."""
        rng = self.rng
        kind = rng.choice(3, p=[0.55, 0.3, 0.15])
        if kind == 2:
            return
        Z = self.Zend
        X, X_end = self.sides[-1]["line"] - 20, self.sides[1]["line"] + 20
        while X < X_end:
            w = rng.uniform(8, 25)
            if kind == 0:
                shader = self.building_shader(self.pick(FACADE))
                self.later(Z, self.box, X, X + w, Z, Z + 15, 0.0, rng.uniform(6, 30), BUILDING, shader)
            else:
                h = rng.uniform(5, 15)
                shader = self.foliage_shader(self.pick(GREENS), h, 0.4)
                self.later(Z, self.box, X, X + w, Z, Z + 10, 0.0, h, VEGETATION, shader)
            X += w

    # --- street furniture ---------------------------------------------------------------------
    def furniture(self) -> None:
        rng = self.rng
        for side, s in self.sides.items():
            curb, out = s["curb"], s["walk_out"]
            # poles near the kerb, each with a lamp, signs or a traffic light
            z = rng.uniform(3, 14)
            while z < 60:
                if not self.in_cross(z, z):
                    self.later(z, self.pole_with_stuff, curb + side * rng.uniform(0.3, 0.8), z, side)
                z += rng.uniform(9, 24)
            if rng.random() < 0.5:  # a row of trees
                X = curb + side * 0.6 if s["verge"] else out - side * rng.uniform(0.6, 1.2)
                z = rng.uniform(2, 10)
                step = rng.uniform(8, 16)
                while z < 50:
                    if not self.in_cross(z - 2, z + 2):
                        self.later(z, self.tree, X, z)
                    z += step
            if rng.random() < 0.3:  # fence or low wall along the sidewalk
                z0 = rng.uniform(2, 30)
                z1 = z0 + rng.uniform(6, 25)
                if not self.in_cross(z0, z1):
                    if rng.random() < 0.6:
                        self.later(np.inf, self.fence, out, z0, z1, side)
                    else:
                        self.later(z0, self.wall, out, z0, z1, side)
            for _ in range(rng.poisson(0.5)):  # litter bins: clutter without a class
                X = rng.uniform(min(curb, out), max(curb, out))
                Z = rng.uniform(4, 40)
                w = rng.uniform(0.25, 0.4)
                shader = self.plain_shader(self.pick(CONCRETE + CLOTHES[:3]))
                self.later(Z, self.box, X - w, X + w, Z, Z + 2 * w, 0.0, rng.uniform(0.8, 1.2), IGNORE_INDEX, shader)
            if rng.random() < 0.6:  # parked bicycles
                X = rng.uniform(min(curb, out), max(curb, out))
                z = rng.uniform(4, 25)
                for k in range(int(rng.integers(1, 5))):
                    self.later(z + 0.8 * k, self.bicycle, X, z + 0.8 * k, False, rng.random() < 0.35)
        if self.cross is not None and rng.random() < 0.7:  # overhead traffic lights at the junction
            z = self.cross[0] - 0.5
            for X in rng.uniform(self.XL + 1, self.XR - 1, int(rng.integers(1, 3))):
                self.later(z - 0.05, self.traffic_light, X, z - 0.05, rng.uniform(4.5, 6.0))
            self.later(z, self.pole_sprite, self.XR + 0.5, z, 6.5, self.XL + 1.0)

    def pole_sprite(self, X, Z, height, arm_to=None, width=None) -> None:
        rng = self.rng
        width = width or rng.uniform(0.12, 0.3)
        grey = self.pick([_rgb(0.45, 0.45, 0.47), _rgb(0.3, 0.32, 0.3), _rgb(0.6, 0.6, 0.6), _rgb(0.2, 0.25, 0.22)])
        sp = self.sprite(X, Z, width / 2, height)
        if sp is not None:
            reg, a, b, p = sp
            hw = max(width / 2, p)  # at least 2 pixels wide
            m = (np.abs(a) <= hw) & (b >= 0) & (b <= height)
            shade = (1 + 0.25 * a / hw)[..., None]
            self.paint(reg, m, grey * shade + self.tex(reg, 0.02), POLE, Z)
        if arm_to is not None:  # horizontal arm over the road
            lo, hi = sorted((X, arm_to))
            sp = self.sprite((lo + hi) / 2, Z, (hi - lo) / 2, height + 0.3, height - 0.3)
            if sp is not None:
                reg, a, b, p = sp
                m = (np.abs(a) <= (hi - lo) / 2) & (np.abs(b - height + 0.1) <= max(0.08, 0.5 * p))
                self.paint(reg, m, grey, POLE, Z)

    def pole_with_stuff(self, X, Z, side) -> None:
        rng = self.rng
        kind = rng.choice(4, p=[0.25, 0.35, 0.3, 0.1])
        if kind == 0:  # street lamp reaching over the road
            h = rng.uniform(6, 9)
            reach = rng.uniform(1.0, 2.5)
            self.pole_sprite(X, Z, h, arm_to=X - side * reach)
            sp = self.sprite(X - side * reach, Z, 0.35, h, h - 0.35)
            if sp is not None:
                reg, a, b, p = sp
                m = (np.abs(a) <= max(0.35, p)) & (b <= h) & (b >= h - max(0.3, p))
                self.paint(reg, m, self.pick([_rgb(0.3, 0.3, 0.3), _rgb(0.8, 0.8, 0.75)]), POLE, Z - 0.05)
            if rng.random() < 0.3:
                self.sign(X, Z - 0.05, rng.uniform(2.2, 3.0))
        elif kind == 1:  # sign post
            h = rng.uniform(2.6, 3.6)
            self.pole_sprite(X, Z, h, width=rng.uniform(0.08, 0.15))
            self.sign(X, Z - 0.05, h - 0.45)
            if rng.random() < 0.4:
                self.sign(X, Z - 0.05, h - 1.15)
        elif kind == 2:  # traffic light post
            h = rng.uniform(2.8, 4.2)
            self.pole_sprite(X, Z, h, width=rng.uniform(0.1, 0.2))
            self.traffic_light(X, Z - 0.05, h - 0.5)
            if rng.random() < 0.4:
                self.traffic_light(X - side * 3.5, Z - 0.05, h + 1.5)
                self.pole_sprite(X, Z, h + 2.0, arm_to=X - side * 3.7)
        else:  # big direction sign on a pole
            h = rng.uniform(3.5, 5.0)
            self.pole_sprite(X, Z, h)
            self.sign(X - side * 0.8, Z - 0.05, h - 0.6, big=True)

    def sign(self, X, Z, centre, big=False) -> None:
        rng = self.rng
        size = rng.uniform(0.3, 0.45) if not big else rng.uniform(0.6, 1.0)
        sp = self.sprite(X, Z, size * (2.0 if big else 1.0), centre + size + 0.05, centre - size - 0.05)
        if sp is None:
            return
        reg, a, b, p = sp
        s = max(size, 1.5 * p)
        d = b - centre
        red, white, blue = _rgb(0.8, 0.1, 0.1), _rgb(0.92, 0.92, 0.9), _rgb(0.1, 0.25, 0.65)
        if big:
            m = (np.abs(a) <= 2 * s) & (np.abs(d) <= s)
            inner = (np.abs(a) <= 2 * s - 0.08) & (np.abs(d) <= s - 0.08)
            face = self.pick([_rgb(0.1, 0.4, 0.2), blue, _rgb(0.9, 0.75, 0.1)])
            lettering = self.fine[reg[0]:reg[1], reg[2]:reg[3], None] > 1.0
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
                rgb = np.where((np.abs(a) + np.abs(d) <= 0.65 * s)[..., None], _rgb(0.95, 0.8, 0.1), white)
            else:  # information rectangle, or the grey back of a sign
                m = (np.abs(a) <= 0.8 * s) & (np.abs(d) <= s)
                rgb = self.pick([blue, white, _rgb(0.55, 0.55, 0.55)])
        rgb = np.broadcast_to(rgb, m.shape + (3,)) * (1 + self.tex(reg, 0.04))
        self.paint(reg, m, rgb, TRAFFIC_SIGN, Z)

    def traffic_light(self, X, Z, centre) -> None:
        rng = self.rng
        sp = self.sprite(X, Z, 0.25, centre + 0.6, centre - 0.6)
        if sp is None:
            return
        reg, a, b, p = sp
        hw, hh = max(0.22, p), max(0.55, 2.0 * p)
        d = b - centre
        m = (np.abs(a) <= hw) & (np.abs(d) <= hh)
        housing = self.pick([_rgb(0.12, 0.12, 0.12), _rgb(0.2, 0.25, 0.2), _rgb(0.75, 0.65, 0.15)])
        lamps = [_rgb(1.0, 0.15, 0.1), _rgb(1.0, 0.7, 0.1), _rgb(0.2, 1.0, 0.5)]
        on = rng.integers(3)
        rgb = np.broadcast_to(housing, m.shape + (3,)).copy()
        for k, off in enumerate((0.3, 0.0, -0.3)):
            lamp = (a * a + (d - off * hh / 0.55) ** 2) <= max(0.1, 0.5 * p) ** 2
            rgb[lamp] = lamps[k] if k == on else lamps[k] * 0.25
        self.paint(reg, m, rgb, TRAFFIC_LIGHT, Z)

    def tree(self, X, Z, big=False) -> None:
        rng = self.rng
        rx = rng.uniform(1.2, 2.8) * (1.5 if big else 1.0)
        ry = rx * rng.uniform(0.9, 1.4)
        base = rng.uniform(1.8, 3.5)
        cy = base + ry
        sp = self.sprite(X, Z, rx * 1.3, cy + ry * 1.3)
        if sp is None:
            return
        reg, a, b, p = sp
        r0, r1, c0, c1 = reg
        t = self.fine[r0:r1, c0:c1]
        crown = (a / rx) ** 2 + ((b - cy) / ry) ** 2 < 1 + 0.35 * t
        trunk = (np.abs(a) <= max(0.15, p)) & (b >= 0) & (b <= cy)
        green = self.pick(GREENS)
        bark = self.jitter(_rgb(0.3, 0.22, 0.15))
        light = np.clip((b - cy) / ry, -1, 1)[..., None] * 0.2
        rgb = np.where(crown[..., None], green * (1 + 0.4 * t[..., None] + light), bark)
        self.paint(reg, crown | trunk, rgb, VEGETATION, Z)

    # --- vehicles ---------------------------------------------------------------------------
    def vehicle_shader(self, body, facing_front: bool, kind: str, dims, cabin=None):
        """Shades a vehicle box: wheels, windows, lights, the gap under the body and, for cars, the cabin.

        ``dims`` = (width, length, height); ``cabin`` = (body height, start, end) for a car: above
        the body only the cabin (between fractions start-end of the length, narrowing upwards) is solid.
        """
        w, length, h = dims
        glass = self.jitter(_rgb(0.15, 0.18, 0.22), 0.3)
        light = _rgb(1.0, 0.95, 0.8) if facing_front else _rgb(0.85, 0.1, 0.1)
        pal = np.stack([body, _rgb(0.06, 0.06, 0.06), glass, light, _rgb(0.9, 0.9, 0.85)])
        TYRE, GLASS, LAMP, PLATE = range(1, 5)  # 0 is the body
        clearance = 0.18 if kind not in ("truck", "truck_cab") else 0.45
        wheels_at = (0.18, 0.82) if kind == "car" else (0.12, 0.3, 0.85)
        wheel_r = 0.33 if kind == "car" else 0.5
        lower, f0, f1 = cabin if cabin is not None else (h, 0.0, 1.0)
        top = h - lower

        def shader(face, u, v, reg):
            r0, r1, c0, c1 = reg
            fine = self.fine[r0:r1, c0:c1]
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
                         & (np.abs(_frac((u - a0) / (a1 - a0 + 1e-6) * 2) - 0.5) < 0.44)] = GLASS
                elif kind in ("bus", "train"):
                    part[(v > 0.42 * h) & (v < 0.85 * h) & (_frac(u / 1.6) < 0.85)] = GLASS
                elif kind == "truck_cab":
                    part[(v > 0.55 * h) & (v < 0.85 * h) & (u < 0.6 * length)] = GLASS
                part[wheel] = TYRE
            shade = 0.8 + 0.2 * np.minimum(np.maximum(v / lower, 0), 1) + 0.04 * fine
            return keep, pal[part] * shade[..., None]

        return shader

    def car(self, X, Z, facing_front) -> None:
        rng = self.rng
        w, length = rng.uniform(1.7, 1.95), rng.uniform(3.8, 4.9)
        h = rng.uniform(1.35, 1.75)
        cabin = (h * rng.uniform(0.5, 0.6), rng.uniform(0.2, 0.32), rng.uniform(0.7, 0.85))
        X0 = X - w / 2
        self.shadow(X0, X0 + w, Z, Z + length)
        shader = self.vehicle_shader(self.pick(VEHICLE), facing_front, "car", (w, length, h), cabin)
        self.box(X0, X0 + w, Z, Z + length, 0.0, h, CAR, shader)

    def big_vehicle(self, X, Z, cls, facing_front) -> None:
        rng = self.rng
        if cls == TRUCK:
            w, h = rng.uniform(2.3, 2.55), rng.uniform(3.0, 3.9)
            cargo_len, cab_len = rng.uniform(5, 9), 2.2
            body = self.pick(VEHICLE + [_rgb(0.9, 0.9, 0.9)] * 3)
            cab = self.pick(VEHICLE)
            self.shadow(X - w / 2, X + w / 2, Z, Z + cargo_len + cab_len)
            if facing_front:  # the cab is nearest
                self.box(X - w / 2, X + w / 2, Z, Z + cab_len, 0.0, h * 0.8, TRUCK,
                         self.vehicle_shader(cab, True, "truck_cab", (w, cab_len, h * 0.8)))
                self.box(X - w / 2, X + w / 2, Z + cab_len + 0.2, Z + cab_len + cargo_len, 0.0, h, TRUCK,
                         self.vehicle_shader(body, True, "truck", (w, cargo_len, h)))
            else:
                self.box(X - w / 2, X + w / 2, Z, Z + cargo_len, 0.0, h, TRUCK,
                         self.vehicle_shader(body, False, "truck", (w, cargo_len, h)))
                self.box(X - w / 2, X + w / 2, Z + cargo_len + 0.2, Z + cargo_len + cab_len, 0.0, h * 0.8, TRUCK,
                         self.vehicle_shader(cab, False, "truck_cab", (w, cab_len, h * 0.8)))
            return
        if cls == BUS:
            w, h, length = 2.55, rng.uniform(3.0, 3.4), rng.uniform(10, 14)
            body = self.pick([_rgb(0.9, 0.85, 0.2), _rgb(0.85, 0.85, 0.85), _rgb(0.7, 0.1, 0.1), _rgb(0.15, 0.3, 0.6),
                              _rgb(0.3, 0.55, 0.3)])
            kind = "bus"
        else:
            w, h, length = 2.4, rng.uniform(3.3, 3.7), rng.uniform(20, 32)
            body = self.pick([_rgb(0.95, 0.85, 0.2), _rgb(0.9, 0.9, 0.92), _rgb(0.75, 0.15, 0.15),
                              _rgb(0.2, 0.45, 0.7)])
            kind = "train"
        self.shadow(X - w / 2, X + w / 2, Z, Z + length)
        shader = self.vehicle_shader(body, facing_front, kind, (w, length, h))
        self.box(X - w / 2, X + w / 2, Z, Z + length, 0.0, h, cls, shader)

    def shadow(self, X0, X1, Z0, Z1) -> None:
        """Darken the road under a vehicle (labels unchanged)."""
        if not hasattr(self, "GZ") or Z0 > 40:
            return
        Z0 = max(Z0, _NEAR)
        reg = self.region([self.col(X0 - 0.2, Z0), self.col(X1 + 0.2, Z0), self.col(X0, Z1), self.col(X1, Z1)],
                          [self.row(0, Z0 - 0.3), self.row(0, Z1)])
        if reg is None:
            return
        r0, r1, c0, c1 = reg
        r0 = max(r0, self.ground_r0)
        if r0 >= r1:
            return
        Z = self.GZ[r0 - self.ground_r0: r1 - self.ground_r0, c0:c1]
        X = (self.xc[None, c0:c1] - self.vx) * Z / self.F
        m = (Z > Z0 - 0.3) & (Z < Z1) & (X > X0 - 0.2) & (X < X1 + 0.2) & (self.zb[r0:r1, c0:c1] >= Z)
        self.img[r0:r1, c0:c1][m] *= 0.45

    def bicycle(self, X, Z, rider: bool, motor: bool = False) -> None:
        rng = self.rng
        side_view = rng.random() < 0.5
        sp = self.sprite(X, Z, 1.1 if side_view else 0.45, 1.9 if rider else 1.2)
        if sp is None:
            return
        reg, a, b, p = sp
        flip = rng.choice([-1.0, 1.0])
        a = a * flip
        t = max(0.035, 0.5 * p)  # half-thickness of tubes: at least one pixel wide
        frame_c = self.pick(VEHICLE)
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
                    veh |= _segment(a, b, x0, y0, x1, y1, t)
            hip, knee, foot = (-0.12, 0.95), (0.18, 0.62), (0.0, 0.3)
            shoulder, hand = (0.2, 1.45), (0.45, 1.0)
        else:
            wheel = (np.abs(a) <= max(0.04 if not motor else 0.08, p)) & (b >= 0) & (b <= 0.7)
            veh |= wheel
            dark |= wheel
            veh |= _segment(a, b, -0.3, 1.0, 0.3, 1.0, t)
            if motor:
                veh |= (np.abs(a) <= 0.32) & (b >= 0.35) & (b <= 0.95)
            hip, knee, foot = (0.12, 0.95), (0.16, 0.6), (0.15, 0.3)
            shoulder, hand = (0.2, 1.45), (0.3, 1.0)
        cls = MOTORCYCLE if motor else BICYCLE
        rgb = np.where(dark[..., None], _rgb(0.08, 0.08, 0.08), frame_c)
        if motor:
            rgb = rgb * (1 + self.tex(reg, 0.05))
        self.paint(reg, veh, rgb, cls, Z)
        if rider:
            self.person_shape(reg, a, b, p, Z, RIDER, riding=(hip, knee, foot, shoulder, hand), side_view=side_view)

    def traffic(self) -> None:
        rng = self.rng
        lanes = [self.XL + (k + 0.5) * self.lane_w for k in range(self.lanes)]
        two_way = rng.random() < 0.6
        for k, X in enumerate(lanes):
            oncoming = two_way and X < -self.lane_w * 0.6
            z = rng.uniform(5, 14) if k != self.cam_lane else rng.uniform(7, 20)
            while z < 70:
                if rng.random() < 0.6:
                    x = X + rng.uniform(-0.3, 0.3)
                    r = rng.random()
                    if r < 0.06:
                        self.later(z, self.big_vehicle, x, z, TRUCK, oncoming)
                        z += 9
                    elif r < 0.16:
                        self.later(z, self.bicycle, x, z, True, rng.random() < 0.55)
                    else:
                        self.later(z, self.car, x, z, oncoming)
                        z += 4
                z += rng.uniform(8, 30)
        for cls, p in ((TRUCK, 0.3), (BUS, 0.4), (TRAIN, 0.2)):
            if rng.random() < p:
                X = lanes[int(rng.integers(len(lanes)))] if cls != TRAIN else (self.XL + self.XR) / 2
                z = rng.uniform(7, 40)
                self.later(z, self.big_vehicle, X + rng.uniform(-0.2, 0.2), z, cls, rng.random() < 0.5)
        for side, s in self.sides.items():  # a row of cars parked along the kerb
            if rng.random() < 0.45:
                X = s["edge"] - side * rng.uniform(1.0, 1.3)
                z = rng.uniform(3, 12)
                end = z + rng.uniform(10, 50)
                while z < end:
                    if rng.random() < 0.75 and not self.in_cross(z, z + 5):
                        self.later(z, self.car, X, z, rng.random() < 0.5)
                    z += rng.uniform(5.2, 7)
        for _ in range(rng.poisson(1.3)):  # cyclists and motorcyclists near the road edge
            side = rng.choice([-1, 1])
            X = self.sides[side]["edge"] - side * rng.uniform(0.6, 1.5)
            z = rng.uniform(4, 35)
            self.later(z, self.bicycle, X, z, True, rng.random() < 0.55)

    # --- people -----------------------------------------------------------------------------
    def people(self) -> None:
        rng = self.rng
        for s in self.sides.values():
            lo, hi = sorted((s["curb"], s["walk_out"]))
            for _ in range(rng.poisson(3.5)):
                z = rng.uniform(3.5, 40)
                self.later(z, self.person, rng.uniform(lo + 0.3, hi - 0.3), z)
        if self.cross is not None:  # pedestrians on the zebra crossing
            for _ in range(rng.poisson(1.5)):
                z = self.cross[0] - rng.uniform(1.5, 3.5)
                self.later(z, self.person, rng.uniform(self.XL, self.XR), z)

    def person(self, X, Z) -> None:
        rng = self.rng
        height = rng.uniform(1.5, 1.95) if rng.random() < 0.9 else rng.uniform(1.0, 1.4)
        sp = self.sprite(X, Z, 0.45 * height / 1.75, height + 0.05)
        if sp is None:
            return
        reg, a, b, p = sp
        self.person_shape(reg, a, b * (1.75 / height), p * 1.75 / height, Z, PERSON, scale_a=1.75 / height)

    def person_shape(self, reg, a, b, p, Z, cls, riding=None, side_view=False, scale_a=1.0) -> None:
        """A person drawn in a 1.75 m frame: standing, or seated with hip/knee/foot/shoulder/hand given."""
        rng = self.rng
        a = a * scale_a + 0 * b  # (h, w)
        t = 0.5 * p
        hair = _rgb(0.1, 0.08, 0.06) if rng.random() < 0.7 else _rgb(0.6, 0.45, 0.2)
        pal = np.stack([self.pick(CLOTHES), self.pick(CLOTHES), self.pick(SKIN), self.jitter(hair)])
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
            upper = _segment(a, b, hip[0] * side_view, hip[1], shoulder[0] * side_view, shoulder[1], max(0.14, t))
            upper |= _segment(a, b, shoulder[0], shoulder[1] - 0.05, hand[0], hand[1], max(0.045, t))
            legs = _segment(a, b, hip[0], hip[1], knee[0], knee[1], max(0.07, t)) | \
                _segment(a, b, knee[0], knee[1], foot[0], foot[1], max(0.06, t))
            if not side_view:
                upper |= _segment(a, b, -shoulder[0], shoulder[1] - 0.05, -hand[0], hand[1], max(0.045, t))
                legs |= _segment(a, b, -hip[0], hip[1], -knee[0], knee[1], max(0.07, t)) | \
                    _segment(a, b, -knee[0], knee[1], -foot[0], foot[1], max(0.06, t))
        part = upper.astype(np.intp)  # 0 trousers, 1 top, 2 skin, 3 hair
        part[head] = 2
        part[head & (b > 1.67)] = 3
        rgb = pal[part] * (1 + 0.05 * self.fine[reg[0]:reg[1], reg[2]:reg[3], None])
        self.paint(reg, head | upper | legs, rgb, cls, Z - 0.1)

    # --- the ego vehicle and the camera -----------------------------------------------------------
    def ego_vehicle(self) -> None:
        """The bonnet of the car carrying the camera at the bottom of the image (ignored, as in Cityscapes)."""
        rng = self.rng
        d = self.H * rng.uniform(0.05, 0.13)
        k = rng.uniform(0.2, 0.6)
        xn = (self.xc - self.W / 2) / (self.W / 2)
        top = self.H - d * (1 - k * xn ** 2)
        m = self.yc[:, None] >= top[None, :]
        paint = self.pick(VEHICLE)
        refl = np.clip((self.yc[:, None] - top[None, :]) / max(d, 1), 0, 1)[..., None]
        rgb = paint * (0.6 + 0.5 * (1 - refl)) + self.tex((0, self.H, 0, self.W), 0.03)
        self.paint((0, self.H, 0, self.W), m, rgb, IGNORE_INDEX, 0.0)

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

def _frac(x: np.ndarray) -> np.ndarray:
    """``x % 1`` (much faster than numpy's float modulo)."""
    return x - np.floor(x)


def _segment(a, b, x0, y0, x1, y1, half_width) -> np.ndarray:
    """Pixels within ``half_width`` of the segment (x0, y0)-(x1, y1) in metric sprite coordinates."""
    dx, dy = x1 - x0, y1 - y0
    L2 = dx * dx + dy * dy or 1e-9
    t = np.clip(((a - x0) * dx + (b - y0) * dy) / L2, 0, 1)
    return (a - x0 - t * dx) ** 2 + (b - y0 - t * dy) ** 2 <= half_width * half_width
