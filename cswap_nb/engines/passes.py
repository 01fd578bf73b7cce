"""Engines that score the calibration set with forward passes of the model, whole or in parts.

* :class:`FullPasses` (``engine="naive"``, and every engine's last resort): one full forward pass over the
  calibration set per tested unit.
* :class:`PartsEngine` (``engine="parts"``, and ``"fast"``'s fallback for a model ``torch.fx`` cannot trace):
  the network is split into a sequence of parts (stem layers, residual blocks, head). While one unit layer
  is analysed only its own masks change, so the input of the first part that contains one of its mask
  points is computed once and cached; each candidate then runs only the rest of the network. The cache is
  keyed by the mask state of every other layer, so it is recomputed whenever the network before that part
  changes. A model whose forward cannot be split this way raises :class:`PartsUnavailable`.
* :class:`cswap_nb.engines.graph.GraphEngine` (``engine="fast"``): the model's ``torch.fx`` graph with a
  cache of intermediates and a linear correction (see :mod:`cswap_nb.engines.graph`).

:func:`cswap_nb.engines.build.make_engine` composes them: the graph, else the parts, else full passes. With
``compaction="on"`` the graph engine is wrapped in :class:`cswap_nb.engines.compact.CompactingEngine`, which
scores a layer's candidates on a copy with the other layers' removed units sliced out.

All take the naive engine's decisions: their scores differ only by float reassociation (the same
modules run on the same inputs; the graph engine's correction subtracts a channel's contribution
instead of recomputing a layer). ``python -m cswap_nb bench`` compares decisions and times.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..core.causal import true_class_scores
from ..core.units import Masker, UnitLayer
from ..models.families import family_of
from .base import SEGMENTATION_PIXELS, Rows, ScoreEngine  # noqa: F401 (re-exported)

PartModules = tuple[str, Callable[[Tensor], Tensor], list[str]]  # (name, function, module names inside)


def take_rows(v: Tensor, rows: Rows, copy: bool = False) -> Tensor:
    """The rows ``rows`` of ``v`` (dim 0): a view for one range, unless ``copy``; a new tensor for several."""
    if len(rows) == 1:
        a, b = rows[0]
        return v[a:b].clone() if copy else v[a:b]
    return torch.cat([v[a:b] for a, b in rows])


def merge_rows(ranges) -> Rows:
    """``ranges`` (``(start, stop)`` pairs, in order) with each range that starts where the previous one stops
    joined to it."""
    out: list[list[int]] = []
    for a, b in ranges:
        if out and out[-1][1] == a:
            out[-1][1] = b
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


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


class FullPasses(ScoreEngine):
    """One full forward pass per call (``engine="naive"``, and every engine's last resort).

    ``slicing``: whether :meth:`rows_scores` may score part of the calibration set (a pass over those samples,
    for the early decisions of cswap_nb/METHOD.md §10). The naive engine, the reference, does not: it scores
    every candidate on every sample.
    """

    path = "full"

    def __init__(self, model: nn.Module, masker: Masker, batch_size: int = 512, name: str = "naive",
                 fallback: str | None = None, slicing: bool = True):
        super().__init__(model, masker, batch_size, name, fallback)
        self.slicing = slicing

    def scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer | None = None) -> Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], self.batch_size):
                out.append(self._score(self.model(x[i : i + self.batch_size]), y, i, score))
        self._work += 1.0
        return self._finish(torch.cat(out))

    def can_slice(self, layer: UnitLayer, x: Tensor) -> bool:
        """Whether :meth:`rows_scores` computes only the rows asked for (classification scores)."""
        return self.slicing and self.masks is None

    def rows_scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, rows: Rows) -> Tensor:
        """The scores of the calibration samples in ``rows`` (``(start, stop)`` ranges) alone: a pass
        over those samples."""
        if self.masks is not None:
            raise ValueError("rows_scores scores classification outputs; segmentation scores need every image")
        with torch.inference_mode():
            q = true_class_scores(self.model(take_rows(x, rows)), take_rows(y, rows), score)
        self._work += row_count(rows) / x.shape[0]
        return q


class PartsUnavailable(Exception):
    """The model is not a sequence of parts that reproduces its forward (the reason is the message)."""


class PartsEngine(ScoreEngine):
    """Cache the input of the first part touched by the layer under analysis (module docstring).

    Raises :class:`PartsUnavailable` for a model that is not a supported sequence of parts. A call that the
    parts cannot shorten (no candidate, or a layer in the first part) goes to :attr:`full`, a
    :class:`FullPasses` on the same model.
    """

    path = "parts"

    def __init__(self, model: nn.Module, masker: Masker, example: Tensor, batch_size: int = 512,
                 name: str = "parts", fallback: str | None = None):
        super().__init__(model, masker, batch_size, name, fallback)
        self.parts = sequential_parts(model)
        if self.parts is None:
            raise PartsUnavailable(f"{type(model).__name__} is not a supported sequence of parts")
        self._check(example)
        self.full = FullPasses(model, masker, batch_size, name)
        self._cache: tuple | None = None
        self._cost = self._part_costs(example)
        self._part_of = {}
        for i, (_, _, inside) in enumerate(self.parts):
            for n in inside:
                self._part_of.setdefault(n, i)

    def rows_scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, rows: Rows) -> Tensor:
        """A pass of the whole network over ``rows`` (:meth:`FullPasses.rows_scores`); the parts' cache holds
        whole calibration sets (:meth:`can_slice` is False, so the loop does not ask)."""
        return self.full.rows_scores(x, y, score, layer, rows)

    def _run(self, x: Tensor, start: int, stop: int | None = None) -> Tensor:
        for _, fn, _ in self.parts[start:stop]:
            x = fn(x)
        return x

    def _check(self, example: Tensor) -> None:
        with torch.inference_mode():
            ref = self.model(example)
            got = self._run(example, 0)
        if got.shape != ref.shape or not torch.allclose(got, ref, atol=1e-5, rtol=1e-4):
            raise PartsUnavailable("the split forward does not reproduce model(x)")

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

    def start_of(self, layer: UnitLayer) -> int:
        return min(self._part_of.get(n, 0) for n in layer.points)

    def scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer | None = None) -> Tensor:
        start = 0 if layer is None else self.start_of(layer)
        if start == 0:
            return self.full.scores(x, y, score)
        key = (layer.name, start, self.masker.state(exclude=layer.name), x.data_ptr(), x.shape[0])
        with torch.inference_mode():
            if self._cache is None or self._cache[0] != key:
                hidden = [self._run(x[i : i + self.batch_size], 0, start)
                          for i in range(0, x.shape[0], self.batch_size)]
                self._cache = (key, hidden)
                self._work += sum(self._cost[:start])
            hidden = self._cache[1]
            out = []
            for j, i in enumerate(range(0, x.shape[0], self.batch_size)):
                # a copy: a part may work in place on its input, the cache must survive it
                logits = self._run(_clone(hidden[j]), start)
                out.append(self._score(logits, y, i, score))
        self._work += sum(self._cost[start:])
        return self._finish(torch.cat(out))
