"""How the scores ``q(x)`` of the calibration set are computed for each tested unit.

* :class:`FullEngine` (``engine="naive"``): one full forward pass over the calibration
  set per tested unit.
* :class:`cswap_nb.engines.graph.GraphEngine` (``engine="fast"``): the model's ``torch.fx`` graph with a
  cache of intermediates and a linear correction (see :mod:`cswap_nb.engines.graph`); it falls back to:
* :class:`PrefixEngine` (``engine="parts"``, and ``"fast"``'s fallback): the network is split into a sequence of
  parts (stem layers, residual blocks, head). While one unit layer is analysed only its
  own masks change, so the input of the first part that contains one of its mask points
  is computed once and cached; each candidate then runs only the rest of the network.
  The cache is keyed by the mask state of every other layer, so it is recomputed
  whenever the network before that part changes. Models whose forward cannot be split
  this way fall back to full passes; :attr:`PrefixEngine.fallback` says why.

With ``compaction="on"`` the graph engine is wrapped in :class:`cswap_nb.engines.compact.CompactingEngine`, which
scores a layer's candidates on a copy with the other layers' removed units sliced out.

All take the naive engine's decisions: their scores differ only by float reassociation (the same
modules run on the same inputs; the graph engine's correction subtracts a channel's contribution
instead of recomputing a layer). ``python -m cswap_nb bench`` compares decisions and times.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..core.causal import PixelClasses, class_pixel_scores, pixel_classes, true_class_scores
from ..models.families import family_of
from ..core.units import Masker, UnitLayer

PartModules = tuple[str, Callable[[Tensor], Tensor], list[str]]  # (name, function, module names inside)
SEGMENTATION_PIXELS = 64 * 64 * 128  # label pixels scored in one batch of a segmentation model, at most
Rows = tuple[tuple[int, int], ...]  # sample ranges (start, stop) of the calibration set


def take_rows(v: Tensor, rows: Rows, copy: bool = False) -> Tensor:
    """The rows ``rows`` of ``v`` (dim 0): a view for one range, unless ``copy``; a new tensor for several."""
    if len(rows) == 1:
        a, b = rows[0]
        return v[a:b].clone() if copy else v[a:b]
    return torch.cat([v[a:b] for a, b in rows])


def row_count(rows: Rows) -> int:
    return sum(b - a for a, b in rows)


def sequential_parts(model: nn.Module) -> list[PartModules] | None:
    """Split a model into parts run one after the other, as its family's adapter does
    (:meth:`cswap_nb.models.families.Family.parts`: the children of an ``nn.Sequential``, a ResNet's stem
    layers, blocks and head, a MobileNetV2's feature blocks and head, a ViT's embedding stem, blocks
    and head, or the parts a model lists itself with ``sequential_parts()``); each part with the
    names of the modules inside it. None if the family has no split."""
    parts = family_of(model).parts(model)
    if parts is None:
        return None
    names = [n for n, _ in model.named_modules()]

    def under(*prefixes: str) -> list[str]:
        return [n for n in names if n and any(n == p or n.startswith(p + ".") for p in prefixes)]

    return [(name, fn, under(*prefixes)) for name, fn, prefixes in parts]


def _clone(state):
    """A copy of a part's output (a tensor or a tuple holding tensors)."""
    if isinstance(state, Tensor):
        return state.clone()
    if isinstance(state, tuple):
        return tuple(_clone(s) for s in state)
    return state


class FullEngine:
    """One full forward pass per evaluation."""

    name = "naive"
    path = "full"  # how candidates are scored: "graph", "parts" or "full" passes
    fallback: str | None = None  # why a faster path was not used (None when it was, or none was asked for)

    def __init__(self, model: nn.Module, masker: Masker, batch_size: int = 512):
        self.model, self.masker, self.batch_size = model, masker, batch_size
        self.forward_equivalents = 0.0
        self.masks: Tensor | None = None
        self.pairs: Tensor | None = None

    def segmentation(self, masks: Tensor, pairs: Tensor | None) -> None:
        """Score dense predictions against label ``masks`` (N, H, W) instead of ``y``.

        ``pairs`` None: one score per image (mean over its labelled pixels). ``pairs``
        (P, 2) of (image, class): one score per pair, the class's probability averaged
        over that class's pixels in that image (:func:`~cswap_nb.core.causal.class_pixel_scores`);
        the ``y`` handed to :meth:`scores` is then ignored.
        """
        self.masks, self.pairs = masks, pairs
        # dense outputs are large: at most SEGMENTATION_PIXELS label pixels a batch (64 scenes of 64x128;
        # one chunk instead of two for notebook 05's 42 scenes, 12% faster per analysis than 32 scenes)
        per_image = max(1, masks.shape[-2] * masks.shape[-1])
        self.batch_size = min(self.batch_size, max(1, SEGMENTATION_PIXELS // per_image))
        self._pixel_index: dict[tuple[int, int], PixelClasses] = {}  # (batch start, classes) -> pixel_classes

    def _score(self, logits: Tensor, y: Tensor, i: int, score: str) -> Tensor:
        if self.masks is None:
            return true_class_scores(logits, y[i : i + self.batch_size], score)
        masks = self.masks[i : i + self.batch_size]
        if self.pairs is None:
            return true_class_scores(logits, masks, score)
        key = (i, logits.shape[1])  # the masks are the same on every pass: index their pixels once
        if key not in self._pixel_index:
            self._pixel_index[key] = pixel_classes(masks, logits.shape[1])
        return class_pixel_scores(logits, masks, score, self._pixel_index[key])

    def _finish(self, q: Tensor) -> Tensor:
        return q if self.pairs is None else q[self.pairs[:, 0], self.pairs[:, 1]]

    def scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer | None = None) -> Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], self.batch_size):
                out.append(self._score(self.model(x[i : i + self.batch_size]), y, i, score))
        self.forward_equivalents += 1.0
        return self._finish(torch.cat(out))


    def can_slice(self, layer: UnitLayer, x: Tensor) -> bool:
        """Whether :meth:`rows_scores` computes only the rows asked for (classification scores)."""
        return self.masks is None

    def rows_scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, rows: Rows) -> Tensor:
        """The scores of the calibration samples in ``rows`` (``(start, stop)`` ranges) alone: a pass
        over those samples, for decisions taken class by class (cswap_nb/METHOD.md §10)."""
        if self.masks is not None:
            raise ValueError("rows_scores scores classification outputs; segmentation scores need every image")
        with torch.inference_mode():
            q = true_class_scores(self.model(take_rows(x, rows)), take_rows(y, rows), score)
        self.forward_equivalents += row_count(rows) / x.shape[0]
        return q

    def can_stack(self, layer: UnitLayer, x: Tensor) -> bool:
        """Whether :meth:`stack_rows` can score several candidates in one pass (the graph engine only)."""
        return False

    def stack_rows(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, others: list[list[int]],
                   rows: Rows) -> None:
        raise NotImplementedError(f"the {self.name!r} engine scores one candidate per pass")

    def clear_stacked(self) -> None:
        """Forget results scored ahead (none here)."""


class PrefixEngine(FullEngine):
    """Cache the input of the first part touched by the layer under analysis (``engine="parts"``).

    :attr:`path` is ``"parts"``, or ``"full"`` when the model is not a supported sequence of parts.
    """

    name = "parts"

    def __init__(self, model: nn.Module, masker: Masker, example: Tensor, batch_size: int = 512):
        super().__init__(model, masker, batch_size)
        self.parts = sequential_parts(model)
        self.fallback = None if self.parts is not None else f"{type(model).__name__} is not a supported sequence of parts"
        self._cache: tuple | None = None
        self._cost: list[float] = []
        if self.parts is not None:
            self._check(example)
        self.path = "parts" if self.parts is not None else "full"
        if self.parts is not None:
            self._cost = self._part_costs(example)
            self._part_of = {}
            for i, (_, _, inside) in enumerate(self.parts):
                for n in inside:
                    self._part_of.setdefault(n, i)

    def _run(self, x: Tensor, start: int, stop: int | None = None) -> Tensor:
        for _, fn, _ in self.parts[start:stop]:
            x = fn(x)
        return x

    def _check(self, example: Tensor) -> None:
        with torch.inference_mode():
            ref = self.model(example)
            got = self._run(example, 0)
        if got.shape != ref.shape or not torch.allclose(got, ref, atol=1e-5, rtol=1e-4):
            self.parts, self.fallback = None, "the split forward does not reproduce model(x)"

    def _part_costs(self, example: Tensor) -> list[float]:
        from torch.utils.flop_counter import FlopCounterMode

        costs, h = [], example
        with torch.inference_mode():
            for _, fn, _ in self.parts:
                with FlopCounterMode(display=False) as counter:
                    h = fn(h)
                costs.append(float(counter.get_total_flops()))
        total = sum(costs) or 1.0
        return [c / total for c in costs]

    def can_slice(self, layer: UnitLayer, x: Tensor) -> bool:
        return self.parts is None and self.masks is None  # the parts' cache is keyed by the whole tensor

    def start_of(self, layer: UnitLayer) -> int:
        return min(self._part_of.get(n, 0) for n in layer.points)

    def scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer | None = None) -> Tensor:
        if self.parts is None or layer is None:
            return super().scores(x, y, score)
        start = self.start_of(layer)
        if start == 0:
            return super().scores(x, y, score)
        state = tuple((name, tuple(mask.nonzero().flatten().tolist()))
                      for name, mask in self.masker.removed.items() if name != layer.name)
        key = (layer.name, start, state, x.data_ptr(), x.shape[0])
        with torch.inference_mode():
            if self._cache is None or self._cache[0] != key:
                hidden = [self._run(x[i : i + self.batch_size], 0, start)
                          for i in range(0, x.shape[0], self.batch_size)]
                self._cache = (key, hidden)
                self.forward_equivalents += sum(self._cost[:start])
            hidden = self._cache[1]
            out = []
            for j, i in enumerate(range(0, x.shape[0], self.batch_size)):
                # a copy: a part may work in place on its input, the cache must survive it
                logits = self._run(_clone(hidden[j]), start)
                out.append(self._score(logits, y, i, score))
        self.forward_equivalents += sum(self._cost[start:])
        return self._finish(torch.cat(out))
