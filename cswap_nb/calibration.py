"""The calibration set: which samples of a pool the causal tests (and the criteria) are run on."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from .causal import IGNORE_INDEX


def select_calibration(model: nn.Module, x: Tensor, y: Tensor, samples_per_class: int | None,
                       seed: int = 0, min_per_class: int = 2, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """Keep correctly classified samples, ``samples_per_class`` per class (seeded choice).

    Every class present in ``y`` must keep at least ``min_per_class`` samples.
    (:func:`correctly_classified`, then :func:`choose_calibration`.)
    """
    correct = correctly_classified(model, x, y, batch_size)
    return choose_calibration(x, y, correct, samples_per_class, seed, min_per_class)


def correctly_classified(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> Tensor:
    """A bool tensor (on the CPU): is ``model``'s top-1 prediction of each sample its label?"""
    with torch.inference_mode():
        pred = torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(y), batch_size)])
    return pred.cpu() == y.cpu()


def choose_calibration(x: Tensor, y: Tensor, correct: Tensor, samples_per_class: int | None, seed: int = 0,
                       min_per_class: int = 2) -> tuple[Tensor, Tensor]:
    """The seeded choice of :func:`select_calibration` among the samples flagged ``correct``.

    Per class (in label order) the correct samples are shuffled by a generator seeded with
    ``seed`` and the first ``samples_per_class`` kept, in their order in ``x``.
    """
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero((y.cpu() == c) & correct).flatten()
        if len(idx) == 0:
            raise ValueError(
                f"class {c} has no correctly classified calibration sample "
                f"({int((y == c).sum())} sample(s) of that class, all misclassified); "
                "give more data for it or check the model and labels"
            )
        idx = idx[torch.randperm(len(idx), generator=gen)]
        if samples_per_class is not None:
            if len(idx) < samples_per_class:
                warnings.warn(f"class {c}: only {len(idx)} correctly classified samples, "
                              f"fewer than samples_per_class={samples_per_class}", stacklevel=3)
            idx = idx[:samples_per_class]
        if len(idx) < min_per_class:
            raise ValueError(
                f"class {c} has only {len(idx)} correctly classified calibration sample(s); "
                f"the chosen test needs at least {min_per_class} per class"
            )
        keep.append(idx.sort().values)
    keep = torch.cat(keep).to(x.device)
    return x[keep], y[keep]


MIN_CLASS_PIXELS = 16  # a class takes part in an image's per-class test with at least this many pixels


def select_segmentation_calibration(x: Tensor, masks: Tensor, samples_per_class: int | None, num_classes: int,
                                    seed: int = 0, min_per_class: int = 2,
                                    min_pixels: int = MIN_CLASS_PIXELS) -> tuple[Tensor, Tensor, Tensor]:
    """Pick calibration images for a segmentation model; return (x, masks, pairs).

    A class *appears* in an image when it covers at least ``min_pixels`` labelled pixels.
    Images are visited in a seeded random order and kept while they show a class that
    still has fewer than ``samples_per_class`` images (all images with ``None``).
    ``pairs`` (P, 2) lists every (kept image, class appearing in it): the samples of the
    per-class tests. Classes appearing in fewer than ``min_per_class`` kept images
    cannot be tested; they are left out with a warning. (Dense predictions have no single
    "correct" outcome, so unlike :func:`select_calibration` images are not filtered on it.)
    """
    n = masks.shape[0]
    flat = torch.where(masks == IGNORE_INDEX, num_classes, masks).flatten(1).cpu()
    counts = torch.zeros(n, num_classes + 1, dtype=torch.long).scatter_add_(1, flat, torch.ones_like(flat))[:, :num_classes]
    present = counts >= min_pixels
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    if samples_per_class is None:
        keep = sorted(order)
    else:
        have = torch.zeros(num_classes, dtype=torch.long)
        keep = []
        for i in order:
            if bool((present[i] & (have < samples_per_class)).any()):
                keep.append(i)
                have += present[i].long()
            if bool(((have >= samples_per_class) | (present.sum(0) == have)).all()):
                break
        keep.sort()
    keep_t = torch.tensor(keep, dtype=torch.long)
    sub = present[keep_t]
    per_class = sub.sum(0)
    rare = [c for c in range(num_classes) if 0 < int(per_class[c]) < min_per_class]
    if rare:
        warnings.warn(f"class(es) {rare} appear (>= {min_pixels} pixels) in fewer than {min_per_class} calibration "
                      "image(s) and are not tested", stacklevel=3)
        sub[:, rare] = False
    pairs = sub.nonzero()  # (row in kept images, class), image-major
    if len(pairs) == 0:
        raise ValueError(f"no class covers {min_pixels} labelled pixels in {min_per_class} or more images: "
                         "nothing to test; give more (or larger) calibration images")
    device = x.device
    keep_d = keep_t.to(device)
    return x[keep_d], masks[keep_d], pairs.to(device)


