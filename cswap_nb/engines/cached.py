"""The α explorer's score cache (cswap_nb/METHOD.md §10): scores kept by network state and calibration class,
and an engine wrapper that answers from them and builds its engine only on the first miss."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..core.calibration import class_ranges
from ..core.units import Masker
from .base import EngineWrapper, ScoreEngine


class ScoreCache:
    """Calibration scores keyed by (network state, layer, tested units, calibration class).

    The state is the set of units already removed when a unit is tested. With the same
    model, calibration set and visiting order, two runs at different α pass through the
    same states until their first differing decision, so everything up to it is reused.
    Scores are kept class by class, so a candidate decided early (cswap_nb/METHOD.md §10) at one
    α reuses the classes it evaluated when another α needs more of them. :attr:`facts` keeps what
    the engine said of the model (which layers it scores on part of the calibration set, its name; and
    the first-order estimate that orders early decisions' first classes, by network state), so that a
    run whose every score is stored never builds an engine.
    """

    def __init__(self):
        self.store: dict[tuple, Tensor] = {}
        self.facts: dict[tuple, object] = {}
        self.hits = 0
        self.misses = 0

    def wrap(self, engine, masker=None, kind: str | None = None) -> "CachedEngine":
        """A :class:`CachedEngine` over ``engine``: an engine, or a function that builds one on the first
        miss (then give the session's ``masker`` and the engine option ``kind``, e.g.
        ``cache.wrap(session.build_engine, session.masker, session.config.engine)``)."""
        return CachedEngine(engine, self, masker, kind)


class CachedEngine(EngineWrapper):
    """A score engine whose results come from a :class:`ScoreCache` when they were computed before; the
    wrapped engine is built only when a score is missing. ``engine``: an engine, or a function that builds
    one (then ``masker``, the session's, and ``kind``, the engine option, are needed). What the engine says
    of itself (its name, path, fallbacks, whether it segments, whether it can slice or stack a layer) is
    asked once per cache and engine kind (:attr:`ScoreCache.facts`), so a run whose every score is stored
    never builds one."""

    def __init__(self, engine: ScoreEngine | Callable[[], ScoreEngine], cache: ScoreCache,
                 masker: Masker | None = None, kind: str | None = None):
        built = hasattr(engine, "scores")  # an engine (a ScoreEngine or a wrapper); else a function that builds one
        self._inner, self._build = (engine, None) if built else (None, engine)
        self.cache = cache
        self._rows: dict[tuple, list] = {}
        self._masker = engine.masker if built else masker
        self.kind = kind if kind is not None else (engine.name if built else None)
        if self._masker is None:
            raise ValueError("a CachedEngine built on first use needs the session's masker")

    @property
    def inner(self) -> ScoreEngine:
        """The wrapped engine, built now if it was not."""
        if self._inner is None:
            self._inner = self._build()
        return self._inner

    @property
    def built(self) -> bool:
        return self._inner is not None

    masker = property(lambda self: self._masker)
    name = property(lambda self: self._fact(("name",), lambda: self.inner.name))
    path = property(lambda self: self._fact(("path",), lambda: self.inner.path))
    fallback = property(lambda self: self._fact(("fallback",), lambda: self.inner.fallback))

    @property
    def layer_fallbacks(self) -> dict[str, str]:
        return self._fact(("layer_fallbacks",), lambda: self.inner.layer_fallbacks)

    @property
    def segmenting(self) -> bool:
        return self._fact(("segmenting",), lambda: self.inner.segmenting)

    @property
    def forward_equivalents(self) -> float:
        """The forward passes this run computed (0 when every score came from the cache)."""
        return self._inner.forward_equivalents if self._inner is not None else 0.0

    @property
    def compaction(self) -> dict | None:
        """What the engine's compaction did this run (None when no engine was built)."""
        return self._inner.compaction if self._inner is not None else None

    @property
    def local_samples(self) -> int | None:
        return self._inner.local_samples if self._inner is not None else None

    def _fact(self, key: tuple, compute):
        """What the engine answers for ``key``, asked once per cache (the answers depend on the model and
        the engine option; a key that depends on the network's state holds the state)."""
        facts, key = self.cache.facts, (self.kind, *key)
        if key not in facts:
            facts[key] = compute()
        return facts[key]

    def can_slice(self, layer, x: Tensor) -> bool:
        return self._fact(("can_slice", layer.name, tuple(x.shape)), lambda: self.inner.can_slice(layer, x))

    def can_stack(self, layer, x: Tensor) -> bool:
        return self._fact(("can_stack", layer.name, tuple(x.shape)), lambda: self.inner.can_stack(layer, x))

    def clear_stacked(self) -> None:
        if self._inner is not None:
            self._inner.clear_stacked()

    def predicted_harm(self, x: Tensor, y: Tensor, classes: list[int], score: str) -> dict | None:
        """The estimate, once per cache and network state (a later run whose every score is stored computes
        none). Computed here, from the masker's model, so that no engine is built for it."""
        return self._fact(("predicted_harm", score, self.masker.state(), tuple(x.shape)),
                          lambda: ScoreEngine.predicted_harm(self, x, y, classes, score))

    def _cached(self, key: tuple, rows, compute) -> Tensor:
        """Scores of ``rows`` (sample ranges; None: every sample) from the store, else computed and
        stored range by range."""
        store = self.cache.store
        if all((*key, r) in store for r in rows):
            self.cache.hits += 1
            return torch.cat([store[(*key, r)] for r in rows])
        self.cache.misses += 1
        value = compute()
        start = 0
        for a, b in rows:
            store[(*key, (a, b))] = value[start : start + b - a]
            start += b - a
        return value

    def _key(self, score: str, layer) -> tuple:
        return (score, layer.name if layer is not None else None, self.masker.state())

    def _class_rows(self, y: Tensor, rows) -> list[tuple[int, int]]:
        """``rows`` cut at class boundaries (classification), so that runs deciding at different α share
        their classes' scores."""
        memo = (y.data_ptr(), tuple(y.shape), tuple(rows))  # the same labels and rows every step of a run
        if memo not in self._rows:
            out = []
            for a, b in rows:
                ranges = class_ranges(y[a:b]) if not self.segmenting else None
                out.extend([(a, b)] if ranges is None else sorted((a + s, a + e) for _, s, e in ranges))
            self._rows[memo] = out
        return self._rows[memo]

    def scores(self, x: Tensor, y: Tensor, score: str, layer=None) -> Tensor:
        rows = self._class_rows(y, [(0, len(y))]) if layer is not None else [(0, len(y))]
        return self._cached(self._key(score, layer), rows, lambda: self.inner.scores(x, y, score, layer))

    def stack_rows(self, x: Tensor, y: Tensor, score: str, layer, others, rows, others_rows=None) -> None:
        """Score ahead (the wrapped engine's :meth:`~cswap_nb.engines.graph.GraphEngine.stack_rows`) unless the
        present candidate's rows are stored: a re-run then finds the next candidates' rows stored too."""
        key = self._key(score, layer)
        if not all((*key, r) in self.cache.store for r in self._class_rows(y, rows)):
            self.inner.stack_rows(x, y, score, layer, others, rows, others_rows)

    def rows_scores(self, x: Tensor, y: Tensor, score: str, layer, rows) -> Tensor:
        split = self._class_rows(y, rows)
        return self._cached(self._key(score, layer), split, lambda: self.inner.rows_scores(x, y, score, layer, rows))


__all__ = ["ScoreCache", "CachedEngine"]
