"""The causal test of one unit: scores under intervention, statistical tests, C/N/D labels.

For calibration samples ``x`` of class ``y``, ``q(x)`` is the model's score of the true
class (default: its softmax probability) and ``q^n(x)`` the same score with unit ``n``
removed. Per class ``c`` (or once over all samples with ``inference="general"``):

* one-sided test "removal lowers q" significant at level ``alpha`` for some class -> **critical**
* otherwise "removal raises q" significant for some class -> **detrimental**
* otherwise -> **neutral**

A larger ``alpha`` flags more units critical (less pruning, safer accuracy). With
``correction="holm"`` or ``"bh"`` the per-class p-values of each direction are adjusted for
testing C classes at once before they are compared with ``alpha`` (cswap_nb/METHOD.md §2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special, stats
from torch import Tensor

from ..data.labels import IGNORE_INDEX  # pixels of no class: skipped by the scores
from .config import CORRECTIONS, INFERENCES, SCORES, TESTS, min_samples  # noqa: F401 (the options' values, one place)


CRITICAL, NEUTRAL, DETRIMENTAL = "critical", "neutral", "detrimental"
LABELS = (CRITICAL, NEUTRAL, DETRIMENTAL)


def upsample_logits(logits: Tensor, size) -> Tensor:
    """Dense logits (N, C, h, w) at the label size (H, W): bilinear, ``align_corners=False``
    (DDRNet predicts at 1/8 resolution). Unchanged when the sizes already agree."""
    size = tuple(size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _own_pixel_scores(logits: Tensor, size, target: Tensor, score: str) -> Tensor:
    """The score of class ``target`` (N, 1, H, W) at each pixel of the label size (H, W).

    Only the target's probability is needed: ``exp(z_target - m) / sum_c exp(z_c - m)``. Each image's logits
    are shifted by their largest value ``m`` *before* the bilinear upsampling (its weights sum to 1, so the
    shift passes through unchanged), which keeps every ``exp`` at most 1 without a per-pixel maximum, and
    they are upsampled from channels-last, where both the upsampling and the sum over classes read memory
    in order. On DDRNet's calibration batches this is 1.23x as fast as ``logsumexp`` over an NCHW
    upsampling (``python benchmarks/segmentation_scores.py``), and equal to it up to rounding (~1e-6). A pixel whose every class lies far below its image's
    largest logit (a sum under 1e-30) is scored the safe way, with a per-pixel ``logsumexp``.

    On the CPU the images go through in groups of about :data:`PIXEL_CHUNK` upsampled values (5 MB), each group's
    upsampling, ``exp`` (in place) and sum while it is still in the CPU's cache: every step is memory-bound on the
    full-size tensor (76 road scenes x 19 classes x 64 x 128: 47 MB), and in groups the score took 10.5 instead of
    39.3 ms, bit for bit the same (each pixel's sum over classes is the same sum; ``benchmarks/segmentation_scores.py``).
    Only where a pixel underflows do the results differ, by rounding: its group alone takes the safe way, where one
    group took it for the whole batch. On a GPU the batch is one group (each group's underflow check waits for it).
    """
    z = logits.float()
    if score == "logit":
        return upsample_logits(z.contiguous(), size).gather(1, target)
    shifted = (z - z.amax((1, 2, 3), keepdim=True)).contiguous(memory_format=torch.channels_last)
    per_image = z.shape[1] * int(size[0]) * int(size[1])
    step = z.shape[0] if z.is_cuda else max(1, PIXEL_CHUNK // max(1, per_image))
    if z.shape[0] <= step:
        return _own_pixel_chunk(shifted, size, target, score)
    return torch.cat([_own_pixel_chunk(shifted[i : i + step], size, target[i : i + step], score)
                      for i in range(0, z.shape[0], step)])


PIXEL_CHUNK = 1_250_000  # upsampled values (float32) scored in one group by _own_pixel_scores: about 5 MB


def _own_pixel_chunk(shifted: Tensor, size, target: Tensor, score: str) -> Tensor:
    """:func:`_own_pixel_scores` for a group of images whose logits are already shifted."""
    zs = upsample_logits(shifted, size)
    own = zs.gather(1, target) if score == "logprob" else None
    e = zs.exp_() if zs is not shifted else zs.exp()
    total = e.sum(1, keepdim=True)
    if not bool((total > 1e-30).all()):  # underflow: the per-pixel maximum instead of the image's
        zs = upsample_logits(shifted, size)
        logp = zs.gather(1, target) - zs.logsumexp(1, keepdim=True)
        return logp if score == "logprob" else logp.exp()
    if score == "logprob":
        return own - total.log()
    return e.gather(1, target) / total


def true_class_scores(logits: Tensor, y: Tensor, score: str = "prob") -> Tensor:
    """``q(x)``: the score of each sample's own class, shape (N,).

    ``prob`` and ``ratio`` use the softmax probability (``ratio`` divides by the
    reference later); ``logit`` the raw logit; ``logprob`` the log-probability (which,
    unlike ``prob``, does not saturate near 1 on a confident network). Segmentation logits (N, C, h, w) with
    label masks y (N, H, W) are upsampled to the label size (bilinear) and scored as the
    mean over labelled pixels (label != 255) of the true-class probability (``logprob``:
    of its logarithm, ``logit``: of the logit).
    """
    if logits.ndim == 4:
        valid = y != IGNORE_INDEX
        picked = _own_pixel_scores(logits, y.shape[-2:], torch.where(valid, y, 0)[:, None], score).squeeze(1)
        return (picked * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)
    if score == "logit":
        return logits.float().gather(1, y[:, None]).squeeze(1)
    logp = logits.float().log_softmax(1).gather(1, y[:, None]).squeeze(1)
    return logp if score == "logprob" else logp.exp()


class PixelClasses(NamedTuple):
    """Where each class's pixels are in a batch of label masks (N, H, W), for ``C`` classes.

    The masks are the same for every candidate the causal loop tests, so
    :func:`class_pixel_scores` takes this once-computed index instead of rebuilding it per pass.
    """

    labels: Tensor  # (N, H*W): the class of each pixel, C for ignored pixels
    gather: Tensor  # (N, 1, H, W): the class whose probability each pixel contributes (ignored: any)
    pixels: Tensor  # (N, C): pixels of each class in each image


def pixel_classes(masks: Tensor, num_classes: int) -> PixelClasses:
    """The :class:`PixelClasses` index of label ``masks`` (N, H, W) for ``num_classes`` classes."""
    n, c = masks.shape[0], num_classes
    labels = torch.where(masks == IGNORE_INDEX, c, masks).flatten(1)  # ignored pixels -> bin c
    ones = torch.ones(labels.shape, device=masks.device)
    pixels = torch.zeros(n, c + 1, device=masks.device).scatter_add_(1, labels, ones)[:, :c]
    return PixelClasses(labels, labels.clamp(max=c - 1).view(n, 1, *masks.shape[1:]), pixels)


def class_pixel_scores(logits: Tensor, masks: Tensor, score: str = "prob", index: PixelClasses | None = None) -> Tensor:
    """Segmentation scores per (image, class), shape (N, C): for class c, the mean over the
    pixels labelled c of the probability of c (NaN where the image has no pixel of c).

    This is what per-class inference tests for segmentation: a class's test uses the
    images where it appears, each scored on that class's own pixels. ``index`` is
    :func:`pixel_classes` of ``masks``, computed once by a caller that scores the same masks
    many times.
    """
    n, c = logits.shape[:2]
    index = pixel_classes(masks, c) if index is None else index
    own = _own_pixel_scores(logits, masks.shape[-2:], index.gather, score).flatten(1)
    labels, pixels = index.labels, index.pixels.to(own.dtype)
    # on a GPU, scatter_add_ adds in a varying order: sums in float64 there give float32 scores that do not
    # change from run to run (the CPU adds in order)
    acc = own.double() if own.is_cuda else own
    total = torch.zeros(n, c + 1, dtype=acc.dtype, device=own.device).scatter_add_(1, labels, acc)[:, :c].to(own.dtype)
    return torch.where(pixels > 0, total / pixels.clamp(min=1), torch.full_like(total, float("nan")))


def _row_moments(v: np.ndarray, n: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's mean and sample variance (ddof = 1); with ``n``, only the first ``n[i]`` entries of
    row i count (the rest is padding)."""
    if n is None:
        return v.mean(1), v.var(1, ddof=1)
    filled = np.where(np.isnan(v), 0.0, v)
    mean = filled.sum(1) / n
    dev = np.where(np.isnan(v), 0.0, v - mean[:, None])
    return mean, (dev * dev).sum(1) / (n - 1)


def _t_cdf(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Student's t CDF: the ufunc behind ``scipy.stats.t.cdf`` (and ``t.sf(t) = cdf(-t)``), equal to it bit
    for bit, without the distribution wrapper's argument checks (~100 µs a call, paid once per candidate)."""
    return special.stdtr(df, t)


def one_sided_pvalues(q_removed: np.ndarray, q_ref: np.ndarray, test: str,
                      n: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """p-values of (removal lowers q, removal raises q), one pair per row.

    ``q_removed`` and ``q_ref`` are (groups, n) arrays (a 1-D array is one group); the
    tests run row-wise in one vectorised scipy call. Rows of different lengths come padded with
    NaN, with ``n`` their lengths (not for ``"wilcoxon"``). A row with no difference at all
    gets p = 1 both ways; a row whose two samples are each constant gets p = 0 in the
    direction of the difference (an exact, noise-free effect).
    """
    a = np.atleast_2d(np.asarray(q_removed, dtype=np.float64))
    b = np.atleast_2d(np.asarray(q_ref, dtype=np.float64))
    diff = a - b
    size = np.full(len(a), a.shape[1]) if n is None else np.asarray(n)
    if n is not None and test == "wilcoxon":
        raise ValueError("the signed-rank test takes rows of one length")
    with np.errstate(divide="ignore", invalid="ignore"):
        if test in ("welch", "ztest"):
            (ma, va), (mb, vb) = _row_moments(a, n), _row_moments(b, n)
            va, vb = va / size, vb / size
        if test == "welch":
            # Welch's unequal-variance t-test (as scipy.stats.ttest_ind(equal_var=False)),
            # written out so that one unit costs two ufunc calls instead of two scipy wrappers
            t = (ma - mb) / np.sqrt(va + vb)
            df = (va + vb) ** 2 / (va**2 / (size - 1) + vb**2 / (size - 1))
            lo, hi = _t_cdf(t, df), _t_cdf(-t, df)
            degenerate = (va == 0) & (vb == 0)
        elif test == "ztest":
            se = np.sqrt(va + vb)
            z = (ma - mb) / se
            lo, hi = special.ndtr(z), special.ndtr(-z)
            degenerate = se == 0
        elif test == "wilcoxon":
            # row by row: batched, scipy picks one method (exact or normal) for all rows at once,
            # which would make a class's p-value depend on the other classes
            lo = np.array([stats.wilcoxon(d, alternative="less", zero_method="zsplit").pvalue for d in diff])
            hi = np.array([stats.wilcoxon(d, alternative="greater", zero_method="zsplit").pvalue for d in diff])
            degenerate = np.zeros(len(a), dtype=bool)
        elif test == "paired-t":
            md, vd = _row_moments(diff, n)
            t = md / np.sqrt(vd / size)
            lo, hi = _t_cdf(t, size - 1), _t_cdf(-t, size - 1)
            degenerate = (vd == 0) | (size == 1)
        else:
            raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    lo, hi = np.atleast_1d(lo).astype(np.float64), np.atleast_1d(hi).astype(np.float64)
    shift = diff.mean(1) if n is None else np.where(np.isnan(diff), 0.0, diff).sum(1) / size
    lowered = shift < 0
    raised = shift > 0
    lo = np.where(degenerate, np.where(lowered, 0.0, 1.0), lo)
    hi = np.where(degenerate, np.where(raised, 0.0, 1.0), hi)
    same = np.all((diff == 0) | np.isnan(diff), axis=1)
    lo = np.where(same | ~np.isfinite(lo), 1.0, lo)
    hi = np.where(same | ~np.isfinite(hi), 1.0, hi)
    return lo, hi


def adjust_pvalues(p: np.ndarray, correction: str = "none") -> np.ndarray:
    """p-values of one family of tests (the C per-class tests of one direction), adjusted.

    ``"none"``: unchanged. ``"holm"``: Holm's step-down adjustment, which controls the
    family-wise error rate (a harmless unit is flagged in at most a fraction α of the draws,
    instead of up to 1 - (1 - α)^C). ``"bh"``: Benjamini–Hochberg
    (:func:`scipy.stats.false_discovery_control`), which controls the false discovery rate.
    Comparing the smallest adjusted p-value with α decides whether *any* class rejects.
    """
    p = np.asarray(p, dtype=np.float64)
    if correction == "none" or p.size <= 1:
        return p
    if correction == "bh":
        return stats.false_discovery_control(p, method="bh")
    if correction == "holm":
        order = np.argsort(p, kind="stable")
        m = p.size
        stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
        out = np.empty_like(p)
        out[order] = np.minimum(stepped, 1.0)
        return out
    raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")


@dataclass
class Verdict:
    """Outcome of one causal test: the label and the evidence behind it.

    ``p_lower``/``p_raise``: smallest per-class p-value of "removal lowers/raises q" (after the
    ``correction`` for testing several classes, when one is chosen);
    ``p_value``: the one that decided the label (``p_lower`` unless detrimental);
    ``effect``: mean over samples of ``q^n - q`` (negative = removal hurts);
    ``worst_class``: the class with the smallest ``p_lower``.
    """

    label: str
    p_value: float
    p_lower: float
    p_raise: float
    effect: float
    worst_class: int


def group_pvalues(qn: np.ndarray, q: np.ndarray, groups: list[np.ndarray], test: str) -> tuple[np.ndarray, np.ndarray]:
    """One-sided p-values (lowers, raises) of each group of samples (one row of ``groups`` each)."""
    if len({len(g) for g in groups}) == 1:  # equal group sizes: one vectorised call
        idx = np.stack(groups)
        return one_sided_pvalues(qn[idx], q[idx], test)
    if test != "wilcoxon":  # groups of several sizes (segmentation's classes): padded, still one call
        size = np.array([len(g) for g in groups])
        a, b = np.full((len(groups), size.max()), np.nan), np.full((len(groups), size.max()), np.nan)
        for i, g in enumerate(groups):
            a[i, : len(g)], b[i, : len(g)] = qn[g], q[g]
        return one_sided_pvalues(a, b, test, size)
    pairs = [one_sided_pvalues(qn[g], q[g], test) for g in groups]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def as_compared(q_removed: Tensor, q_ref: Tensor, score: str) -> tuple[np.ndarray, np.ndarray]:
    """The two samples the test compares, as float64 arrays: the scores, or for ``score="ratio"``
    ``q^n(x) / q(x)`` against 1 (the paper's global causal effect, per sample)."""
    qn = q_removed.double().cpu().numpy()
    q = q_ref.double().cpu().numpy()
    if score == "ratio":
        qn, q = qn / np.maximum(q, 1e-12), np.ones_like(q)
    return qn, q


def verdict_of(lows: np.ndarray, highs: np.ndarray, classes: list[int], alpha: float, correction: str,
               effect: float, complete: bool = True) -> Verdict | None:
    """The label from per-class p-values of "removal lowers q" (``lows``) and "raises q" (``highs``).

    With ``complete=False`` the classes not evaluated yet hold p = 1 in both arrays; the result is
    then the final label if it is already decided (critical), else None. This is exact: a smaller
    p-value for any class can only lower the adjusted p-values (none, Holm and BH are monotone), so a
    unit critical with the missing classes at p = 1 is critical whatever they turn out to be.
    Neutral and detrimental need every class.
    """
    worst = classes[int(np.argmin(lows))]
    lows, highs = adjust_pvalues(lows, correction), adjust_pvalues(highs, correction)
    p_lower, p_raise = float(lows.min()), float(highs.min())
    if p_lower < alpha:
        label, p = CRITICAL, p_lower
    elif not complete:
        return None
    elif p_raise < alpha:
        label, p = DETRIMENTAL, p_raise
    else:
        label, p = NEUTRAL, p_lower
    return Verdict(label, p, p_lower, p_raise, effect, worst)


def decide_unit(
    q_removed: Tensor,
    q_ref: Tensor,
    y: Tensor,
    alpha: float,
    test: str = "welch",
    inference: str = "per-class",
    score: str = "prob",
    correction: str = "none",
) -> Verdict:
    """Label one unit from the scores with (``q_ref``) and without it (``q_removed``).

    ``correction`` adjusts the per-class p-values of each direction (:func:`adjust_pvalues`);
    it has no effect with ``inference="general"`` (one test per direction).
    """
    qn, q = as_compared(q_removed, q_ref, score)
    yy = y.cpu().numpy()
    classes = [-1] if inference == "general" else [int(c) for c in np.unique(yy)]
    groups = [np.arange(len(yy))] if inference == "general" else [np.flatnonzero(yy == c) for c in classes]
    lows, highs = group_pvalues(qn, q, groups, test)
    return verdict_of(lows, highs, classes, alpha, correction, float((qn - q).mean()))
