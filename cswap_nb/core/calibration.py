"""The calibration set: which samples of a pool the causal tests (and the criteria) are run on."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor, nn

from ..data.labels import IGNORE_INDEX
from ..data import check_xy, iter_batches, stream_source, tensor_batches

PREDICT_BATCH = 512  # samples per forward pass when predicting the calibration pool (both selections)


def label_runs(y: Tensor) -> list[tuple[int, int, int]]:
    """``(label, start, stop)`` of each run of equal labels of a 1-D ``y``, in order (the classes of a
    calibration set, which the selection orders by class); ``[]`` for an empty or not 1-D ``y``."""
    if y.ndim != 1 or not len(y):
        return []
    yy = y.detach().cpu().numpy()
    cuts = np.flatnonzero(np.diff(yy)) + 1
    starts, stops = np.r_[0, cuts], np.r_[cuts, len(yy)]
    return [(int(yy[a]), int(a), int(b)) for a, b in zip(starts, stops)]


def class_ranges(y: Tensor) -> list[tuple[int, int, int]] | None:
    """``(class, start, stop)`` of each class of ``y``, by class, when each class's samples are contiguous
    (the calibration selection orders them so), else None."""
    runs = label_runs(y)
    if not runs or len({c for c, _, _ in runs}) != len(runs):
        return None
    return sorted(runs)


def select_calibration(model: nn.Module, x: Tensor, y: Tensor, samples_per_class: int | None,
                       seed: int = 0, min_per_class: int = 2, batch_size: int = PREDICT_BATCH) -> tuple[Tensor, Tensor]:
    """Keep correctly classified samples, ``samples_per_class`` per class (seeded choice).

    Every class present in ``y`` must keep at least ``min_per_class`` samples.
    (:func:`correctly_classified`, then :func:`choose_calibration`.)
    """
    correct = correctly_classified(model, x, y, batch_size)
    return choose_calibration(x, y, correct, samples_per_class, seed, min_per_class)


def correctly_classified(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = PREDICT_BATCH) -> Tensor:
    """A bool tensor (on the CPU): is ``model``'s top-1 prediction of each sample its label?"""
    with torch.inference_mode():
        pred = torch.cat([model(xb).argmax(1) for (xb,) in tensor_batches(batch_size, x)])
    return pred.cpu() == y.cpu()


def choose_calibration(x: Tensor, y: Tensor, correct: Tensor, samples_per_class: int | None, seed: int = 0,
                       min_per_class: int = 2) -> tuple[Tensor, Tensor]:
    """The seeded choice of :func:`select_calibration` among the samples flagged ``correct``:
    ``x`` and ``y`` at :func:`choose_indices`."""
    keep = choose_indices(y, correct, samples_per_class, seed, min_per_class).to(x.device)
    return x[keep], y[keep]


def choose_indices(y: Tensor, correct: Tensor, samples_per_class: int | None, seed: int = 0,
                   min_per_class: int = 2) -> Tensor:
    """The indices of the calibration samples among ``y`` (N,) flagged ``correct`` (N,) bool (on the CPU).

    Per class (in label order) the correct samples are shuffled by a generator seeded with
    ``seed`` and the first ``samples_per_class`` kept (all with None), in their order in ``y``;
    the classes follow each other in label order. A class with fewer than ``samples_per_class``
    correct samples (but some) keeps them all, with one warning naming every such class and its count; a class
    left with fewer than ``min_per_class`` is an error naming every such class. Both the in-memory
    (:func:`select_calibration`) and the streamed (:func:`stream_calibration`) selections choose here.
    """
    y, correct = y.cpu(), correct.cpu()
    classes = torch.unique(y).tolist()
    total = {c: int((y == c).sum()) for c in classes}
    n_correct = {c: int(((y == c) & correct).sum()) for c in classes}
    if samples_per_class is not None:
        few = [c for c in classes if 0 < n_correct[c] < samples_per_class]  # none correct: an error below
        if few:
            warnings.warn("; ".join(f"class {c}: only {n_correct[c]} correctly classified samples" for c in few)
                          + f", fewer than samples_per_class={samples_per_class}", stacklevel=4)
    kept = {c: n_correct[c] if samples_per_class is None else min(n_correct[c], samples_per_class) for c in classes}
    short = [c for c in classes if kept[c] < min_per_class or kept[c] == 0]
    if short:
        raise ValueError(_too_few_message(short, classes, kept, n_correct, total, min_per_class))
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in classes:
        idx = torch.nonzero((y == c) & correct).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        if samples_per_class is not None:
            idx = idx[:samples_per_class]
        keep.append(idx.sort().values)
    return torch.cat(keep)


def _too_few_message(short: list, classes: list, kept: dict, n_correct: dict, total: dict, need: int) -> str:
    counts = ", ".join(f"class {c}: {n_correct[c]} of {total[c]}" for c in short)
    if len(short) == len(classes):
        return (f"no class has the {need} correctly classified calibration sample(s) the chosen test needs, so "
                f"nothing can be tested; correctly classified per class: {counts}. Check that the labels follow "
                "the model's output order (a target_transform can map them) and that the inputs are "
                "transformed as in training")
    c = short[0]
    first = (f"class {c} has no correctly classified calibration sample ({total[c]} sample(s) of that class, "
             "all misclassified); give more data for it or check the model and labels" if n_correct[c] == 0 else
             f"class {c} has only {kept[c]} correctly classified calibration sample(s); "
             f"the chosen test needs at least {need} per class")
    return first if len(short) == 1 else f"{first}. Classes with too few (correct of all): {counts}"


def stream_calibration(model: nn.Module, data, samples_per_class: int | None, seed: int = 0,
                       min_per_class: int = 2, batch_size: int = PREDICT_BATCH,
                       num_outputs: int | None = None) -> tuple[Tensor, Tensor]:
    """:func:`select_calibration` for a Dataset (e.g. an ImageFolder) or an in-order DataLoader,
    read in batches instead of whole; the same samples as the in-memory selection on the same data.

    Pass 1 predicts the pool ``batch_size`` samples at a time, keeping only each label and whether it
    was predicted correctly; :func:`choose_indices` picks the samples; pass 2 reads only those
    (:class:`torch.utils.data.Subset`). Each sample is read twice at most: once to predict it and
    once more if chosen. Labels outside ``[0, num_outputs)`` (default: the model's output width),
    and a dataset whose ``classes`` do not match the outputs (without a ``target_transform``),
    are errors. Returns ``(x, y)`` on the CPU, in the order of :func:`choose_indices`.
    """
    source = stream_source(data)
    if source is None:
        raise TypeError("stream_calibration reads a map-style Dataset or a DataLoader that keeps its dataset's "
                        f"order, got {type(data).__name__}; for tensors use select_calibration")
    dataset, opts = source
    y, correct = _stream_correct(model, iter_batches(dataset, batch_size, **opts), num_outputs, dataset)
    keep = choose_indices(y, correct, samples_per_class, seed, min_per_class)
    xs, ys = zip(*iter_batches(dataset, batch_size, indices=keep, **opts))
    x, y_read = torch.cat(xs), torch.cat(ys).long()
    if not torch.equal(y_read, y[keep]):
        raise ValueError("the dataset returned other labels when its chosen samples were read again; "
                         "calibration data must give the same sample for the same index")
    return x, y_read


def _stream_correct(model: nn.Module, batches, num_outputs: int | None, dataset=None) -> tuple[Tensor, Tensor]:
    """Labels (N,) and top-1 correctness (N,) bool of streamed ``(x, y)`` batches; nothing else is kept."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    ys, oks = [], []
    seen = 0
    with torch.inference_mode():
        for xb, yb in batches:
            check_xy(xb, yb, what=f"calibration data (samples {seen} to {seen + len(yb) - 1})")
            if yb.ndim != 1:
                raise ValueError(f"streamed calibration data needs class indices (N,), got labels of shape "
                                 f"{tuple(yb.shape)}")
            yb = yb.long()
            logits = model(xb.to(device))
            if num_outputs is None:
                num_outputs = logits.shape[1]
            if seen == 0:
                check_classes(dataset, num_outputs)
            bad = (yb < 0) | (yb >= num_outputs)
            if bad.any():
                i = int(bad.nonzero()[0])
                raise ValueError(f"label {int(yb[i])} (sample {seen + i}) is outside [0, {num_outputs - 1}]: the model "
                                 f"has {num_outputs} outputs; map the dataset's labels to the model's classes "
                                 "(e.g. with a target_transform)")
            ys.append(yb)
            oks.append(logits.argmax(1).cpu() == yb)
            seen += len(yb)
    if not ys:
        raise ValueError("calibration data: it is empty")
    return torch.cat(ys), torch.cat(oks)


def check_classes(dataset, num_outputs: int) -> None:
    """An error when ``dataset.classes`` (e.g. an ImageFolder's folders) counts other than ``num_outputs``
    classes and no ``target_transform`` maps its labels to the model's outputs."""
    classes = getattr(dataset, "classes", None)
    if classes is None or getattr(dataset, "target_transform", None) is not None:
        return
    if len(classes) != num_outputs:
        shown = ", ".join(map(str, list(classes)[:5])) + (", ..." if len(classes) > 5 else "")
        raise ValueError(f"the dataset has {len(classes)} classes ({shown}) but the model has {num_outputs} outputs; "
                         "give a folder per class the model predicts, or a target_transform mapping each "
                         "folder's index to the model's class index")


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


