"""Compaction while pruning (cswap_nb/METHOD.md §10): score candidates on a copy of the network from which
the units already removed in *other* layers are physically sliced out.

A removed unit is masked to zero, so every later candidate's pass still multiplies its channels. Under the
default ``layer_order="output-to-input"`` the layers downstream of the layer under test were all decided
before it, and a candidate's pass runs through that final downstream network. :class:`CompactingEngine`
wraps the engine of the session's (masked) network: when the analysis moves to a new layer with enough
candidates left, it prunes a copy of the dense network by the removals of every other layer
(:func:`~cswap_nb.core.surgery.remove_units`, the same surgery as the final result), builds a graph engine
on that copy and scores the new layer's candidates there. Masked equals pruned (checked on every result),
so the scores differ from the masked network's only by float reassociation and the labels are the same.
Whatever it cannot serve exactly from the compact copy (a layer whose own units were sliced out, a removal
undone by the guard, a model the surgery or the graph engine cannot handle) is scored by the wrapped
engine.
"""
from __future__ import annotations

import bisect
import copy
import dataclasses
import time
from typing import Callable

import torch
from torch import Tensor, nn

from ..core.layout import to_channels_last
from ..core.result import equivalence_tolerance
from ..core.surgery import CutSurgery, count_macs, remove_units
from ..core.units import Footprints, Masker, UnitLayer, execution_order, unit_channels, weight_positions
from .graph import GraphEngine
from .base import EngineWrapper, Rows, ScoreEngine


def _remapped(layer: UnitLayer, gone: dict[str, list[int]]) -> UnitLayer:
    """``layer`` in a copy from which the channels ``gone`` (module name -> sorted channel indices) were sliced:
    a mask point shared with a sliced layer (a norm after a concatenation: DenseNet, DAPPM) numbers its
    channels without them, so each index drops by the removed channels below it."""
    if layer.kind == "heads" or not any(mod in gone for mod in layer.points):
        return layer
    points = {}
    for mod, per_unit in layer.points.items():
        cut = gone.get(mod)
        points[mod] = per_unit if not cut else [
            [i - bisect.bisect_left(cut, i) for i in c] if isinstance(c, list) else c - bisect.bisect_left(cut, c)
            for c in per_unit]
    return dataclasses.replace(layer, points=points)


def mac_share_estimate(footprints: Footprints | None, template: nn.Module, example: Tensor
                       ) -> Callable[[dict[str, list[int]]], float | None] | None:
    """A function of a cut (layer name -> removed units): the share of the dense network's conv and linear
    multiply-accumulates a copy with that cut would keep, counted from ``footprints`` without a surgery
    (:meth:`Footprints.macs_after`); None where the footprints are unknown. With ``after`` (a layer's
    :attr:`~cswap_nb.core.units.UnitLayer.position`), only the weights of the modules run after that layer
    count (what a candidate's pass recomputes), still over the whole dense network's MACs. The weights'
    positions and their modules' execution order are measured on the first call (one pass of one sample each)."""
    if footprints is None:
        return None
    memo: dict = {}

    def share(cut: dict[str, list[int]], after: int | None = None) -> float | None:
        if "positions" not in memo:
            memo["positions"] = weight_positions(template, example[:1])
            memo["dense"] = footprints.macs_after({}, memo["positions"])
            names = {m: n for n, m in template.named_modules()}
            memo["order"] = {f"{names[m]}.weight": i for m, i in execution_order(template, example[:1]).items()}
        positions = memo["positions"]
        if after is not None:
            order = memo["order"]
            positions = {name: n for name, n in positions.items() if order.get(name, -1) > after}
        got = footprints.macs_after(cut, positions)
        return None if got is None or not memo["dense"] else got / memo["dense"]

    return share


class _Compact:
    """One compact copy: the network with ``sliced`` (layer name -> removed unit indices) cut out, its
    graph engine and the masker that masks what was removed since (in layers with nothing sliced)."""

    def __init__(self, template: nn.Module, example: Tensor, layers: dict[str, UnitLayer],
                 sliced: dict[str, list[int]], macs_share: Callable[[nn.Module, dict], float],
                 segmentation: tuple | None = None, surgery: CutSurgery | None = None,
                 checked_by: GraphEngine | None = None):
        self.sliced = {name: tuple(units) for name, units in sliced.items() if units}
        removal = {n: list(u) for n, u in self.sliced.items()}
        model = copy.deepcopy(template)
        model = surgery.apply(model, example, removal) if surgery is not None else remove_units(model, example, removal)
        to_channels_last(model)  # the surgery's new weights are contiguous: the session's layout rule again
        # the layers with nothing sliced keep their unit indices; their channels are renumbered where they
        # share a mask point with a sliced layer
        gone: dict[str, set[int]] = {}
        for name, units in self.sliced.items():
            if layers[name].kind != "heads":
                for mod, per_unit in layers[name].points.items():
                    gone.setdefault(mod, set()).update(unit_channels(per_unit, units))
        cut = {mod: sorted(chs) for mod, chs in gone.items()}
        self.layers = {name: _remapped(layer, cut) for name, layer in layers.items() if name not in self.sliced}
        self.masker = Masker(model, list(self.layers.values()))
        self.engine = GraphEngine(model, self.masker, example, plan_now=False, checked_by=checked_by)
        if segmentation is not None:
            self.engine.segmentation(*segmentation)
        self.share = macs_share(model, removal)  # its MACs over the dense network's: its passes' cost in dense passes

    def serves(self, removed: dict[str, tuple[int, ...]], layer: UnitLayer | None) -> bool:
        """Whether the session's removed units ``removed`` (:attr:`Masker.removed_units`) are this copy plus
        removals in layers with nothing sliced, and ``layer`` (the layer under test) has nothing sliced."""
        if layer is not None and layer.name in self.sliced:
            return False
        return all(removed[name] == units for name, units in self.sliced.items())

    def sync(self, removed: dict[str, tuple[int, ...]]) -> None:
        """Mask in the copy what the session's masks remove in the layers with nothing sliced."""
        mine = self.masker.removed_units
        for name in self.layers:
            now = removed[name]
            if now != mine[name]:  # only the units that differ (a step changes one): set costs per unit
                had, want = set(mine[name]), set(now)
                self.masker.set(name, sorted(had - want), False)
                self.masker.set(name, sorted(want - had), True)


class CompactingEngine(EngineWrapper):
    """``engine="fast"`` with ``compaction="on"``: the wrapped engine, or a compact copy's graph engine for
    the layers where one pays (module docstring). The decision to build a copy is taken when a layer is
    first scored: some unit of another layer was removed since the last copy, the layer has at least
    :attr:`min_units` units left to test, the MACs the first copy drops, over the layer's candidates left, are
    worth at least :attr:`copy_cost` candidates (counted from the cut: ``estimate``, :func:`mac_share_estimate`),
    and a later copy either drops at least as much from the passes of the layer's candidates (the modules run
    after it, :meth:`_gain`) or stays within :attr:`time_share` of the analysis. Each copy is cut in one sweep
    (:class:`~cswap_nb.core.surgery.CutSurgery`, read once from the dense network).
    :attr:`rebuilds` counts the copies built, :attr:`compact_seconds` their cost (surgery, tracing, checks),
    :attr:`skipped` the layers where a copy, or the check of the layer's plan on the last copy, would have
    overrun that share (the last copy then scores them with the newer removals masked, or the wrapped engine
    does)."""

    min_units = 32
    """A copy costs a surgery and a traced graph (0.1-0.5 s on the zoo's models): not worth it for a layer
    with few candidates."""

    copy_cost: float | None = 16.0
    """What the first copy's build and plan checks cost, in candidates scored at the dense width: it is built
    only where the share of the dense MACs it drops, times the layer's candidates left, is at least this
    (:meth:`_slices_enough`); None: no such limit."""

    one_sweep: bool = True
    """Cut each copy in one sweep (:class:`~cswap_nb.core.surgery.CutSurgery`, read once from the dense network);
    False: layer after layer (:func:`~cswap_nb.core.surgery.remove_units`), as before (``benchmarks/engine_levers.py``)."""

    count_later: bool = True
    """Decide later copies and a kept copy's checks by the MACs counted downstream (:meth:`_gain`); False: by
    :attr:`time_share` alone, as before."""

    check_cost: float = 4.0
    """What a kept copy's check of its plan for a new layer costs, in candidates scored at the dense width: the copy
    scores the layer only where the MACs its cut drops from the layer's candidates' passes (:meth:`_gain`) are
    worth at least this."""

    adopt_plans: bool = True
    """A copy's graph takes the masked network's checked plan of a layer where both are the same nodes by name
    (:func:`cswap_nb.engines.graph._adopted_plan`); False: it checks each plan itself,
    as before (``benchmarks/engine_levers.py``)."""

    time_share: float | None = 0.1
    """After the first copy, another is built (or the last one checks its plan for a new layer) only while all
    copies and their checks, that one included (at their mean cost so far), take at most this share of the
    time since the engine's first call; None: no limit. A network of
    many small layers (DenseNet121: a copy costs ~1.3 s there, 120 layers) would otherwise spend more time on
    copies than it saves: at 64 px and 4 images a class, compaction without this limit did 2,383 tests in 60 s
    against 4,199 without compaction."""

    def __init__(self, inner: ScoreEngine, template: nn.Module, example: Tensor, dense_macs: int | None = None,
                 estimate: Callable[[dict[str, list[int]]], float | None] | None = None):
        super().__init__(inner)
        self._estimate = estimate  # a cut -> the share of the dense MACs a copy keeps (mac_share_estimate)
        self._segmentation: tuple | None = None  # (masks, pairs) handed to each copy's engine
        self.template, self.example = template, example
        self._compact_work = 0.0
        self._compact: _Compact | None = None
        self._layer: str | None = None  # the layer scored last
        self._use: _Compact | None = None  # the copy that scores it (None: the wrapped engine)
        # the dense network's MACs (the session counted them at set-up: ``dense_macs``)
        self._dense_macs = dense_macs if dense_macs is not None else count_macs(template, example)
        self.rebuilds, self.compact_seconds, self.skipped = 0, 0.0, 0
        self._plan_checks = (0, 0.0)  # the layers' plan checks on copies: how many, their seconds
        self._over = False  # whether the time share refused a copy or a check for the present layer
        self._started: float | None = None  # the engine's first call (time_share's clock)
        self.failed: str | None = None  # why no copy could be built (then the wrapped engine scores everything)
        self._copy_fallbacks: dict[str, str] = {}  # layers earlier copies' graphs could not plan
        self._surgery: CutSurgery | bool | None = None  # read on the first copy; False: copies cut layer by layer
        self._estimate_agrees: bool | None = None  # whether the estimate equals the counted share (_share)

    @property
    def layer_fallbacks(self) -> dict[str, str]:
        """The wrapped engine's layers on full passes, and those a copy's graph could not plan."""
        return {**self.inner.layer_fallbacks, **self._copy_fallbacks, **self._current_fallbacks()}

    def _current_fallbacks(self) -> dict[str, str]:
        return {name: f"in a compact copy: {why}" for c in (self._compact, self._use) if c is not None
                for name, why in c.engine.layer_fallbacks.items()}

    def _keep_fallbacks(self) -> None:
        self._copy_fallbacks.update(self._current_fallbacks())

    @property
    def forward_equivalents(self) -> float:
        """The work so far in dense passes over the calibration set: the wrapped engine's, plus each compact
        copy's weighted by its MACs over the dense network's."""
        return self.inner.forward_equivalents + self._compact_work

    @property
    def compaction(self) -> dict:
        """What compaction did: the compact copies built, the seconds they cost, why none could be built."""
        return {"copies": self.rebuilds, "seconds": round(self.compact_seconds, 3), "failed": self.failed,
                "skipped": self.skipped}

    def segmentation(self, masks: Tensor, pairs: Tensor | None) -> None:
        self.inner.segmentation(masks, pairs)
        self._segmentation = (masks, pairs)

    # -- which engine scores a call ------------------------------------------------------------------------
    def _worth(self, layer: UnitLayer) -> bool:
        removed = self.masker.removed
        if int((~removed[layer.name]).sum()) < self.min_units:
            return False
        have = self._compact.sliced if self._compact is not None else {}
        if not any(units != have.get(name, ())
                   for name, units in self.masker.removed_units.items() if name != layer.name and units):
            return False
        if self._compact is not None:
            gain = self._gain(layer, self._serving(layer))
            if gain is not None and gain >= self.copy_cost:  # counted: the MACs it drops downstream pay for it
                return True
        if not self._slices_enough(layer):
            return False
        return self._affordable(self.compact_seconds / max(1, self.rebuilds))

    def _serving(self, layer: UnitLayer) -> dict[str, tuple[int, ...]]:
        """What the network that would score ``layer`` without a new copy has sliced: the last copy's cut where it
        serves the layer, else nothing (the masked network)."""
        c = self._compact
        return c.sliced if c is not None and c.serves(self.masker.removed_units, layer) else {}

    def _gain(self, layer: UnitLayer, than: dict[str, tuple[int, ...]], to: dict | None = None) -> float | None:
        """Counted, in dense passes over the calibration set: the MACs that the layer's candidates left would not
        multiply in their passes (the modules run after the layer) on a network cut by ``to`` (default: a new copy,
        cut by every other layer's removals) rather than on one cut by ``than``. None where it cannot be counted
        (then :attr:`time_share` decides)."""
        if self._estimate is None or self.copy_cost is None or not self.count_later:
            return None
        removed = self.masker.removed_units
        if to is None:
            to = {n: u for n, u in removed.items() if n != layer.name and u}
        now = self._estimate({n: list(u) for n, u in than.items()}, layer.position)
        new = self._estimate({n: list(u) for n, u in to.items()}, layer.position)
        if now is None or new is None:
            return None
        return (now - new) * (layer.size - len(removed[layer.name]))

    def _slices_enough(self, layer: UnitLayer) -> bool:
        """Whether the first copy, for ``layer``, drops enough: the share of the dense network's MACs it drops,
        times the layer's candidates left, at least :attr:`copy_cost`. The MACs are counted from the cut without
        a surgery (``estimate``); True where they cannot be counted, and for later copies, which answer to
        :meth:`_gain` and :attr:`time_share`. Counted, not timed, so that the same run takes the same decisions. The first copy is
        exempt from the time share, and once built every later layer checks its plan on a copy: on a random
        DenseNet121 at 64 px it was built where it sliced almost nothing, and its checks cost more than it
        saved (METHOD.md §10)."""
        if self._estimate is None or self.copy_cost is None or self._compact is not None:
            return True  # the first copy only: later ones answer to the time share
        removed = self.masker.removed_units
        share = self._estimate({name: list(units) for name, units in removed.items() if name != layer.name})
        if share is None:
            return True
        left = self.masker.layers[layer.name].size - len(removed[layer.name])
        return (1.0 - share) * left >= self.copy_cost

    def _affordable(self, cost: float) -> bool:
        """Whether the copies may spend ``cost`` more seconds within :attr:`time_share` (the first copy may)."""
        if not self.rebuilds or self.time_share is None:
            return True
        if self.compact_seconds + cost <= self.time_share * (time.perf_counter() - self._started):
            return True
        self._over = True  # counted once per layer in skipped
        return False

    def _checked_on_copy(self, c: "_Compact", layer: UnitLayer, built: bool) -> bool:
        """Whether the copy ``c`` scores ``layer``: its graph checks the layer's plan first (timed with the
        copies' cost), which a copy kept from an earlier layer does where its cut drops at least
        :attr:`check_cost` from the layer's candidates' passes (:meth:`_gain`), or within the time share."""
        checks = self._plan_checks
        if not built:
            gain = self._gain(layer, {}, c.sliced)
            pays = gain is not None and gain >= self.check_cost  # counted: the MACs it drops downstream pay for it
            if not pays and not self._affordable(checks[1] / checks[0] if checks[0] else 0.0):
                return False
        t0 = time.perf_counter()
        try:
            c.engine.prepare(c.layers[layer.name])
        finally:
            spent = time.perf_counter() - t0
            self.compact_seconds += spent
            self._plan_checks = (checks[0] + 1, checks[1] + spent)
        return True

    def _build(self, layer: UnitLayer) -> None:
        t0 = time.perf_counter()
        removed = self.masker.removed_units
        sliced = {name: units for name, units in self.masker.pruned().items() if name != layer.name}
        try:
            if self._surgery is None:
                self._surgery = self._new_surgery() if self.one_sweep else False
            try:
                c = self._copy(sliced, removed, self._surgery or None)
            except Exception:  # noqa: BLE001 - the one-sweep surgery failed here: layer by layer from now on
                if not self._surgery:
                    raise
                self._surgery = False
                c = self._copy(sliced, removed, None)
            self._keep_fallbacks()
            self._compact = c
            self.rebuilds += 1
        except Exception as exc:  # noqa: BLE001 - any failure of a copy leaves the scoring to the wrapped engine
            self._drop(exc)
        self.compact_seconds += time.perf_counter() - t0

    def _new_surgery(self) -> CutSurgery | bool:
        """The surgery that cuts each copy in one sweep (:class:`~cswap_nb.core.surgery.CutSurgery`), read once
        from the dense network; False where it cannot be read (each copy is then cut layer by layer)."""
        try:
            return CutSurgery(self.template, self.example, list(self.masker.layers))
        except Exception:  # noqa: BLE001
            return False

    def _copy(self, sliced: dict[str, tuple[int, ...]], removed: dict[str, tuple[int, ...]],
              surgery: CutSurgery | None) -> _Compact:
        """A compact copy without ``sliced``, masked as ``removed`` says, checked against the masked network."""
        c = _Compact(self.template, self.example, self.masker.layers, sliced, self._share, self._segmentation,
                     surgery, self.inner if isinstance(self.inner, GraphEngine) and self.adopt_plans else None)
        c.sync(removed)
        # the copy with the present masks must compute what the masked network computes
        with torch.inference_mode():
            got, want = c.engine.model(self.example), self.inner.model(self.example)
        if not torch.allclose(got, want, rtol=1e-4, atol=equivalence_tolerance(float(want.abs().max()), 1e-4)):
            raise ValueError(f"the copy differs from the masked network by {float((got - want).abs().max()):.3g}")
        return c

    def _drop(self, exc: Exception) -> None:
        """Score everything from now on with the wrapped engine, saying why (:attr:`compaction`)."""
        self.failed = f"no compact copy ({type(exc).__name__}: {exc})"[:300]
        self._keep_fallbacks()
        self._compact = self._use = None

    def _share(self, model: nn.Module, cut: dict[str, list[int]]) -> float:
        """A copy's MACs over the dense network's, by a pass of the copy under torch's FLOP counter; counted from
        the cut instead (``estimate``: conv and linear weights only, no surgery, no pass) once the first copy
        has shown that both counts agree (a network whose every MAC is in such a weight: not a ViT's attention
        products)."""
        got = self._estimate(cut) if self._estimate is not None and self._estimate_agrees is not False else None
        if got is not None and self._estimate_agrees:
            return got
        counted = count_macs(model, self.example) / max(1, self._dense_macs)
        if self._estimate_agrees is None and got is not None:
            self._estimate_agrees = abs(got - counted) <= 1e-9
        return counted

    def _engine_for(self, layer: UnitLayer | None) -> ScoreEngine:
        if self._started is None:
            self._started = time.perf_counter()
        if self.failed is not None or layer is None:
            return self.inner
        if layer.name != self._layer:  # a new layer: build a copy where one pays, else keep the last if it serves
            self._layer, self._over = layer.name, False
            built = self._worth(layer)
            if built:
                self._build(layer)
            c = self._compact
            self._use = c if c is not None and c.serves(self.masker.removed_units, layer) else None
            if c is not None and self._use is None:
                self._compact = None  # it slices this layer, or a removal it sliced was undone
            if self._use is not None and not self._checked_on_copy(self._use, layer, built):
                self._use = None  # the masked network's engine, whose plan for the layer is checked
            self.skipped += self._over
        c = self._use
        if c is None:
            return self.inner
        if not c.serves(self.masker.removed_units, layer):  # the guard undid a sliced removal mid-layer
            self._use = self._compact = None
            return self.inner
        try:
            c.sync(self.masker.removed_units)
        except Exception as exc:  # noqa: BLE001
            self._drop(exc)
            return self.inner
        return c.engine

    def _counted(self, engine: ScoreEngine, call):
        """Run ``call(engine)``, adding a copy's work to :attr:`forward_equivalents` in dense passes."""
        if engine is self.inner:
            return call(engine)
        before = engine.forward_equivalents
        out = call(engine)
        self._compact_work += (engine.forward_equivalents - before) * self._use.share
        return out

    def _layer_in(self, engine: ScoreEngine, layer: UnitLayer) -> UnitLayer:
        return layer if engine is self.inner else self._use.layers[layer.name]

    # -- the engine interface ------------------------------------------------------------------------------
    def scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer | None = None) -> Tensor:
        e = self._engine_for(layer)
        return self._counted(e, lambda e: e.scores(x, y, score, None if layer is None else self._layer_in(e, layer)))

    def can_slice(self, layer: UnitLayer, x: Tensor) -> bool:
        """The wrapped engine's answer: a copy that cannot score part of the calibration set leaves those
        calls to the wrapped engine (:meth:`rows_scores`), so the answer does not change with the copies."""
        return self.inner.can_slice(layer, x)

    def _rows_engine(self, layer: UnitLayer, x: Tensor) -> ScoreEngine:
        e = self._engine_for(layer)
        return e if e is self.inner or e.can_slice(self._layer_in(e, layer), x) else self.inner

    def rows_scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, rows: Rows) -> Tensor:
        e = self._rows_engine(layer, x)
        return self._counted(e, lambda e: e.rows_scores(x, y, score, self._layer_in(e, layer), rows))

    def can_stack(self, layer: UnitLayer, x: Tensor) -> bool:
        return self.inner.can_stack(layer, x)

    def stack_rows(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, others: list[list[int]],
                   rows: Rows, others_rows: list[Rows] | None = None) -> None:
        """Score ahead on the engine that scores the layer, where it can (a speculation left out costs no
        decision: :meth:`rows_scores` then computes the rows)."""
        e = self._rows_engine(layer, x)
        if e.can_stack(self._layer_in(e, layer), x):
            self._counted(e, lambda e: e.stack_rows(x, y, score, self._layer_in(e, layer), others, rows,
                                                    others_rows))

    def clear_stacked(self) -> None:
        self.inner.clear_stacked()
        if self._compact is not None:
            self._compact.engine.clear_stacked()
