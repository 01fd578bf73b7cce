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

import numpy as np
import torch
from torch import Tensor

from ..cityscapes import (BICYCLE, BUILDING,  # noqa: F401 (re-exported: scenes.CITYSCAPES_CLASSES etc. keep working)
                          BUS, CAR, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, FENCE, IGNORE_INDEX, MOTORCYCLE, PERSON,
                          POLE, RIDER, ROAD, SCENE_MEAN, SCENE_STD, SIDEWALK, SKY, TERRAIN, TRAFFIC_LIGHT, TRAFFIC_SIGN,
                          TRAIN, TRUCK, VEGETATION, WALL, class_frequencies, colorize, denormalize, normalize)
from .canvas import Canvas
from .furniture import furniture
from .road_users import ego_vehicle, people, traffic
from .street import ground, layout, sky, street_end, street_side

DEFAULT_SIZE = (64, 128)


def check_size(size) -> tuple[int, int]:
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
    h, w = check_size(size)
    rgb = np.empty((n, h, w, 3), dtype=np.float32)
    labels = np.empty((n, h, w), dtype=np.uint8)
    for i in range(n):
        rgb[i], labels[i] = road_scene(start + i, (h, w), seed)
    return normalize(torch.from_numpy(rgb).permute(0, 3, 1, 2)), torch.from_numpy(labels).long()


def road_scene(index: int, size: tuple[int, int] = DEFAULT_SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One scene as numpy arrays: RGB (H, W, 3) float32 in [0, 1] and trainIds (H, W) uint8."""
    index = _check_int(index, "index")
    seed = _check_int(seed, "seed")
    h, w = check_size(size)
    return render(Canvas(np.random.default_rng([seed, index]), h, w))


def render(cv: Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene on a fresh canvas: RGB (H, W, 3) float32 in [0, 1] and trainIds (H, W) uint8."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return draw_scene(cv)


def draw_scene(cv: Canvas) -> tuple[np.ndarray, np.ndarray]:
    cv.todo = []
    layout(cv)
    sky(cv)
    ground(cv)
    for side in (-1, 1):
        street_side(cv, side)
    street_end(cv)
    furniture(cv)
    traffic(cv)
    people(cv)
    # near to far: the z-buffer resolves occlusion, and objects hidden behind nearer ones
    # are skipped cheaply; see-through fences come last so that they blend with what is behind
    cv.todo.sort(key=lambda item: item[0])
    for _, draw, args in cv.todo:
        draw(cv, *args)
    if cv.rng.random() < 0.4:
        ego_vehicle(cv)
    return cv.finish(), cv.lab
