"""Embedded datasets and calibration-set selection.

Everything here works offline. The default classification data is scikit-learn's
bundled handwritten digits (1,797 images of 8x8 pixels, 10 classes), upsampled to
32x32 RGB so that real ImageNet-style architectures (ResNet, MobileNet, ViT) run on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Split(NamedTuple):
    """A labelled split held in memory: ``x`` (N, C, H, W) float, ``y`` (N,) int64."""

    x: Tensor
    y: Tensor


@dataclass
class Dataset:
    """The splits a shipped checkpoint was trained and is evaluated on.

    ``calib`` is the pool the calibration set is drawn from (the training split):
    :func:`cswap_nb.prune` keeps its correctly classified samples, ``k`` per class.
    """

    name: str
    train: Split
    test: Split
    classes: list[str]

    @property
    def calib(self) -> Split:
        return self.train

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DIGITS_MEAN = 0.5
DIGITS_STD = 0.5


def load_digits(size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's digits, upsampled to ``size`` x ``size`` x 3, stratified split.

    The split is deterministic for a seed (default 0: 1,437 train / 360 test images).
    Pixels are scaled to [0, 1] then normalised with mean 0.5 and std 0.5.
    """
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0  # (N, 8, 8) in [0, 1]
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    x = F.interpolate(images[:, None], size=(size, size), mode="bilinear", align_corners=False)
    x = ((x - DIGITS_MEAN) / DIGITS_STD).repeat(1, 3, 1, 1).contiguous()
    idx = torch.arange(len(labels)).numpy()
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels.numpy())
    tr, te = torch.as_tensor(sorted(tr)), torch.as_tensor(sorted(te))
    return Dataset(
        name=f"digits{size}",
        train=Split(x[tr], labels[tr]),
        test=Split(x[te], labels[te]),
        classes=[str(i) for i in range(10)],
    )


DATASETS = {"digits32": lambda: load_digits(32)}


def load_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name]()


def as_tensors(data, max_samples: int | None = None) -> tuple[Tensor, Tensor]:
    """Turn an ``(x, y)`` pair, a :class:`Split`, a torch Dataset or a DataLoader into tensors."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
    elif isinstance(data, torch.utils.data.DataLoader):
        xs, ys = [], []
        for xb, yb in data:
            xs.append(xb)
            ys.append(yb)
            if max_samples is not None and sum(len(b) for b in ys) >= max_samples:
                break
        x, y = torch.cat(xs), torch.cat(ys)
    elif isinstance(data, torch.utils.data.Dataset):
        pairs = [data[i] for i in range(len(data) if max_samples is None else min(len(data), max_samples))]
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        y = torch.as_tensor([int(p[1]) for p in pairs])
    else:
        raise TypeError(
            "data must be an (x, y) tensor pair, a torch Dataset or a DataLoader; "
            f"got {type(data).__name__}"
        )
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    return x, y


def check_xy(x: Tensor, y: Tensor, what: str = "calibration data") -> None:
    """Clear errors for malformed labelled tensors."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{what}: x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{what}: x must have a batch dimension and at least one feature dimension, got shape {tuple(x.shape)}")
    if y.ndim != 1:
        raise ValueError(f"{what}: y must be a 1-D tensor of class indices, got shape {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: it is empty")
    if not x.is_floating_point():
        raise TypeError(f"{what}: x must be a floating-point tensor, got dtype {x.dtype}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{what}: y must hold integer class indices, got dtype {y.dtype}")
    bad = (~torch.isfinite(x)).flatten(1).any(1)
    if bad.any():
        raise ValueError(
            f"{what}: x contains NaN or infinite values in {int(bad.sum())} sample(s) "
            f"(first at index {int(bad.nonzero()[0])})"
        )


def batches(x: Tensor, batch_size: int) -> Iterator[Tensor]:
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size]
