"""Evaluation metrics: top-1 accuracy for classifiers, mIoU and pixel accuracy for segmentation.

Every metric is in percent. Segmentation metrics come from one confusion matrix accumulated
over the whole dataset (not averaged per image), as in the Cityscapes benchmark.
"""
from __future__ import annotations

from itertools import chain

import torch
from torch import Tensor, nn

from ..data.labels import IGNORE_INDEX
from .causal import upsample_logits
from ..data.cityscapes import CITYSCAPES_CLASSES
from ..data import as_tensors, iter_batches, stream_source, tensor_batches
from .layout import channels_last_copy

SEGMENTATION_BATCH_SIZE = 16
_UPSAMPLE_ELEMENTS = 1 << 26  # at most this many upsampled logits (256 MB of float32) at once


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


def _loader(data, batch_size: int):
    if isinstance(data, torch.utils.data.DataLoader):
        return data
    if stream_source(data) is not None:  # a Dataset: read in batches, never whole
        return iter_batches(data, batch_size)
    return tensor_batches(batch_size, *as_tensors(data))


def _logits(out) -> Tensor:
    """The logits of a model output: a tensor, ``out["out"]`` (torchvision segmentation models)
    or the first element of a tuple/list (models that also return auxiliary heads)."""
    if isinstance(out, dict):
        if "out" not in out:
            raise ValueError(f"the model returned a dict without an 'out' entry (keys {sorted(out)})")
        out = out["out"]
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, Tensor):
        raise ValueError(f"the model must return a logits tensor, got {type(out).__name__}")
    return out


def evaluate(model: nn.Module, data, batch_size: int | None = None) -> float:
    """The model's metric in percent on ``data`` (an ``(x, y)`` pair, Split, Dataset or DataLoader;
    a Dataset is read ``batch_size`` samples at a time, never whole).

    Labels ``y`` of shape (N,) give top-1 accuracy; masks (N, H, W) give the mean IoU
    (:func:`evaluate_segmentation`'s ``miou``). ``batch_size`` defaults to 256 images for
    classification and 16 for segmentation. The model is run in eval mode without autograd;
    its train/eval mode is restored. On the CPU a convolutional model is run as a channels-last copy
    (:mod:`cswap_nb.core.layout`).
    """
    if isinstance(data, torch.utils.data.DataLoader):
        it = iter(data)
        first = next(it, None)
        if first is None:
            raise ValueError("evaluate: the data is empty")
        batches = chain([first], it)
        masks = first[1].ndim == 3
    elif stream_source(data) is not None:  # a Dataset (e.g. an ImageFolder): read in batches, never whole
        if len(data) == 0:
            raise ValueError("evaluate: the data is empty")
        masks = as_tensors(data, max_samples=1)[1].ndim == 3
        batches = iter_batches(data, batch_size or (SEGMENTATION_BATCH_SIZE if masks else 256))
    else:
        x, y = as_tensors(data)
        masks = y.ndim == 3
        batches = tensor_batches(batch_size or (SEGMENTATION_BATCH_SIZE if masks else 256), x, y)
    if masks:
        return miou(_confusion(model, batches, None, IGNORE_INDEX))
    model = channels_last_copy(model)  # faster on the CPU; the caller's model keeps its layout (layout.py)
    device = _device(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.inference_mode():
            for xb, yb in batches:
                pred = _logits(model(xb.to(device))).argmax(1).cpu()
                correct += int((pred == yb.cpu()).sum())
                total += len(yb)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the data is empty")
    return 100.0 * correct / total


# ---------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------

def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(num_classes, num_classes) int64 pixel counts: row = true class, column = predicted class.

    ``pred`` and ``target`` are integer tensors of the same shape (e.g. (N, H, W)); pixels whose
    target is ``ignore_index`` are skipped. Other targets and all predictions must lie in
    [0, num_classes).
    """
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"pred and target must be tensors, got {type(pred).__name__} and {type(target).__name__}")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError(f"pred and target must hold integer class indices, got {pred.dtype} and {target.dtype}; "
                        "for logits (N, C, H, W) pass logits.argmax(1)")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = target != ignore_index
    pred, target = pred[valid], target[valid]
    if len(target) and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target classes must lie in [0, {num_classes - 1}] or be {ignore_index} (ignored); "
                         f"got values from {int(target.min())} to {int(target.max())}")
    if len(pred) and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"predicted classes must lie in [0, {num_classes - 1}]; "
                         f"got values from {int(pred.min())} to {int(pred.max())}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def _check_conf(conf: Tensor) -> Tensor:
    if not isinstance(conf, Tensor) or conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        got = tuple(conf.shape) if isinstance(conf, Tensor) else type(conf).__name__
        raise ValueError(f"expected a square confusion matrix (C, C), got {got}")
    if int(conf.sum()) == 0:
        raise ValueError("the confusion matrix is empty: no labelled (non-ignored) pixels")
    return conf.double()


def iou_per_class(conf: Tensor) -> Tensor:
    """IoU of each class in [0, 1]: TP / (TP + FP + FN); NaN for a class with an empty union
    (neither in the targets nor in the predictions)."""
    conf = _check_conf(conf)
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def miou(conf: Tensor) -> float:
    """Mean IoU in percent over the classes with a non-empty union (present in the targets or
    predicted somewhere); classes absent from both are left out rather than counted as 0 or 1."""
    iou = iou_per_class(conf)
    return 100.0 * float(iou[~iou.isnan()].mean())


def pixel_accuracy(conf: Tensor) -> float:
    """Share of labelled (non-ignored) pixels predicted correctly, in percent."""
    conf = _check_conf(conf)
    return 100.0 * float(conf.diag().sum() / conf.sum())


def segmentation_confusion(model: nn.Module, data, num_classes: int | None = None,
                           batch_size: int = SEGMENTATION_BATCH_SIZE, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The model's confusion matrix (C, C) over ``data`` (see :func:`evaluate_segmentation`)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return _confusion(model, _loader(data, batch_size), num_classes, ignore_index)


def evaluate_segmentation(model: nn.Module, data, num_classes: int | None = None,
                          batch_size: int = SEGMENTATION_BATCH_SIZE, ignore_index: int = IGNORE_INDEX,
                          class_names: list[str] | None = None) -> dict:
    """``{"miou", "pixel_acc", "per_class_iou": {name: IoU}}`` (all in percent) of a segmentation model.

    ``data`` holds images and masks (N, H, W) (an ``(x, y)`` pair, Split, Dataset or DataLoader).
    The model's logits (N, C, h, w) are upsampled bilinearly (``align_corners=False``) to the
    mask size when they differ (DDRNet predicts at 1/8 resolution), then argmax-ed; pixels
    labelled ``ignore_index`` are skipped. ``num_classes`` defaults to the model's C (and must
    equal it when given). Class names default to :data:`cswap_nb.data.cityscapes.CITYSCAPES_CLASSES`
    for 19 classes, else "0", "1", ... ``per_class_iou`` lists the classes with a non-empty
    union, the ones ``miou`` averages. The model runs in eval mode without autograd; its
    train/eval mode is restored.
    """
    conf = segmentation_confusion(model, data, num_classes, batch_size, ignore_index)
    return _scores(conf, class_names)


def _scores(conf: Tensor, class_names: list[str] | None) -> dict:
    c = conf.shape[0]
    if class_names is None:
        class_names = list(CITYSCAPES_CLASSES) if c == len(CITYSCAPES_CLASSES) else [str(i) for i in range(c)]
    elif len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for {c} classes")
    iou = iou_per_class(conf)
    return {
        "miou": miou(conf),
        "pixel_acc": pixel_accuracy(conf),
        "per_class_iou": {class_names[i]: 100.0 * float(v) for i, v in enumerate(iou) if not v.isnan()},
    }


def _confusion(model: nn.Module, batches, num_classes: int | None, ignore_index: int) -> Tensor:
    model = channels_last_copy(model)  # faster on the CPU; the caller's model keeps its layout (layout.py)
    device = _device(model)
    was_training = model.training
    model.eval()
    conf = None
    try:
        with torch.inference_mode():
            for xb, yb in batches:
                if yb.ndim != 3:
                    raise ValueError(f"segmentation labels must be masks (N, H, W), got shape {tuple(yb.shape)}")
                logits = _logits(model(xb.to(device)))
                if logits.ndim != 4:
                    raise ValueError(f"a segmentation model must return logits (N, C, h, w), got {tuple(logits.shape)}")
                c = logits.shape[1]
                if num_classes is None:
                    num_classes = c
                elif c != num_classes:
                    raise ValueError(f"num_classes={num_classes} but the model predicts {c} classes")
                if len(logits) != len(yb):
                    raise ValueError(f"the model returned {len(logits)} predictions for {len(yb)} images")
                # upsample a few images at a time: full-resolution logits of a whole batch can be huge
                step = max(1, _UPSAMPLE_ELEMENTS // (c * yb.shape[-2] * yb.shape[-1]))
                for i in range(0, len(yb), step):
                    chunk = upsample_logits(logits[i : i + step].float().contiguous(), yb.shape[-2:])
                    part = confusion_matrix(chunk.argmax(1).cpu(), yb[i : i + step].cpu(), num_classes, ignore_index)
                    conf = part if conf is None else conf + part
    finally:
        model.train(was_training)
    if conf is None or int(conf.sum()) == 0:
        raise ValueError("segmentation metrics: the data is empty or every pixel is ignored")
    return conf
