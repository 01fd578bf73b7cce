"""The Cityscapes conventions of the segmentation code: the 19 evaluation classes (trainIds), their
colours, the ignored label, and the input normalisation of road scenes and Cityscapes images.

A module of its own so that the causal scores, criteria, metrics, training and data loading get a
constant without importing the scene renderer (:mod:`cswap_nb.data.scenes`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .labels import IGNORE_INDEX  # pixels of no class

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

(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY, PERSON,
 RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)
"""Each class's trainId by name, e.g. ``ROAD == 0``, ``BICYCLE == 18``."""


SCENE_MEAN = (0.485, 0.456, 0.406)
SCENE_STD = (0.229, 0.224, 0.225)
"""Per-channel (R, G, B) normalisation of road scenes and Cityscapes images (the ImageNet
statistics that DDRNet and most segmentation backbones expect): ``x = (rgb - mean) / std``
with ``rgb`` in [0, 1]."""


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
