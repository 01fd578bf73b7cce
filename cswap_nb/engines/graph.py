"""The general fast engine: the model's ``torch.fx`` graph, a cache of its intermediate values, and a
linear correction for the first layer after the mask (cswap_nb/METHOD.md §10).

While one unit layer is analysed, only its own masks change. Every node of the traced graph that is
not downstream of one of the layer's mask points has the same value for every candidate: it is
computed once on the calibration set and the values the rest of the graph reads are kept (the
*frontier*). A candidate then runs only the downstream nodes. This needs no knowledge of the family:
residual adds, concatenations, branches and several heads are just nodes of the graph.

**The correction.** In an internal layer the path from the mask points to the next layer is usually
a chain of per-channel operations (BatchNorm, activations with ``f(0) = 0``, a depthwise conv)
ending in a conv or linear layer ``L`` that mixes channels; for attention heads ``L`` is ``proj``
itself. Removing units ``S`` then changes ``L``'s input only in the channels of ``S``, where it
becomes 0, so ``L(candidate) = L(current) - L_nobias(input restricted to S)``: a conv or matmul over
``|S|`` input channels instead of all of them. The chain itself is never recomputed. When the loop
keeps a removal, the cached input and output of ``L`` are updated by exactly that difference; every
other cached value is unaffected by construction. A change of any other layer's masks rebuilds the
cache. Where the per-channel region (it may run through max- or average-pooling) has a consumer that
is not such a layer (a residual add, a concatenation), that consumer reads the region's cached value
with the removed units' channels set to zero: a copy instead of a computation.

With early decisions (cswap_nb/METHOD.md §10) a candidate is first scored on a few classes' rows of the
cached batch; the next candidates of the layer can be scored on those rows in the same pass, as if the
present one were restored (:meth:`GraphEngine.stack_rows`). A result is handed out only for the exact
mask state it was scored for, so a wrong speculation costs work, never a decision. A candidate scored on
the whole of a small set chains the next ones the same way, each as if the ones before it were removed.

A conv or linear layer that a candidate recomputes and that reads a recomputed mask point through f(0) = 0
operations runs on the channels the masks keep there (:attr:`Plan.thin`): removed units cost no
multiplications after their mask points, as in a compacted network.

Every layer's plan is checked when the engine is built: its candidate run must reproduce full passes
(two samples, with and without a removal, from one cache; and the last sample alone for slicing); a layer
that fails, or that no mask point of the graph reaches, is analysed with full passes and
:attr:`GraphEngine.layer_fallbacks` says why. A model that ``torch.fx`` cannot trace gets the family's
parts instead (:class:`cswap_nb.engines.passes.PartsEngine`), else full passes
(:class:`cswap_nb.engines.passes.FullPasses`), and :func:`make_engine` says why in the engine's ``fallback``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.causal import true_class_scores
from ..core.units import Masker, UnitLayer
from .base import Rows, ScoreEngine
from .passes import FullPasses, row_count, take_rows
from .plan import (INPLACE_FUNCTIONS, GraphView, Plan, downstream, fold_norms, folded, last_use, node_costs,
                   plan_layer, reused_sums, thin_inputs, trace)

@dataclass
class _Cache:
    key: tuple
    values: list[dict]  # per chunk: node -> value (frontier, and corrections' input and output)
    base: Tensor  # the layer's removed units the cached correction values include
    last: tuple | None = None  # (units, per chunk {L: candidate output}) of the last candidate


class _CleanRuns:
    """Every node's value for one or two samples of the network with no unit removed anywhere, kept per input
    tensor: what each layer's plan check reads its frontier and reference from at set-up, instead of running the
    network before the layer again (a DenseNet121 checks 120 plans; their set-up took 24 s here)."""

    MAX_ROWS = 2

    def __init__(self, engine: "GraphEngine"):
        self.engine, self.runs = engine, {}

    def serves(self, x: Tensor) -> bool:
        return x.shape[0] <= self.MAX_ROWS and not any(bool(m.any()) for m in self.engine.masker.removed.values())

    def env(self, x: Tensor) -> dict:
        key = (x.data_ptr(), tuple(x.shape))
        if key not in self.runs:
            e, env = self.engine, {}
            for node in e.nodes:  # every value kept, so an in-place op gets copies (fresh: none)
                env[node] = e._input(node, x) if node.op == "placeholder" else e._exec(node, env, frozenset())
            self.runs[key] = (x, env, e.model(x))  # x kept: its address stays its own
        return self.runs[key][1]

    def reference(self, x: Tensor) -> Tensor:
        self.env(x)
        return self.runs[(x.data_ptr(), tuple(x.shape))][2]


class _Prefix:
    """The values of the nodes upstream of every mask point (a stem before the first unit layer), which no mask
    changes: computed once per calibration tensor and batch, and handed to each cache build (copied: the build
    may work on them in place) instead of being run again for every layer. Only those read by a later node are
    kept. A ResNet50's stem at 28 x 28 took 63 of a 134-ms pass; it ran again for each of its 33 builds."""

    def __init__(self, engine: "GraphEngine"):
        e = self.engine = engine
        hooked = e.masker.hooked  # a leaf module that holds a mask point changes with it too
        masked = [n for n in e.nodes if n.op == "call_module"
                  and any(h == n.target or h.startswith(f"{n.target}.") for h in hooked)]
        moving = downstream(masked) | set(masked)
        self.nodes = [n for n in e.nodes if n not in moving and n.op != "output"]
        self.static = set(self.nodes)
        self.edge = [n for n in self.nodes if any(u not in self.static for u in n.users)]
        self.key, self.values = None, {}

    def env(self, x: Tensor, i0: int) -> dict:
        """The edge values for rows ``i0 : i0 + batch_size`` of ``x``, copied."""
        key = (x, tuple(x.shape), self.engine.batch_size)
        if self.key is None or self.key[0] is not x or self.key[1:] != key[1:]:
            self.key, self.values = key, {}  # x kept: its address stays its own
        got = self.values.get(i0)
        if got is None:
            e = self.engine
            env = e._run_nodes(self.nodes, x[i0 : i0 + e.batch_size], keep=set(self.edge))
            got = self.values[i0] = {n: env[n] for n in self.edge}
        return {n: v.clone() if isinstance(v, Tensor) else v for n, v in got.items()}


class GraphUnavailable(Exception):
    """The model cannot be run as a traced graph (:func:`make_engine` then uses the family's parts)."""


class GraphEngine(ScoreEngine):
    """``engine="fast"``: the general engine (module docstring). A layer without a checked plan is
    analysed by :attr:`full`, a :class:`~cswap_nb.engines.passes.FullPasses` on the same model;
    :attr:`layer_fallbacks` maps such layers to the reason. Raises :class:`GraphUnavailable` for a model that
    ``torch.fx`` cannot trace (:func:`make_engine` then tries the family's parts, then full passes).
    """

    path = "graph"

    def __init__(self, model: nn.Module, masker: Masker, example: Tensor, batch_size: int = 512,
                 plan_now: bool = True, name: str = "fast", checked_by: "GraphEngine | None" = None):
        super().__init__(model, masker, batch_size, name)
        self.full = FullPasses(model, masker, batch_size, name)
        self.example = example
        self.checked_by = checked_by  # an engine whose checked plans this one adopts (_adopted_plan)
        self.adopted = 0  # plans taken from checked_by without a check of their own
        self._layer_fallbacks: dict[str, str] = {}
        self._plans: dict[str, Plan | None] = {}
        self._cache: _Cache | None = None
        self._current: tuple | None = None  # (token, cache, state) of the candidate begun last
        self._speculation = _Speculation(self)  # candidates scored ahead by stack_rows
        self.thinned = 0  # layer runs on their kept input channels only (_thin_run)
        self._fused: dict[tuple, tuple[Tensor, Tensor]] = {}  # a folded conv's weight and bias (_fold_run)
        self._clean = _CleanRuns(self)
        try:
            self.graph = trace(model)
            self.nodes = list(self.graph.nodes)
            self._first = next(n for n in self.nodes if n.op == "placeholder")
            self.modules = dict(model.named_modules())
            self._pointwise = {name for name, m in self.modules.items() if _is_pointwise(m)}
            self._consts = {n: self._fetch(n.target) for n in self.nodes if n.op == "get_attr"}
            with torch.inference_mode():
                got, ref = self._run_all(example), model(example)
            if not (isinstance(got, Tensor) and got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5, rtol=1e-4)):
                raise ValueError("the traced graph does not reproduce model(x)")
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: no graph
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise GraphUnavailable(f"torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: "
                                   f"{reason})") from exc
        costs, ndim = node_costs(self.nodes, lambda n, env: self._input(n, example) if n.op == "placeholder"
                                 else self._exec(n, env))
        self.view = GraphView(self.nodes, self.modules, costs, ndim, masker.hooked)
        self._prefix = _Prefix(self)
        if plan_now:  # else each layer's plan is traced and checked when the layer is first scored
            for layer in masker.layers.values():
                self._plan(layer)
        self._work = 0.0  # the checks ran on one or two samples: not the analysis's work
        self._clean.runs.clear()  # the analysis never asks for one or two samples of a clean network again

    @property
    def layer_fallbacks(self) -> dict[str, str]:
        """The layers analysed with full passes (no checked plan), with the reason."""
        return self._layer_fallbacks

    def prepare(self, layer: UnitLayer) -> bool:
        """Trace and check ``layer``'s plan now, as its first scoring call would (a no-op once done); whether
        the layer has a checked plan."""
        return self._plan(layer) is not None

    def _plan(self, layer: UnitLayer) -> Plan | None:
        """The checked plan of ``layer`` (None: full passes, :attr:`layer_fallbacks` says why)."""
        if layer.name not in self._plans:
            work = self._work  # the checks run on one or two samples: not the analysis's work
            self._plans[layer.name] = _adopted_plan(self, layer) or self._checked_plan(layer, self.example)
            self._work = work
        return self._plans[layer.name]

    # -- running the graph -------------------------------------------------------------------
    def _fetch(self, target: str):
        obj = self.model
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def _exec(self, node: fx.Node, env: dict, fresh: set | None = None):
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if fresh is not None and _may_work_in_place(node, self.modules):
            # a cached value must survive an in-place op of a recomputed node
            args = tuple(a.clone() if isinstance(a, Tensor) and n not in fresh else a
                         for a, n in zip(args, _arg_nodes(node.args)))
        op = node.op
        if op == "call_module":
            if (node.target in self._pointwise and not kwargs
                    and _pointwise_pays(args[0], self.pointwise_below, self.modules[node.target])):
                return _pointwise(self.modules[node.target], args[0])
            return self.modules[node.target](*args, **kwargs)
        if op == "call_function":
            return node.target(*args, **kwargs)
        if op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if op == "get_attr":
            return self._consts[node]
        if op == "output":
            return args[0]
        raise RuntimeError(f"unexpected node {node.op} {node.target}")

    def _input(self, node: fx.Node, x: Tensor):
        """The value of a placeholder: the input for the first, its default for any other."""
        if node is self._first:
            return x
        if node.args:
            return node.args[0]
        raise ValueError(f"forward takes a second argument without a default ({node.target!r})")

    def _run_nodes(self, order: list[fx.Node], x: Tensor, keep=frozenset(), last: dict | None = None,
                   env: dict | None = None) -> dict:
        """Run the nodes of ``order`` on ``x`` (``env``: values given for nodes before them), freeing each value
        after its last reader there unless it is in ``keep``; the values left (``keep``'s and those no node of
        ``order`` reads)."""
        last = last_use(order) if last is None else last
        env = {} if env is None else env
        for i, node in enumerate(order):
            env[node] = self._input(node, x) if node.op == "placeholder" else self._exec(node, env)
            for a in node.all_input_nodes:
                if last.get(a) == i and a not in keep:
                    del env[a]
        return env

    def _run_all(self, x: Tensor):
        return self._run_nodes(self.nodes, x)[self.nodes[-1]]  # a graph's output node is its last

    def _checked_plan(self, layer: UnitLayer, example: Tensor) -> Plan | None:
        try:
            plan = plan_layer(self.view, layer)
        except Exception as exc:  # noqa: BLE001
            self._layer_fallbacks[layer.name] = f"no plan ({type(exc).__name__}: {exc})"
            return None
        if plan is None:
            self._layer_fallbacks[layer.name] = "none of its mask points is a node of the traced graph"
            return None
        _run_hints(self, plan)
        saved = self.masker.removed[layer.name].clone()
        try:
            with torch.inference_mode():
                self._plans[layer.name] = plan
                if not _check_plan(self, layer, plan, example):
                    self._layer_fallbacks[layer.name] = "its cached plan did not reproduce a full pass"
                    return None
                _set_stacking(plan, layer, self.masker)
        except Exception as exc:  # noqa: BLE001
            self._layer_fallbacks[layer.name] = f"its cached plan failed ({type(exc).__name__}: {exc})"
            return None
        finally:
            self.masker.set(layer.name, list(range(layer.size)), False)
            self.masker.set(layer.name, saved.nonzero().flatten().tolist(), True)
            self._cache = self._current = None
        return plan

    # -- the cache -------------------------------------------------------------------------------
    def _state_key(self, layer: UnitLayer, x: Tensor) -> tuple:
        return (layer.name, self.masker.state(exclude=layer.name), x.data_ptr(), tuple(x.shape))

    def _build(self, layer: UnitLayer, plan: Plan, x: Tensor, key: tuple) -> _Cache:
        removed = self.masker.removed[layer.name].clone()
        if plan.shortcut:  # cache the region and L's input and output with none of this layer's units removed
            self.masker.set(layer.name, removed.nonzero().flatten().tolist(), False)
        dirty = set(plan.dirty)
        keep = set(plan.frontier)
        order = [n for n in self.nodes if n not in dirty and n not in self._prefix.static]
        last = last_use(order)
        values = []
        try:
            if self._clean.serves(x):  # nothing removed: the frontier is the clean network's (copied: folded in place)
                env = self._clean.env(x)
                values.append({n: env[n].clone() if isinstance(env[n], Tensor) else env[n] for n in plan.frontier})
            for i0 in range(0, x.shape[0] if not values else 0, self.batch_size):
                env = self._run_nodes(order, x[i0 : i0 + self.batch_size], keep, last, self._prefix.env(x, i0))
                values.append({n: env[n] for n in plan.frontier})
            for corr in plan.corrections:  # a folded norm's output, as the candidates' corrections read it
                if corr.norm is not None:
                    for chunk in values:
                        chunk[corr.node] = corr.normed(chunk[corr.node])
        finally:
            if plan.shortcut:
                self.masker.set(layer.name, removed.nonzero().flatten().tolist(), True)
        self._work += plan.build_cost
        base = torch.zeros_like(removed) if plan.shortcut else removed
        return _Cache(key, values, base)

    def _cache_for(self, layer: UnitLayer, plan: Plan, x: Tensor) -> _Cache:
        key = self._state_key(layer, x)
        c = self._cache
        now = self.masker.removed[layer.name]
        if c is not None and c.key == key and plan.shortcut:
            if c.last is not None:
                units, outputs = c.last
                if bool(now[units].all()):  # the last candidate was kept: fold it into the cache
                    for chunk, out in zip(c.values, outputs):
                        for corr in plan.corrections:
                            chunk[corr.node] = out[corr.node]
                            _zero_channels(chunk[corr.input], [i for u in units for i in corr.channels[u]],
                                           corr.last_dim)
                    c.base[units] = True
                c.last = None
            if bool((c.base & ~now).any()):  # a cached removal was undone (the guard): rebuild
                c = None
        if c is None or c.key != key:
            c = self._cache = self._build(layer, plan, x, key)
        return c

    # -- scores ------------------------------------------------------------------------------------
    def _corrected(self, plan: Plan, chunk: dict, units: list[int]) -> dict:
        """Each correction's output with ``units`` removed on top of the cached state (whole chunk)."""
        out = {}
        for corr, full in zip(plan.corrections, plan.correction_cost):
            v = chunk[corr.input]
            if not units:
                out[corr.node] = chunk[corr.node].clone()
                continue
            idx = [i for u in units for i in corr.channels[u]]
            out[corr.node] = chunk[corr.node] - corr.partial(v, idx)
            width = v.shape[-1] if corr.last_dim else v.shape[1]
            self._work += full * len(idx) / width / self._chunks
        return out

    def _begin(self, layer: UnitLayer, x: Tensor):
        """Start the candidate the masks describe now: fold the last one into the cache if it was kept,
        compute the corrections once (each later slice of the batch reads them). Called once per
        candidate: a second call for the same mask state reuses the first's work."""
        token = self._token(layer, x)
        current = self._current
        if (current is not None and current[0] == token and current[1] is self._cache
                and (not current[2][2] or (self._cache.last is not None and self._cache.last[1] is current[2][2]))):
            return current[2]
        plan = self._plan(layer)
        cache = self._cache_for(layer, plan, x)
        now = self.masker.removed[layer.name]
        units = (now & ~cache.base).nonzero().flatten().tolist() if plan.shortcut else []
        removed = [plan.channels[u] for u in now.nonzero().flatten().tolist()] if plan.materialize else []
        self._chunks = len(cache.values)
        given = [self._corrected(plan, chunk, units) for chunk in cache.values] if plan.shortcut else []
        if plan.shortcut:
            cache.last = (units, given)
        state = (plan, cache, given, removed)
        self._current = (token, cache, state)
        return state

    def _run_chunk(self, plan: Plan, chunk: dict, given: dict | None, removed: list[int], rows: Rows | None = None):
        """The logits of one cached chunk (or of its ``rows`` only) for the current candidate."""
        if rows is None:
            env = dict(chunk)
        else:
            env = {n: (take_rows(v, rows) if n in plan.batched else v) for n, v in chunk.items()}
        if given:
            env.update(given if rows is None else {n: take_rows(v, rows) for n, v in given.items()})
        for r in plan.materialize:  # the region read from the cache with every removed unit zeroed
            v = chunk[r].clone() if rows is None else take_rows(chunk[r], rows, copy=True)
            if removed:
                _zero_channels(v, removed, plan.dim != 1)
            env[r] = v
        return self._dirty_run(plan, env)

    def _dirty_run(self, plan: Plan, env: dict):
        fresh, thin, folds, norms, reuse = plan.fresh, plan.thin, plan.folds, plan.norms, plan.reuse
        for node, done in zip(plan.dirty, plan.release):
            point = thin.get(node) if thin else None
            k = reuse.get(node) if reuse else None
            if k is not None and _same_layout(a := env[node.args[k]], b := env[node.args[1 - k]]):
                env[node] = a.add_(b)  # into a value no later node reads: no new memory (plan.reused_sums)
            elif node in folds:
                env[node] = _fold_run(self, node, folds[node], env, point)
            elif node in norms:  # its conv ran it, or the cache holds it: only the mask hook is left
                env[node] = _norm_hooks(self, node, env[node.args[0]], plan)
            elif point is None:
                env[node] = self._exec(node, env, fresh)
            else:
                env[node] = _thin_run(self, node, env, fresh, point)
            for a in done:
                del env[a]
        return env[plan.dirty[-1]]

    thin_below = 0.9  # a layer runs on its kept input channels when at most this share of them is kept
    pointwise_below = 2048  # a 1x1 conv over fewer output positions (batch x pixels) runs as a matrix product
    fold_norms = True  # plans run a conv and the BatchNorm after it as one conv (plan.fold_norms)

    def _logits_chunks(self, layer: UnitLayer, x: Tensor):
        plan, cache, given, removed = self._begin(layer, x)
        outs = [self._run_chunk(plan, chunk, given[i] if given else None, removed)
                for i, chunk in enumerate(cache.values)]
        self._work += plan.cost
        return outs

    def _logits(self, x: Tensor, layer: UnitLayer) -> Tensor:
        return torch.cat(self._logits_chunks(layer, x))

    def scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer | None = None) -> Tensor:
        if layer is None or self._plan(layer) is None:
            return self.full.scores(x, y, score)
        with torch.inference_mode():
            outs = self._logits_chunks(layer, x)
            q = [self._score(o, y, i, score) for o, i in zip(outs, range(0, x.shape[0], self.batch_size))]
        return self._finish(torch.cat(q))

    def _token(self, layer: UnitLayer, x: Tensor, units: list[int] | None = None) -> tuple:
        """The key of a candidate: the calibration tensor and every layer's removed units (``units``: this
        layer's, instead of the masks' own)."""
        state = self.masker.state(instead=None if units is None else (layer.name, units))
        return (layer.name, x.data_ptr(), tuple(x.shape), state)

    def can_slice(self, layer: UnitLayer, x: Tensor) -> bool:
        """Whether :meth:`rows_scores` computes only the rows asked for: a graph plan checked on slices
        whose cache holds ``x`` in one chunk, or a layer analysed with full passes (a pass over the rows)."""
        plan = self._plan(layer)
        if plan is None:
            return self.full.can_slice(layer, x)
        return plan.sliceable and self.masks is None and x.shape[0] <= self.batch_size

    def rows_scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, rows: Rows) -> Tensor:
        """The scores of the calibration samples in ``rows`` (``(start, stop)`` ranges) for the current
        candidate; the other rows are not computed. Needs :meth:`can_slice`; several calls for one
        candidate share its corrections, and a result :meth:`stack_rows` computed for this exact mask
        state is taken instead of a pass."""
        if self._plan(layer) is None:
            return self.full.rows_scores(x, y, score, layer, rows)
        if not self.can_slice(layer, x):
            raise ValueError(f"layer {layer.name!r} cannot be scored on part of the calibration set")
        rows = tuple(rows)
        q = self._speculation.take(self._token(layer, x), rows)
        if q is not None:
            return q
        with torch.inference_mode():
            plan, cache, given, removed = self._begin(layer, x)
            logits = self._run_chunk(plan, cache.values[0], given[0] if given else None, removed, rows)
            q = true_class_scores(logits, take_rows(y, rows), score)
        self._work += plan.cost * row_count(rows) / x.shape[0]
        return q

    def can_stack(self, layer: UnitLayer, x: Tensor) -> bool:
        """Whether :meth:`stack_rows` applies: a sliceable plan that reads the layer's region from the
        cache and recomputes none of its mask points (every candidate's difference is in its given
        values, none in the masks' hooks)."""
        plan = self._plan(layer)
        return plan is not None and plan.stackable and self.can_slice(layer, x)

    def stack_rows(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, others: list[list[int]],
                   rows: Rows, others_rows: list[Rows] | None = None) -> None:
        """Score ``rows`` for the current candidate and, in the same pass, for the states ``others``: each the
        complete list of ``layer``'s removed units in a state to come (every other layer as it is now), on
        its rows of ``others_rows`` (default: ``rows``), in one batch. The results wait for :meth:`rows_scores`,
        which takes one only when the masks are exactly in its state and it asks for the same rows: a
        speculation that does not come true costs work, never a decision (cswap_nb/METHOD.md §10)."""
        per_state = [tuple(r) for r in others_rows] if others_rows is not None else [tuple(rows)] * len(others)
        self._speculation.stack(x, y, score, layer, list(zip(others, per_state, strict=True)), tuple(rows))

    def clear_stacked(self) -> None:
        """Forget the results :meth:`stack_rows` computed in advance."""
        self._speculation.clear()


def _kept_input(e: GraphEngine, point: str | None, x: Tensor, width: int) -> Tensor | None:
    """The input channels a layer of :attr:`Plan.thin` runs on: those mask point ``point`` keeps, where at most
    :attr:`GraphEngine.thin_below` of the layer's ``width`` (else None: the layer runs as it is)."""
    kept = e.masker.kept_channels(point, x.shape[0]) if point is not None else None
    if kept is None or not 0 < kept.numel() <= e.thin_below * width:
        return None
    e.thinned += 1
    return kept if kept.device == x.device else kept.to(x.device)


def _thin_run(e: GraphEngine, node: fx.Node, env: dict, fresh: set, point: str):
    """Run a layer of :attr:`Plan.thin` on the input channels that mask point ``point`` keeps (the others are
    zero: their weights would multiply zeros), else as the module does."""
    x = env[node.args[0]]
    mod = e.modules[node.target]
    kept = _kept_input(e, point, x, mod.weight.shape[1])
    if kept is None:
        return e._exec(node, env, fresh)
    if isinstance(mod, nn.Linear):
        out = F.linear(x.index_select(-1, kept), mod.weight.index_select(1, kept), mod.bias)
    else:
        out = _conv_kept(e, node, x, mod.weight, mod.bias, kept)
    return _hooked(mod, x, out)


def _fold_run(e: GraphEngine, node: fx.Node, norm: fx.Node, env: dict, point: str | None) -> Tensor:
    """The output of ``norm`` after conv ``node`` without the norm's hooks, as one conv whose weights fold in the
    norm (:func:`~cswap_nb.engines.plan.fold_norms`); on the input channels that mask point ``point`` keeps where
    given (as :func:`_thin_run`), as a matrix product where a 1x1 conv's pays."""
    x = env[node.args[0]]
    fused = e._fused.get((node.target, norm.target))
    if fused is None:
        fused = e._fused[(node.target, norm.target)] = folded(e.modules[node.target], e.modules[norm.target])
    w, b = fused
    return _conv_kept(e, node, x, w, b, _kept_input(e, point, x, w.shape[1]))


def _conv_kept(e: GraphEngine, node: fx.Node, x: Tensor, w: Tensor, b: Tensor | None, kept: Tensor | None) -> Tensor:
    """Conv ``node`` of ``x`` with weight ``w`` and bias ``b`` (its own, or folded with a norm), on the input
    channels ``kept`` where given, as a matrix product where a 1x1 conv's pays; no hooks."""
    conv = e.modules[node.target]
    if node.target in e._pointwise and _pointwise_pays(x, e.pointwise_below, conv):
        return _product(x, w, b, kept)
    if kept is not None:
        x, w = x.index_select(1, kept), w.index_select(1, kept)
    return conv._conv_forward(x, w, b)


def _norm_hooks(e: GraphEngine, node: fx.Node, v: Tensor, plan: Plan) -> Tensor:
    """A folded norm's value (:attr:`Plan.norms`): ``v`` through its mask hook only; copied where ``v`` is a
    cached value that a later op may change in place (:attr:`Plan.shared`)."""
    out = _hooked(e.modules[node.target], v, v)
    return v.clone() if out is v and node in plan.shared else out


def _run_hints(e: GraphEngine, plan: Plan) -> None:
    """How ``plan``'s candidates run its nodes, from the engine's graph and masker (its own plan or an adopted one):
    the thin layers, the folded norms, the sums written in place."""
    plan.thin = thin_inputs(e.view, plan.dirty, e.masker.channel_points)
    if e.fold_norms:
        fold_norms(e.view, plan, e.masker.channel_points)
    reused_sums(e.view, plan)


def _adopted_plan(e: GraphEngine, layer: UnitLayer) -> Plan | None:
    """``layer``'s plan with the verdicts of :attr:`GraphEngine.checked_by`'s checked plan for it (sliceable, the
    batched frontier values), where both plans are the same nodes by name: a compact copy is the same traced graph
    at smaller widths, checked at its build to compute what the masked network computes
    (:mod:`cswap_nb.engines.compact`), so its plan needs no check of its own (a DenseNet169's copies checked 104
    plans, 0.1 s each). None: the engine checks the plan itself."""
    ref = e.checked_by._plans.get(layer.name) if e.checked_by is not None else None
    if ref is None:
        return None
    try:
        plan = plan_layer(e.view, layer)
    except Exception:  # noqa: BLE001 - checked (and refused) by _checked_plan
        return None
    if plan is None or _outline(plan) != _outline(ref):
        return None
    _run_hints(e, plan)
    plan.sliceable = ref.sliceable
    names = {n.name for n in ref.batched}
    plan.batched = {n for n in plan.frontier if n.name in names}
    _set_stacking(plan, layer, e.masker)
    e.adopted += 1
    return plan


def _set_stacking(plan: Plan, layer: UnitLayer, masker: Masker) -> None:
    """Whether candidates of a checked plan stack (:meth:`GraphEngine.stack_rows`): when they differ only in the
    values they are given, or also in the layer's mask points a candidate recomputes (a coupled group's later
    points: DenseNet's norms after a concatenation) where those take a mask per row (Masker.row_keep)."""
    plan.row_points = [n.target for n in plan.dirty if n.op == "call_module" and n.target in layer.points]
    plan.stackable = plan.sliceable and plan.shortcut and layer.kind != "heads" and all(
        masker.row_maskable(m) for m in plan.row_points)


def _outline(plan: Plan) -> tuple:
    """A plan's nodes by name: what it recomputes, reads, corrects and materialises, and its channel dimension."""
    def names(nodes):
        return tuple(n.name for n in nodes)

    return (names(plan.dirty), names(plan.frontier), tuple((c.node.name, c.input.name) for c in plan.corrections),
            names(plan.materialize), plan.dim)


def _check_plan(e: "GraphEngine", layer: UnitLayer, plan: Plan, example: Tensor) -> bool:
    """Whether a candidate run of ``plan`` reproduces full passes on a two-sample batch (``example`` and its
    mirror image), with none and with one of the layer's units removed, both from one cache as in an
    analysis. Also finds the frontier values whose first dimension is the batch (their rows are sliced for a
    slice of the calibration set; every other value must not depend on the batch) and checks that a candidate
    run on the batch's last row alone reproduces that row: :attr:`Plan.sliceable` (a plan that fails it is
    still used for whole-batch candidates)."""
    plan.sliceable, plan.batched = False, set()
    if "pair" not in e._clean.runs:  # one tensor for every layer's check, so its clean run is shared
        e._clean.runs["pair"] = torch.cat([example, example.flip(-1)])
    pair = e._clean.runs["pair"]
    n = pair.shape[0]
    sliceable = True
    try:
        e._cache = e._current = None
        one = e._cache_for(layer, plan, pair[:1]).values[0]
    except Exception:  # noqa: BLE001 - whole-batch candidates may still use the plan
        one, sliceable = None, False
    e._cache = e._current = None
    two = e._cache_for(layer, plan, pair).values[0]  # the cache both checks below read
    for node in plan.frontier if one is not None else ():
        a, b = two[node], one[node]
        if (isinstance(a, Tensor) and isinstance(b, Tensor) and a.ndim and a.shape[0] == n
                and b.shape[0] == 1 and a.shape[1:] == b.shape[1:]):
            plan.batched.add(node)
        elif not _same_value(a, b):
            sliceable = False  # a value that depends on the batch size but is not batch-major
    for units in ([], [0]):
        e.masker.set(layer.name, list(range(layer.size)), False)
        e.masker.set(layer.name, units, True)
        whole = e._logits(pair, layer)
        # the reference is the model's own forward, independent of the trace: with the graph run node by node
        # instead, a tiny ConvNeXt's LayerNorm stream got wrong labels (test_units.py)
        ref = e._clean.reference(pair) if e._clean.serves(pair) else e.model(pair)
        if not torch.allclose(whole, ref, atol=1e-4, rtol=1e-4):
            return False
        if sliceable and units:  # the slice of a candidate with a removal (without one it runs the same code)
            try:
                _, cache, given, removed = e._begin(layer, pair)
                row = e._run_chunk(plan, cache.values[0], given[0] if given else None, removed, ((n - 1, n),))
                sliceable = bool(torch.allclose(row, whole[n - 1 :], atol=1e-4, rtol=1e-4))
            except Exception:  # noqa: BLE001 - whole-batch candidates still use the plan
                sliceable = False
    plan.sliceable = sliceable
    if not sliceable:
        plan.batched = set()
    return True


class _Speculation:
    """The graph engine's candidates scored ahead (:meth:`GraphEngine.stack_rows`): each result is kept
    under the exact mask state it was scored for, by ``(token, rows)``, and handed out once."""

    def __init__(self, engine: GraphEngine):
        self.engine = engine
        self.results: dict = {}
        self.taken = 0  # results handed out: passes a speculation saved

    def clear(self) -> None:
        self.results = {}

    def take(self, token: tuple, rows: Rows) -> Tensor | None:
        q = self.results.pop((token, rows), None) if self.results else None
        self.taken += q is not None
        return q

    def stack(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, others: list[tuple[list[int], Rows]],
              rows: Rows) -> None:
        """Score the present candidate on ``rows`` and each state of ``others`` (removed units, rows) on its rows,
        one block of rows after the other in one batch."""
        e = self.engine
        with torch.inference_mode():
            plan, cache, given, _ = e._begin(layer, x)
            chunk = cache.values[0]
            current = list(e.masker.removed_units[layer.name])
            base = set(cache.base.nonzero().flatten().tolist())
            states = [(current, rows, {n: take_rows(v, rows) for n, v in given[0].items()} if given else {})]
            for removed, own in others:
                removed = sorted(set(removed))
                if not base.issubset(removed):
                    continue  # a removal folded into the cache undone: not a state the corrections reach
                extra = [u for u in removed if u not in base]
                states.append((removed, own, self._corrected_rows(plan, chunk, extra, own)))
            same = all(own == rows for _, own, _ in states)
            env = {n: ((torch.cat([take_rows(v, rows)] * len(states)) if same else
                        torch.cat([take_rows(v, own) for _, own, _ in states])) if n in plan.batched else v)
                   for n, v in chunk.items()}
            for corr in plan.corrections:
                env[corr.node] = torch.cat([g[corr.node] for _, _, g in states])
            for r in plan.materialize:
                parts = []
                for removed, own, _ in states:
                    v = take_rows(chunk[r], own, copy=True)
                    if removed:
                        _zero_channels(v, [plan.channels[u] for u in removed], plan.dim != 1)
                    parts.append(v)
                env[r] = torch.cat(parts)
            counts = [row_count(own) for _, own, _ in states]
            masker = e.masker
            masker.row_keep = {m: masker.rows_keep(layer.name, m, [r for r, _, _ in states], counts)
                               for m in plan.row_points}
            try:
                logits = e._dirty_run(plan, env)
            finally:
                masker.row_keep = {}
            self.results = {}
            start = 0
            for (removed, own, _), n in zip(states, counts):
                q = true_class_scores(logits[start : start + n], take_rows(y, own), score)
                self.results[(e._token(layer, x, removed), own)] = q
                start += n
        e._work += plan.cost * sum(counts) / x.shape[0]

    def _corrected_rows(self, plan: Plan, chunk: dict, units: list[int], rows: Rows) -> dict:
        """:meth:`GraphEngine._corrected` on ``rows`` only, for a speculated candidate."""
        out = {}
        for corr in plan.corrections:
            base = take_rows(chunk[corr.node], rows)
            if not units:
                out[corr.node] = base.clone()
                continue
            idx = [i for u in units for i in corr.channels[u]]
            out[corr.node] = base - corr.partial(take_rows(chunk[corr.input], rows), idx)
        return out


def _is_pointwise(m: nn.Module) -> bool:
    """A plain 1x1 conv (stride 1, no padding, one group): its output is a matrix product over the channels at
    each position. (Whether its hooks allow the product is asked at each call: :func:`_pointwise_pays`.)"""
    return (type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.dilation == (1, 1)
            and m.groups == 1 and m.padding in ((0, 0), "valid"))


def _pointwise_pays(x, below: int, mod: nn.Module) -> bool:
    """Whether :func:`_pointwise` stands for ``mod(x)`` and pays: a CPU input over fewer than ``below`` output
    positions, and only plain forward hooks on ``mod`` (which :func:`_hooked` applies as a call would), none
    global."""
    return (isinstance(x, Tensor) and x.ndim == 4 and x.device.type == "cpu"
            and x.shape[0] * x.shape[2] * x.shape[3] < below
            and not mod._forward_pre_hooks and not mod._forward_hooks_with_kwargs
            and not nn.modules.module._global_forward_hooks and not nn.modules.module._global_forward_pre_hooks)


def _pointwise(mod: nn.Conv2d, x: Tensor, kept: Tensor | None = None) -> Tensor:
    """``mod(x)`` for a 1x1 conv (:func:`_is_pointwise`) as a matrix product on the channels-last view of ``x``
    (over the input channels ``kept`` only, when given), its forward hooks applied. On this CPU a conv over a few
    pixels costs 1.0-3.4x the product (``benchmarks/pointwise_conv.py``, METHOD.md §10); the sums are the same up
    to float reassociation. The output has the layout a conv gives: channels-last, or contiguous where ``x`` is
    (a copy of a few thousand positions), so that a model's later ``view`` of it works as with the conv."""
    return _hooked(mod, x, _product(x, mod.weight, mod.bias, kept))


def _product(x: Tensor, weight: Tensor, bias: Tensor | None, kept: Tensor | None = None) -> Tensor:
    """A 1x1 conv of ``x`` with ``weight`` and ``bias`` as a matrix product (:func:`_pointwise`), no hooks."""
    w = weight.view(weight.shape[0], weight.shape[1])
    xs = x.permute(0, 2, 3, 1)
    if kept is not None:
        xs, w = xs.index_select(-1, kept), w.index_select(1, kept)
    out = F.linear(xs, w, bias).permute(0, 3, 1, 2)
    if x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous()
    return out


def _same_layout(a, b) -> bool:
    """Whether ``a + b`` can be written into ``a``: two tensors of one shape, strides, type and device."""
    return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype and a.device == b.device)


def _hooked(mod: nn.Module, x: Tensor, out: Tensor) -> Tensor:
    """``out`` through ``mod``'s forward hooks, as a call of the module would pass it (a mask point's mask)."""
    for hook in mod._forward_hooks.values():
        got = hook(mod, (x,), out)
        out = out if got is None else got
    return out


def _zero_channels(v: Tensor, idx: list[int], last_dim: bool) -> None:
    """Set channels ``idx`` of ``v`` to 0 in place (dim 1, or the last dim for token layouts)."""
    if last_dim:
        v[..., idx] = 0
    else:
        v[:, idx] = 0


def _same_value(a, b) -> bool:
    """Whether two cached values are the same (tensors: same shape and elements)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values that cannot be compared are taken as different
        return False


def _arg_nodes(args) -> list:
    return [a if isinstance(a, fx.Node) else None for a in args]


def _may_work_in_place(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_function":
        return node.target in INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    return False
