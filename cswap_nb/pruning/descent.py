"""Search strategies (cswap_nb/METHOD.md §1): progressive descent (C-SWAP), rank-and-prune, greedy.

* :func:`progressive` (C-SWAP): each unit is visited once, in a fixed order (layers from
  the output towards the input, weakest L1 filter norm first inside a layer), and tested
  *on the current, already pruned network*: Neutral/Detrimental units stay removed at
  once, Critical ones are restored. O(U) forward passes.
  With a :class:`Guard` (``max_drop=``), the validation metric is checked after every layer
  and the loop stops, undoing the layer's removals back to the bound, once it falls too far.
* :func:`rank_and_prune`: score every unit once (a criterion), rank, cut to a target.
* :func:`greedy`: re-test every remaining unit before each removal. O(U^2) passes.

The iterative strategies are generators yielding one record per step, so a notebook can
plot live, a widget can update and a test can inspect every decision.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..core.calibration import class_ranges  # noqa: F401 (re-exported)
from ..core.causal import CRITICAL, Verdict, as_compared, decide_unit, group_pvalues, verdict_of
from ..core.config import LAYER_ORDERS, REFERENCES, UNIT_ORDERS, CSwapConfig  # noqa: F401 (re-exported)
from ..engines.base import ScoreEngine
from ..engines.passes import merge_rows
from ..core.units import Masker, UnitLayer


def group_size_of(layer: UnitLayer, cfg: CSwapConfig) -> int:
    """How many units of ``layer`` are tested together under ``cfg`` (see :class:`CSwapConfig`)."""
    if layer.size <= cfg.group_threshold:
        return 1
    return layer.auto_group if cfg.group_size is None else int(cfg.group_size)


def visiting_plan(layers: list[UnitLayer], cfg: CSwapConfig) -> list[tuple[UnitLayer, list[int]]]:
    """The fixed order of the progressive loop: (layer, units tested together) pairs."""
    ordered = sorted(layers, key=lambda layer: layer.position, reverse=cfg.layer_order == "output-to-input")
    gen = torch.Generator().manual_seed(cfg.seed)
    plan = []
    for layer in ordered:
        if cfg.order == "magnitude":
            units = torch.argsort(layer.magnitude, stable=True).tolist()
        else:
            units = torch.randperm(layer.size, generator=gen).tolist()
        g = group_size_of(layer, cfg)
        plan.extend((layer, units[i : i + g]) for i in range(0, len(units), g))
    return plan


class Guard:
    """The ``max_drop`` guard of the progressive loop (cswap_nb/METHOD.md §3).

    ``metric()`` measures the current (masked) network on a validation split, in points (accuracy
    or mIoU, %); ``dense`` is the dense network's value. After each layer in which units were
    removed, :meth:`after_layer` measures the network once. While the drop ``dense - metric`` stays
    within ``max_drop`` the loop goes on. Once it exceeds it, the layer's removals are undone from
    the last one back to the longest prefix of them that is within the bound (a binary search over
    prefixes, ``log2`` of the layer's removals in measurements; it assumes the metric falls as more
    of the layer is removed), the restored steps get ``pruned=False`` and a note, and the loop
    stops: every unit not yet visited is kept. :attr:`report` says what happened.
    """

    def __init__(self, metric: Callable[[], float], dense: float, max_drop: float):
        self.metric, self.dense, self.max_drop = metric, float(dense), float(max_drop)
        self.checks = 0
        self.last = self.dense
        self.report: dict = {"max_drop": self.max_drop, "metric_dense": self.dense, "metric_last_check": self.dense,
                             "checks": 0, "stopped": False, "stopped_in_layer": None, "restored_units": 0,
                             "unvisited_units": 0}

    def _measure(self) -> float:
        self.checks += 1
        return float(self.metric())

    def within(self, value: float) -> bool:
        return self.dense - value <= self.max_drop + 1e-9

    def after_layer(self, masker: Masker, layer: UnitLayer, records: list[dict], unvisited: int) -> bool:
        """Check the bound after ``layer`` (``records``: its steps); False: stop the loop."""
        removed = [r for r in records if r["pruned"]]
        if removed:
            value = self._measure()
            if not self.within(value):
                self._roll_back(masker, layer, removed)
                self.report.update(stopped=True, stopped_in_layer=layer.name, unvisited_units=unvisited)
                self.report.update(checks=self.checks, metric_last_check=self.last)
                return False
            self.last = value
        self.report.update(checks=self.checks, metric_last_check=self.last)
        return True

    def _roll_back(self, masker: Masker, layer: UnitLayer, removed: list[dict]) -> None:
        def units(r: dict) -> list[int]:
            return list(r["unit"]) if isinstance(r["unit"], list) else [r["unit"]]

        def keep_prefix(j: int) -> None:
            for i, r in enumerate(removed):
                masker.set(layer.name, units(r), i < j)

        lo, hi = 0, len(removed)  # the prefix of length lo is within the bound (the previous check), hi is not
        best = self.last
        while hi - lo > 1:
            mid = (lo + hi) // 2
            keep_prefix(mid)
            value = self._measure()
            if self.within(value):
                lo, best = mid, value
            else:
                hi = mid
        keep_prefix(lo)
        self.last = best
        for r in removed[lo:]:
            r["pruned"] = False
            r["note"] = (f"restored by the guard: the validation metric fell more than max_drop={self.max_drop:g} "
                         "points below the dense model's")
        self.report["restored_units"] = sum(len(units(r)) for r in removed[lo:])


class ClassByClass:
    """Decide a candidate as soon as one class decides it (cswap_nb/METHOD.md §10).

    A unit is critical as soon as one class's test rejects; the classes not evaluated yet cannot change
    that (:func:`~cswap_nb.core.causal.verdict_of`). So a candidate is first scored on :attr:`first` classes
    alone: those it is most likely to hurt, by the p-values of "removal lowers q" when each class was last
    evaluated (the candidates of a layer tend to hurt the same classes) and by a first-order estimate of its
    harm to each class (:func:`~cswap_nb.core.foresight.predicted_harm`). If they do not decide it, it is
    scored on the other classes' samples (the first classes' scores are kept) and gets exactly the full
    evaluation's verdict (neutral and detrimental always need every class). The first stage pays only while it often decides: when fewer than
    :attr:`threshold` of the recent candidates were decided by their first classes (a running average,
    counted also on candidates scored whole), a candidate is scored whole at once. Where the engine
    can, the first classes of the next candidates of a layer are scored in the same pass, as if the
    present one were restored (:meth:`~cswap_nb.engines.graph.GraphEngine.stack_rows`; the engine hands a
    result only to the exact mask state it was computed for).

    For a unit decided early, ``p_lower``, ``p_raise`` and ``worst_class`` are computed with the
    classes not evaluated at p = 1, and ``effect`` is the mean over the evaluated samples; the record's
    ``classes`` lists the classes evaluated and ``samples`` how many calibration samples were scored.
    ``enabled`` is False (every candidate scored whole) with ``evaluation="full"``, ``inference="general"``,
    segmentation, or a calibration set whose classes are not contiguous; an engine that cannot score part of
    the set (:meth:`~cswap_nb.engines.base.ScoreEngine.can_slice`: the ``"naive"`` reference, the family's
    parts) scores every candidate whole too.
    """

    threshold = 0.3  # the share of candidates decided by their first classes below which none is tried
    max_stack = 8  # candidates scored together on their first classes, at most
    first = 2  # classes scored in the first stage (2, chosen over 3 on the shipped checkpoints: METHOD.md §10)
    chain_rows = 64  # candidates chained in one pass of at most this many rows (_whole)
    chain_floor = 0.25  # a chained state is scored while the chance that the chain reaches it is at least this

    def __init__(self, engine: ScoreEngine, x: Tensor, y: Tensor, cfg: CSwapConfig):
        self.engine, self.x, self.y, self.cfg = engine, x, y, cfg
        self.ranges = class_ranges(y) if cfg.inference == "per-class" else None
        self.enabled = (cfg.evaluation == "early" and self.ranges is not None and len(self.ranges) > 1
                        and not engine.segmenting)
        self.classes = [c for c, _, _ in self.ranges] if self.ranges else []
        self.hint = np.zeros(len(self.classes))  # each class's p_lower when it was last evaluated
        self.first_rate = 0.5  # running share of candidates that their first classes decided
        self.critical_run = 0  # candidates in a row labelled critical (restored): how far to speculate
        self._spec: tuple | None = None  # (layer, each speculated candidate's first classes, those candidates)
        self.removal_rate = 0.5  # running share of the candidates scored whole that were removed (_chain_length)
        self._chain: tuple | None = None  # (layer, candidates scored ahead whole, each removed, in order)
        engine.clear_stacked()  # results another run left are not this run's speculation
        self._harm: dict | None | bool = False  # the engine's predicted_harm, asked when first needed
        self.concordance = np.array([0.75, 0.75])  # running share of pairs of classes each guess ordered right
        self._guesses: dict[tuple, tuple] = {}  # (layer, candidate) -> the two guesses it was picked by

    foresight = True  # order the first classes by predicted_harm too (cswap_nb/core/foresight.py)

    @property
    def harm(self) -> dict | None:
        """The engine's :meth:`~cswap_nb.engines.base.ScoreEngine.predicted_harm`, computed on first use (a run
        that never scores part of the calibration set needs none), or None."""
        if self._harm is False:
            self._harm = (self.engine.predicted_harm(self.x, self.y, self.classes, self.cfg.score)
                          if self.enabled and self.foresight else None)
        return self._harm

    def _promising(self, layer: UnitLayer, units: list[int]) -> list[int]:
        """The :attr:`first` classes (positions in :attr:`ranges`) most likely to decide the candidate ``units``
        of ``layer``, from two guesses: the classes with the smallest last p-values (the candidates of a layer
        tend to hurt the same classes), and those :func:`~cswap_nb.core.foresight.predicted_harm` expects these
        units to hurt most. Each guess does better on some networks (the second on MobileNetV2's, the first on
        the ViT's: cswap_nb/METHOD.md §10), so the classes are ordered by the two guesses' ranks, each weighted
        by how well it has ordered the classes scored since (:meth:`_score_guesses`). The first guess alone
        where there is no prediction."""
        n = min(self.first, len(self.ranges) - 1)
        harm = self.harm.get(layer.name) if len(units) and self.harm is not None else None
        expected = -harm[list(units)].sum(0) if harm is not None else None
        if expected is None or not np.isfinite(expected).all():
            return np.argsort(self.hint, kind="stable")[:n].tolist()
        guesses = (self.hint.copy(), expected)
        self._guesses[(layer.name, tuple(units))] = guesses
        weight = np.clip(2 * self.concordance - 1, 0.05, None)
        rank = weight[0] * _ranks(guesses[0]) + weight[1] * _ranks(guesses[1])
        return np.argsort(rank, kind="stable")[:n].tolist()

    def _score_guesses(self, layer: UnitLayer, units: list[int], lows: dict[int, float]) -> None:
        """Update :attr:`concordance` from the candidate ``units``'s p-values (``lows``: position in :attr:`ranges`
        -> p-value, for the classes scored): the share of pairs of these classes that each guess ordered as
        their p-values are (a tie: half right), both guesses judged on the same pairs."""
        guesses = self._guesses.pop((layer.name, tuple(units)), None)
        if guesses is None:
            return
        at = np.array(list(lows))
        p = np.array([lows[c] for c in at])
        pairs = p[:, None] < p[None, :]
        if not pairs.any():
            return
        right = [float(((g[at][:, None] < g[at][None, :]) + 0.5 * (g[at][:, None] == g[at][None, :]))[pairs].mean())
                 for g in guesses]
        self.concordance = 0.9 * self.concordance + 0.1 * np.array(right)

    def _rows(self, picked: list[int]) -> tuple[tuple[int, int], ...]:
        return tuple((self.ranges[i][1], self.ranges[i][2]) for i in picked)

    def _first_classes(self, layer: UnitLayer, units: list[int], upcoming: list[list[int]]) -> list[int]:
        """The positions in :attr:`ranges` of the classes scored first. A candidate that an earlier one
        speculated on (its first classes scored in the same pass, while every candidate since was
        restored) takes the classes picked for it then, whatever the engine did with them; any other takes
        its most promising classes and speculates on the next candidates of ``upcoming``, each on its own."""
        spec = self._spec
        if spec is not None and spec[0] is layer and spec[2] and spec[2][0] == list(units):
            spec[2].pop(0)
            return spec[1].pop(0)
        picked = self._promising(layer, units)
        k = min(self.max_stack, 1 + self.critical_run)
        others = [list(u) for u in upcoming[: k - 1]]
        picks = [self._promising(layer, u) for u in others]
        self._spec = (layer, picks, others) if others else None
        engine, x = self.engine, self.x
        if others and engine.can_stack(layer, x):
            before = set(engine.masker.removed_units[layer.name]) - set(units)  # the present one restored
            states = [sorted(before | set(u)) for u in others]
            engine.stack_rows(x, self.y, self.cfg.score, layer, states, self._rows(picked),
                              [self._rows(p) for p in picks])
        return picked

    def _whole(self, layer: UnitLayer, units: list[int], upcoming: list[list[int]]) -> Tensor:
        """The scores of every sample for the present candidate. Where the engine can, the next candidates of
        ``upcoming`` are scored in the same pass, as if each in turn were removed too (a chain of removals:
        most candidates scored whole are neutral), while the batch stays small (:attr:`chain_rows`), where
        one pass costs about what its operations' overhead costs. A chain is followed while its candidates
        are removed; a critical one ends it."""
        engine, x, y, cfg = self.engine, self.x, self.y, self.cfg
        rows = ((0, len(y)),)
        chain = self._chain
        if chain is not None and chain[0] is layer and chain[1] and chain[1][0] == list(units):
            chain[1].pop(0)  # scored ahead by the chain (the engine checks the exact state)
        else:
            self._chain = None
            k = min(self._chain_length(), self.chain_rows // max(1, len(y)))  # 0 on a set over chain_rows
            nxt = [list(u) for u in upcoming[: max(0, k - 1)]]
            if nxt and engine.can_stack(layer, x):
                state, states = set(engine.masker.removed_units[layer.name]), []
                for u in nxt:
                    state = state | set(u)
                    states.append(sorted(state))
                engine.stack_rows(x, y, cfg.score, layer, states, rows)
                self._chain = (layer, nxt)
        return engine.rows_scores(x, y, cfg.score, layer, rows)

    def _chain_length(self) -> int:
        """How many candidates one pass of :meth:`_whole` scores: the present one, then each next one while the
        chance that every candidate before it is removed (at :attr:`removal_rate`) is at least
        :attr:`chain_floor`, at most :attr:`max_stack`. A pass of a few more rows costs little more than one
        of 4 on a small set (the operations' overhead dominates), so the chain stays long through a
        critical candidate where most are removed (a DenseNet's: about 9 in 10)."""
        r, k = self.removal_rate, 1
        while k < self.max_stack and r**k >= self.chain_floor:
            k += 1
        return k

    def _chained(self, verdict: Verdict) -> None:
        """Follow the chain of :meth:`_whole` after a candidate scored whole."""
        removed = verdict.label != CRITICAL
        self.removal_rate = 0.8 * self.removal_rate + 0.2 * removed
        if not removed:
            self._chain = None

    def evaluate(self, layer: UnitLayer, q_ref: Tensor, units: list[int] = (),
                 upcoming: list[list[int]] = ()) -> tuple[Verdict, Tensor | None, list[int], int]:
        """The verdict of the current candidate, its scores on every sample (None when decided early),
        the classes evaluated and the number of calibration samples scored. ``upcoming``: the unit
        groups tested next in the same layer (scored in advance where the engine can)."""
        cfg, x, y, engine = self.cfg, self.x, self.y, self.engine
        sliced = engine.can_slice(layer, x)
        if not self.enabled or not sliced:
            q = self._whole(layer, list(units), list(upcoming)) if sliced else engine.scores(x, y, cfg.score, layer)
            verdict = decide_unit(q, q_ref, y, cfg.alpha, cfg.test, cfg.inference, cfg.score, cfg.correction)
            self._chained(verdict)
            return verdict, q, list(self.classes) or sorted({int(c) for c in y.unique().tolist()}), len(y)
        samples, first = 0, None
        if self.first_rate >= self.threshold:
            picked = self._first_classes(layer, list(units), list(upcoming))
            rows = self._rows(picked)
            qn = engine.rows_scores(x, y, cfg.score, layer, rows)
            samples += int(qn.shape[0])
            first = (rows, qn)
            a, b = as_compared(qn, torch.cat([q_ref[s:e] for s, e in rows]), cfg.score)
            bounds = np.cumsum([0] + [e - s for s, e in rows])
            lo, hi = group_pvalues(a, b, [np.arange(bounds[i], bounds[i + 1]) for i in range(len(rows))], cfg.test)
            self.hint[picked] = lo
            self._score_guesses(layer, list(units), dict(zip(picked, lo)))
            verdict = self._decided(picked, lo, hi, float((a - b).mean()))
            self._learn(verdict is not None)
            if verdict is not None:
                self.critical_run += 1
                return verdict, None, [self.classes[i] for i in picked], samples
        else:
            picked = self._promising(layer, units)
        if first is None:
            q = self._whole(layer, list(units), list(upcoming))
        else:  # the other classes only: the first ones' scores are kept
            q = self._with_the_rest(layer, picked, *first)
        samples += len(y) - (0 if first is None else int(first[1].shape[0]))
        a, b = as_compared(q, q_ref, cfg.score)
        lows, highs = group_pvalues(a, b, [np.arange(s, e) for _, s, e in self.ranges], cfg.test)
        if first is None:  # scored whole at once: would the first classes alone have decided?
            self._score_guesses(layer, list(units), dict(enumerate(lows)))
            self._learn(self._decided(picked, lows[picked], highs[picked], 0.0) is not None)
        self.hint[:] = lows
        verdict = verdict_of(lows, highs, self.classes, cfg.alpha, cfg.correction, float((a - b).mean()))
        self._chained(verdict)
        self.critical_run = self.critical_run + 1 if verdict.label == CRITICAL else 0
        if verdict.label != CRITICAL:
            self._spec = None  # removed: the states speculated on (this one restored) will not come
        order = [self.classes[i] for i in picked] + [c for i, c in enumerate(self.classes) if i not in picked]
        return verdict, q, order, samples

    def _with_the_rest(self, layer: UnitLayer, picked: list[int], rows, qn: Tensor) -> Tensor:
        """The scores of every sample: ``qn`` of the first classes' ``rows``, and the other classes scored now
        (their rows, in class order, merged where they are adjacent)."""
        chosen = set(picked)
        rest_rows = merge_rows((a, b) for i, (_, a, b) in enumerate(self.ranges) if i not in chosen)
        q_rest = self.engine.rows_scores(self.x, self.y, self.cfg.score, layer, rest_rows)
        q = q_rest.new_empty((len(self.y),) + tuple(q_rest.shape[1:]))
        for part, ranges in ((qn, rows), (q_rest, rest_rows)):
            q[torch.cat([torch.arange(a, b) for a, b in ranges]).to(q.device)] = part
        return q

    def _decided(self, picked: list[int], low, high, effect: float) -> Verdict | None:
        """The verdict if the classes ``picked`` alone (every other class at p = 1) decide it."""
        lows, highs = np.ones(len(self.ranges)), np.ones(len(self.ranges))
        lows[picked], highs[picked] = low, high
        return verdict_of(lows, highs, self.classes, self.cfg.alpha, self.cfg.correction, effect, complete=False)

    def _learn(self, decided: bool, weight: float = 0.2) -> None:
        self.first_rate = (1 - weight) * self.first_rate + weight * float(decided)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank from 1 (the smallest), ties at their average rank, as ``scipy.stats.rankdata`` gives
    them at a twentieth of its cost (a candidate's first classes ask for two ranks)."""
    ordered = np.sort(values)
    return (np.searchsorted(ordered, values, "left") + np.searchsorted(ordered, values, "right") + 1) / 2


def progressive(
    engine: ScoreEngine,
    masker: Masker,
    layers: list[UnitLayer],
    x: Tensor,
    y: Tensor,
    cfg: CSwapConfig,
    guard: Guard | None = None,
) -> Iterator[dict]:
    """Run C-SWAP's progressive descent; masks are left set on ``masker`` as it goes.

    ``engine`` computes the calibration scores of the current (masked) network. With a
    ``guard`` the loop may stop after a layer (:class:`Guard`); the records of steps it undid
    are updated in place (``pruned=False``, a note).
    """
    q_ref = engine.scores(x, y, cfg.score)
    tester = ClassByClass(engine, x, y, cfg)
    plan = visiting_plan(layers, cfg)
    in_layer: list[dict] = []
    for step, (layer, units) in enumerate(plan):
        t0 = time.perf_counter()
        remaining = int((~masker.removed[layer.name]).sum())
        masker.set(layer.name, units, True)
        upcoming = [u for other, u in plan[step + 1 : step + ClassByClass.max_stack] if other is layer]
        verdict, q_removed, classes, samples = tester.evaluate(layer, q_ref, units, upcoming)
        note = ""
        prune = verdict.label != CRITICAL
        if prune and remaining <= len(units):
            prune, note = False, "kept: the last unit of a layer is never removed"
        if not prune:
            masker.set(layer.name, units, False)
        elif cfg.reference == "current":
            q_ref = q_removed
        record = {
            "step": step,
            "layer": layer.name,
            "kind": layer.kind,
            "unit": units[0] if len(units) == 1 else list(units),
            "label": verdict.label,
            "pruned": prune,
            "p_value": verdict.p_value,
            "p_lower": verdict.p_lower,
            "p_raise": verdict.p_raise,
            "effect": verdict.effect,
            "worst_class": verdict.worst_class,
            "magnitude": float(layer.magnitude[units].sum()),
            "classes": classes,
            "samples": samples,
            "note": note,
            "seconds": time.perf_counter() - t0,
        }
        in_layer.append(record)
        yield record
        if step + 1 == len(plan) or plan[step + 1][0] is not layer:  # the layer's last step
            if guard is not None and not guard.after_layer(masker, layer, in_layer,
                                                           sum(len(u) for _, u in plan[step + 1 :])):
                return
            in_layer = []


def normalise_per_layer(scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Divide each layer's scores by their L2 norm so that a global ranking compares layers fairly."""
    return {name: s / (s.norm() + 1e-12) for name, s in scores.items()}


def global_order(scores: dict[str, Tensor], layers: list[UnitLayer]) -> list[tuple[str, int]]:
    """All (layer, unit) pairs from least to most important under per-layer-normalised scores.

    The strongest unit of each layer is left out: a layer never loses its last unit.
    """
    norm = normalise_per_layer(scores)
    pairs = []
    for layer in layers:
        order = torch.argsort(norm[layer.name], stable=True).tolist()
        pairs.extend((float(norm[layer.name][u]), layer.position, layer.name, u) for u in order[:-1])
    pairs.sort(key=lambda p: (p[0], -p[1], p[3]))
    return [(name, unit) for _, _, name, unit in pairs]


def take(order: list[tuple[str, int]], n: int) -> dict[str, list[int]]:
    """The first ``n`` units of a global order, grouped by layer."""
    out: dict[str, list[int]] = {}
    for name, unit in order[:n]:
        out.setdefault(name, []).append(unit)
    return out


def per_layer_counts(scores: dict[str, Tensor], counts: dict[str, int]) -> dict[str, list[int]]:
    """Remove the ``counts[layer]`` lowest-scored units of each layer (C-SWAP's allocation, say)."""
    out = {}
    for name, k in counts.items():
        k = min(int(k), len(scores[name]) - 1)
        if k > 0:
            out[name] = torch.argsort(scores[name], stable=True)[:k].tolist()
    return out


def rank_and_prune(
    scores: dict[str, Tensor],
    layers: list[UnitLayer],
    *,
    ratio: float | None = None,
    params: int | None = None,
    counts: dict[str, int] | None = None,
    params_after: Callable[[dict[str, list[int]]], int] | None = None,
) -> dict[str, list[int]]:
    """Classical XAI pruning: rank once, cut to a target. Exactly one target:

    ``ratio``: fraction of all units removed (global ranking, per-layer normalised scores);
    ``params``: the global cut whose pruned network's parameter count is closest to
    ``params`` (needs ``params_after``, which counts a candidate cut; :func:`_first_at_most`);
    ``counts``: per-layer counts (lowest-scored units of each layer).
    """
    given = [t is not None for t in (ratio, params, counts)]
    if sum(given) != 1:
        raise ValueError("rank_and_prune needs exactly one target: ratio=, params= or counts=")
    if counts is not None:
        return per_layer_counts(scores, counts)
    order = global_order(scores, layers)
    if ratio is not None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must lie in [0, 1], got {ratio!r}")
        total = sum(layer.size for layer in layers)
        return take(order, min(len(order), round(ratio * total)))
    if params_after is None:
        raise ValueError("params= needs params_after, a function counting the parameters of a cut")
    count = _memo(lambda n: params_after(take(order, n)))
    lo = _first_at_most(count, params, len(order))
    # lo: the smallest cut reaching the budget; the one before may be closer
    best = lo
    if lo > 0 and abs(count(lo - 1) - params) < abs(count(lo) - params):
        best = lo - 1
    return take(order, best)


def _memo(f: Callable[[int], int]) -> Callable[[int], int]:
    seen: dict[int, int] = {}

    def g(n: int) -> int:
        if n not in seen:
            seen[n] = f(n)
        return seen[n]

    return g


def _first_at_most(count: Callable[[int], int], target: int, n_max: int) -> int:
    """The smallest ``n`` in ``[0, n_max]`` with ``count(n) <= target`` (``n_max`` if none), for a
    non-increasing ``count``: the answer of a plain bisection, found with fewer calls of ``count``
    (each counts a pruned copy of the model). A parameter count falls almost linearly along a global
    cut, so each step interpolates between the two bracketing counts (false position, with the
    Illinois halving of an end kept twice); when three steps have not halved the bracket, the next one
    bisects, which bounds the calls by a few times bisection's."""
    a, fa = 0, count(0) - target  # the largest n known with count(n) > target (fa > 0)
    if fa <= 0:
        return 0
    b, fb = n_max, count(n_max) - target  # the smallest n known with count(n) <= target (fb <= 0)
    if fb > 0:
        return n_max
    lo, hi, kept = a + 1, b, 0
    widths = [hi - lo]
    while lo < hi:
        bisect = len(widths) >= 4 and widths[-1] > widths[-4] / 2
        mid = (lo + hi) // 2 if bisect or fa == fb else a + int(fa * (b - a) / (fa - fb))
        mid = min(max(mid, lo), hi - 1)
        f = count(mid) - target
        if f > 0:
            a, fa, lo = mid, f, mid + 1
            fb, kept = (fb / 2, 0) if kept == 1 else (fb, 1)  # b kept twice in a row: halve its weight
        else:
            b, fb, hi = mid, f, mid
            fa, kept = (fa / 2, 0) if kept == -1 else (fa, -1)
        widths.append(hi - lo)
    return lo


def greedy(
    engine: ScoreEngine,
    masker: Masker,
    layers: list[UnitLayer],
    x: Tensor,
    y: Tensor,
    n_remove: int,
    score: str = "prob",
) -> Iterator[dict]:
    """Greedy descent: before each removal re-test every remaining unit, remove the least harmful.

    Harm is the drop of the mean true-class score against the dense network. Costs
    about ``U`` forward passes per removal, ``O(U^2)`` in all: the reference that the
    progressive descent relaxes, affordable only on small models.
    """
    q_dense = engine.scores(x, y, score)
    for step in range(n_remove):
        t0 = time.perf_counter()
        best = None
        for layer in layers:
            alive = (~masker.removed[layer.name]).nonzero().flatten().tolist()
            if len(alive) <= 1:
                continue
            for unit in alive:
                masker.set(layer.name, [unit], True)
                effect = float((engine.scores(x, y, score, layer) - q_dense).mean())
                masker.set(layer.name, [unit], False)
                if best is None or effect > best[0]:
                    best = (effect, layer.name, unit)
        if best is None:
            return
        masker.set(best[1], [best[2]], True)
        yield {"step": step, "layer": best[1], "unit": best[2], "effect": best[0], "pruned": True,
               "seconds": time.perf_counter() - t0}
