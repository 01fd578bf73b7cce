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

Candidates are evaluated one at a time: on this project's CPU a batch of 4 x 200 calibration images
runs no faster per FLOP than 200 (cswap_nb/METHOD.md §10), so stacking candidates would not pay for
the speculation it needs.

Every layer's plan is checked when the engine is built: its candidate run must reproduce full passes
(one sample, with and without a removal); a layer that fails, or that no mask point of the graph
reaches, is analysed with full passes and :attr:`GraphEngine.layer_fallbacks` says why. A model that
``torch.fx`` cannot trace falls back to the family's parts (:class:`cswap_nb.engine.PrefixEngine`),
then to full passes, and :attr:`GraphEngine.fallback` says why.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .causal import true_class_scores
from .engine import FullEngine, PrefixEngine, Rows, row_count, take_rows
from .units import Masker, UnitLayer, _channel_dim, is_depthwise

# per-channel operations with f(0) = 0: a zeroed channel stays zero, the others are untouched
ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.Tanh, nn.LeakyReLU, nn.ELU,
                nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
ZERO_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.mish, torch.tanh, F.leaky_relu,
                  F.elu, F.hardtanh, F.dropout}
ZERO_METHODS = {"relu", "tanh", "relu_"}
# pooling over positions: per channel (channels-first tensors only), a zero channel pools to zero
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d)
INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, torch.relu_}


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer, with timm's untraceable layers and functions kept as leaves."""

    def __init__(self):
        try:
            from timm.layers import _fx as timm_fx
            functions, self._leaves = tuple(timm_fx.get_notrace_functions()), timm_fx.is_notrace_module
        except ImportError:  # pragma: no cover - timm is a dependency
            functions, self._leaves = (), lambda cls: False
        super().__init__(autowrap_functions=functions)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return self._leaves(type(m)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.Graph:
    """The model's forward as a ``torch.fx`` graph (raises if it cannot be traced)."""
    return _Tracer().trace(model)


@dataclass
class Correction:
    """``L``'s output for a candidate from its cached output: ``L(current) - L_nobias(input on S)``."""

    node: fx.Node  # L
    input: fx.Node  # the chain's last node, L's only input
    channels: list[list[int]]  # per unit: L's input channels it occupies
    module: nn.Module

    @property
    def last_dim(self) -> bool:
        """Whether ``L`` mixes the last dimension (a linear) rather than dim 1 (a conv)."""
        return isinstance(self.module, nn.Linear)

    def partial(self, v: Tensor, idx: list[int]) -> Tensor:
        m = self.module
        if self.last_dim:
            return F.linear(v[..., idx], m.weight[:, idx])
        return m._conv_forward(v[:, idx], m.weight[:, idx], None)


@dataclass
class Plan:
    """What one layer's candidates recompute (``dirty``, in graph order) and what they read."""

    dirty: list[fx.Node]
    frontier: list[fx.Node]
    corrections: list[Correction]
    cost: float  # forward-equivalents of one candidate without the corrections
    build_cost: float
    correction_cost: list[float] = field(default_factory=list)  # per correction, for all input channels
    materialize: list[fx.Node] = field(default_factory=list)  # region nodes read from the cache, units zeroed
    channels: list[int] = field(default_factory=list)  # the region's channel of each unit
    dim: int = 1  # the region's channel dimension
    release: list = field(default_factory=list)  # per dirty node: values no later node reads
    batched: set = field(default_factory=set)  # frontier nodes whose first dimension is the batch
    sliceable: bool = False  # whether a candidate can run on a slice of the cached batch (checked)
    stackable: bool = False  # whether several candidates can run in one batch (set with the layer's plan)

    def __post_init__(self):
        # values a candidate computes itself and keeps no further: in-place ops may work on them. The
        # corrections' outputs are not among them: they are kept to fold a removal into the cache.
        self.fresh = set(self.dirty) | set(self.materialize)

    @property
    def shortcut(self) -> bool:
        """Whether candidates read the region or L from the cache (else: masks run with hooks)."""
        return bool(self.corrections or self.materialize)


@dataclass
class _Cache:
    key: tuple
    values: list[dict]  # per chunk: node -> value (frontier, and corrections' input and output)
    base: Tensor  # the layer's removed units the cached correction values include
    last: tuple | None = None  # (units, per chunk {L: candidate output}) of the last candidate


class GraphEngine(PrefixEngine):
    """``engine="fast"``: the general engine (module docstring); falls back to parts, then full passes.

    :attr:`path` is ``"graph"``, ``"parts"`` or ``"full"``; :attr:`fallback` says why the graph was
    not used (None when it was); :attr:`layer_fallbacks` maps layers analysed with full passes to
    the reason.
    """

    name = "fast"

    def __init__(self, model: nn.Module, masker: Masker, example: Tensor, batch_size: int = 512):
        FullEngine.__init__(self, model, masker, batch_size)
        self.path, self.layer_fallbacks = "graph", {}
        self._plans: dict[str, Plan | None] = {}
        self._cache: _Cache | None = None
        self._current: tuple | None = None  # (token, cache, state) of the candidate begun last
        self._stacked: dict = {}  # results stack_rows computed in advance, by (token, rows)
        try:
            self.graph = trace(model)
            self.nodes = list(self.graph.nodes)
            self._first = next(n for n in self.nodes if n.op == "placeholder")
            self.modules = dict(model.named_modules())
            self._consts = {n: self._fetch(n.target) for n in self.nodes if n.op == "get_attr"}
            with torch.inference_mode():
                got, ref = self._run_all(example), model(example)
            if not (isinstance(got, Tensor) and got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5, rtol=1e-4)):
                raise ValueError("the traced graph does not reproduce model(x)")
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: use the parts instead
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            self.graph = None
            PrefixEngine.__init__(self, model, masker, example, batch_size)  # sets path: parts or full
            then = "the family's parts" if self.parts is not None else f"full passes ({self.fallback})"
            self.fallback = f"torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: {reason}); using {then}"
            return
        self.fallback = None
        self._costs = self._node_costs(example)
        for layer in masker.layers.values():
            self._plans[layer.name] = self._checked_plan(layer, example)
        self.forward_equivalents = 0.0  # the checks ran on one or two samples: not the analysis's work

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

    def _run_nodes(self, order: list[fx.Node], x: Tensor, keep=frozenset(), last: dict | None = None) -> dict:
        """Run the nodes of ``order`` on ``x``, freeing each value after its last reader there unless
        it is in ``keep``; the values left (``keep``'s and those no node of ``order`` reads)."""
        last = _last_use(order) if last is None else last
        env: dict = {}
        for i, node in enumerate(order):
            env[node] = self._input(node, x) if node.op == "placeholder" else self._exec(node, env)
            for a in node.all_input_nodes:
                if last.get(a) == i and a not in keep:
                    del env[a]
        return env

    def _run_all(self, x: Tensor):
        return self._run_nodes(self.nodes, x)[self.nodes[-1]]  # a graph's output node is its last

    def _node_costs(self, example: Tensor) -> dict:
        from torch.utils.flop_counter import FlopCounterMode

        env, costs, self._ndim = {}, {}, {}
        with torch.inference_mode():
            for node in self.nodes:
                if node.op == "placeholder":
                    env[node] = self._input(node, example)
                    continue
                with FlopCounterMode(display=False) as counter:
                    env[node] = self._exec(node, env)
                costs[node] = float(counter.get_total_flops())
                if isinstance(env[node], Tensor):
                    self._ndim[node] = env[node].ndim
        total = sum(costs.values()) or 1.0
        return {n: c / total for n, c in costs.items()}

    # -- planning ------------------------------------------------------------------------------
    def _plan(self, layer: UnitLayer) -> Plan | None:
        masks = [n for n in self.nodes if n.op == "call_module" and n.target in layer.points]
        if not masks:
            return None
        shortcut = self._heads(layer, masks) if layer.kind == "heads" else self._region(layer, masks)
        corrections, materialize, channels, dim = shortcut if shortcut is not None else ([], [], [], 1)
        given = {c.node for c in corrections} | set(materialize)  # values a candidate gets without running
        if shortcut is None:
            dirty = _downstream(masks) | set(masks)
        else:
            exits = {u for r in materialize for u in r.users if u not in given}
            dirty = (_downstream(given) | exits) - given
        dirty_list = [n for n in self.nodes if n in dirty]
        frontier = {i for d in dirty_list for i in d.all_input_nodes if i not in dirty and i not in given}
        needed = frontier | given | {c.input for c in corrections}
        cost = sum(self._costs.get(n, 0.0) for n in dirty_list)
        build = sum(self._costs.get(n, 0.0) for n in self.nodes if n not in dirty)
        # free each recomputed value after its last use: a run that keeps them all allocates fresh
        # memory for every op, and page faults then cost as much as the arithmetic (2x on the ViT)
        release: list[list[fx.Node]] = [[] for _ in dirty_list]
        for a, i in _last_use(dirty_list).items():
            if a in dirty or a in given:
                release[i].append(a)
        return Plan(dirty_list, [n for n in self.nodes if n in needed], corrections, cost, build,
                    [self._costs.get(c.node, 0.0) for c in corrections], materialize, channels, dim, release)

    def _heads(self, layer: UnitLayer, masks: list[fx.Node]):
        out = []
        for m in masks:
            mod = self.modules[m.target]
            if not (isinstance(mod, nn.Linear) and len(m.args) == 1 and not m.kwargs):
                return None
            d, per_unit = layer.head_dim, layer.points[m.target]
            out.append(Correction(m, m.args[0], [list(range(h * d, (h + 1) * d)) for h in per_unit], mod))
        return out, [], [], -1

    def _region(self, layer: UnitLayer, masks: list[fx.Node]):
        """The per-channel region after the layer's first mask points: ``(corrections, materialized
        nodes, channel per unit, channel dim)``, or None when a candidate must run all downstream nodes.

        A region node's value for a candidate is its cached value with the removed units' channels
        set to 0 (zero state) or unknown (a BatchNorm or biased depthwise conv after the zero); a
        consumer outside the region is a linear layer (corrected), or reads the value materialised
        from the cache (then the region node must be in zero state)."""
        downstream = _downstream(masks)
        firsts = [m for m in masks if m not in downstream]
        per_unit = layer.points[firsts[0].target]
        if any(layer.points[m.target] != per_unit for m in firsts):
            return None
        dim = _channel_dim(self.modules[firsts[0].target])
        zero: dict[fx.Node, bool] = {}
        for n in self.nodes:
            if n in firsts:
                zero[n] = True
                continue
            ins = n.all_input_nodes
            if len(ins) == 1 and ins[0] in zero:
                step = _per_channel(n, ins[0], self.modules, layer, dim)
                if step == "mask" and layer.points[n.target] != per_unit:
                    step = None
                if step is not None:
                    zero[n] = True if step == "mask" else (zero[ins[0]] and step == "zero")
        hooked = set(self.masker._keep) | set(self.masker._keep_heads)
        corrections, materialize = [], []
        for r, is_zero in zero.items():
            exits = [u for u in r.users if u not in zero]
            if not exits:
                continue
            if not is_zero:
                return None
            rest = []
            for u in exits:
                mod = self.modules.get(u.target) if u.op == "call_module" else None
                if (mod is not None and _mixes_channels(mod) and u.args == (r,) and not u.kwargs
                        and u.target not in hooked and not mod._forward_hooks and not mod._forward_pre_hooks
                        and _layout_ok(mod, dim, self._ndim.get(r))):
                    corrections.append(Correction(u, r, [[i] for i in per_unit], mod))
                else:
                    rest.append(u)
            if rest:
                materialize.append(r)
        return corrections, materialize, per_unit, dim

    def _checked_plan(self, layer: UnitLayer, example: Tensor) -> Plan | None:
        try:
            plan = self._plan(layer)
        except Exception as exc:  # noqa: BLE001
            self.layer_fallbacks[layer.name] = f"no plan ({type(exc).__name__}: {exc})"
            return None
        if plan is None:
            self.layer_fallbacks[layer.name] = "none of its mask points is a node of the traced graph"
            return None
        saved = self.masker.removed[layer.name].clone()
        try:
            with torch.inference_mode():
                for units in ([], [0]):
                    self.masker.set(layer.name, list(range(layer.size)), False)
                    self.masker.set(layer.name, units, True)
                    self._plans[layer.name], self._cache = plan, None
                    got = self._logits(example, layer)
                    ref = self.model(example)
                    if not torch.allclose(got, ref, atol=1e-4, rtol=1e-4):
                        self.layer_fallbacks[layer.name] = "its cached plan did not reproduce a full pass"
                        return None
                try:
                    self._check_slices(layer, plan, example)
                except Exception:  # noqa: BLE001 - whole-batch candidates still use the plan
                    plan.sliceable, plan.batched = False, set()
                # candidates stack when they differ only in the values they are given: none of the layer's
                # mask points is recomputed (a coupled group's later points would apply the masks' present
                # state to every stacked row)
                plan.stackable = plan.sliceable and plan.shortcut and not any(
                    n.op == "call_module" and n.target in layer.points for n in plan.dirty)
        except Exception as exc:  # noqa: BLE001
            self.layer_fallbacks[layer.name] = f"its cached plan failed ({type(exc).__name__}: {exc})"
            return None
        finally:
            self.masker.set(layer.name, list(range(layer.size)), False)
            self.masker.set(layer.name, saved.nonzero().flatten().tolist(), True)
            self._cache = self._current = None
        return plan

    def _check_slices(self, layer: UnitLayer, plan: Plan, example: Tensor) -> None:
        """Find the frontier values whose first dimension is the batch (their rows are sliced for a slice
        of the calibration set; every other value must not depend on the batch) and check that a
        candidate run on each row of a two-sample batch reproduces that row of the whole run. Sets
        :attr:`Plan.sliceable`; a plan that fails is still used for whole-batch candidates."""
        plan.sliceable, plan.batched = False, set()
        pair = torch.cat([example, example.flip(-1)])
        with torch.inference_mode():
            values = []
            for x in (pair, pair[:1]):
                self._cache = self._current = None
                values.append(self._cache_for(layer, plan, x).values[0])
            for n in plan.frontier:
                two, one = values[0][n], values[1][n]
                if (isinstance(two, Tensor) and isinstance(one, Tensor) and two.ndim and two.shape[0] == 2
                        and one.shape[0] == 1 and two.shape[1:] == one.shape[1:]):
                    plan.batched.add(n)
                elif not _same_value(two, one):
                    return  # a value that depends on the batch size but is not batch-major
            for units in ([], [0]):
                self.masker.set(layer.name, list(range(layer.size)), False)
                self.masker.set(layer.name, units, True)
                self._cache = self._current = None
                whole = self._logits(pair, layer)
                _, cache, given, removed = self._begin(layer, pair)
                rows = [self._run_chunk(plan, cache.values[0], given[0] if given else None, removed, ((i, i + 1),))
                        for i in range(2)]
                if not torch.allclose(torch.cat(rows), whole, atol=1e-4, rtol=1e-4):
                    return
        plan.sliceable = True

    # -- the cache -------------------------------------------------------------------------------
    def _state_key(self, layer: UnitLayer, x: Tensor) -> tuple:
        others = tuple((name, tuple(m.nonzero().flatten().tolist()))
                       for name, m in self.masker.removed.items() if name != layer.name)
        return (layer.name, others, x.data_ptr(), tuple(x.shape))

    def _build(self, layer: UnitLayer, plan: Plan, x: Tensor, key: tuple) -> _Cache:
        removed = self.masker.removed[layer.name].clone()
        if plan.shortcut:  # cache the region and L's input and output with none of this layer's units removed
            self.masker.set(layer.name, removed.nonzero().flatten().tolist(), False)
        dirty = set(plan.dirty)
        keep = set(plan.frontier)
        order = [n for n in self.nodes if n not in dirty]
        last = _last_use(order)
        values = []
        try:
            for i0 in range(0, x.shape[0], self.batch_size):
                env = self._run_nodes(order, x[i0 : i0 + self.batch_size], keep, last)
                values.append({n: env[n] for n in plan.frontier})
        finally:
            if plan.shortcut:
                self.masker.set(layer.name, removed.nonzero().flatten().tolist(), True)
        self.forward_equivalents += plan.build_cost
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
            self.forward_equivalents += full * len(idx) / width / self._chunks
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
        plan = self._plans[layer.name]
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
        fresh = plan.fresh
        for node, done in zip(plan.dirty, plan.release):
            env[node] = self._exec(node, env, fresh)
            for a in done:
                del env[a]
        return env[plan.dirty[-1]]

    def _logits_chunks(self, layer: UnitLayer, x: Tensor):
        plan, cache, given, removed = self._begin(layer, x)
        outs = [self._run_chunk(plan, chunk, given[i] if given else None, removed)
                for i, chunk in enumerate(cache.values)]
        self.forward_equivalents += plan.cost
        return outs

    def _logits(self, x: Tensor, layer: UnitLayer) -> Tensor:
        return torch.cat(self._logits_chunks(layer, x))

    def scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer | None = None) -> Tensor:
        if self.graph is None:
            return super().scores(x, y, score, layer)
        if layer is None or self._plans.get(layer.name) is None:
            return FullEngine.scores(self, x, y, score)
        with torch.inference_mode():
            outs = self._logits_chunks(layer, x)
            q = [self._score(o, y, i, score) for o, i in zip(outs, range(0, x.shape[0], self.batch_size))]
        return self._finish(torch.cat(q))

    def _token(self, layer: UnitLayer, x: Tensor, units: list[int] | None = None) -> tuple:
        """The key of a candidate: the calibration tensor and every layer's removed units (``units``: this
        layer's, instead of the masks' own)."""
        state = tuple((name, tuple(sorted(units)) if units is not None and name == layer.name
                       else tuple(m.nonzero().flatten().tolist())) for name, m in self.masker.removed.items())
        return (layer.name, x.data_ptr(), tuple(x.shape), state)

    def can_slice(self, layer: UnitLayer, x: Tensor) -> bool:
        """Whether :meth:`rows_scores` computes only the rows asked for: a graph plan checked on slices
        whose cache holds ``x`` in one chunk, or a layer analysed with full passes (a pass over the rows)."""
        if self.graph is None:
            return super().can_slice(layer, x)
        plan = self._plans.get(layer.name)
        if plan is None:
            return self.masks is None
        return plan.sliceable and self.masks is None and x.shape[0] <= self.batch_size

    def rows_scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, rows: Rows) -> Tensor:
        """The scores of the calibration samples in ``rows`` (``(start, stop)`` ranges) for the current
        candidate; the other rows are not computed. Needs :meth:`can_slice`; several calls for one
        candidate share its corrections, and a result :meth:`stack_rows` computed for this exact mask
        state is taken instead of a pass."""
        if self.graph is None or self._plans.get(layer.name) is None:
            return FullEngine.rows_scores(self, x, y, score, layer, rows)
        if not self.can_slice(layer, x):
            raise ValueError(f"layer {layer.name!r} cannot be scored on part of the calibration set")
        rows = tuple(rows)
        if self._stacked:
            q = self._stacked.pop((self._token(layer, x), rows), None)
            if q is not None:
                return q
        with torch.inference_mode():
            plan, cache, given, removed = self._begin(layer, x)
            logits = self._run_chunk(plan, cache.values[0], given[0] if given else None, removed, rows)
            q = true_class_scores(logits, take_rows(y, rows), score)
        self.forward_equivalents += plan.cost * row_count(rows) / x.shape[0]
        return q

    def can_stack(self, layer: UnitLayer, x: Tensor) -> bool:
        """Whether :meth:`stack_rows` applies: a sliceable plan that reads the layer's region from the
        cache and recomputes none of its mask points (every candidate's difference is in its given
        values, none in the masks' hooks)."""
        plan = self._plans.get(layer.name) if self.graph is not None else None
        return plan is not None and plan.stackable and self.can_slice(layer, x)

    def stack_rows(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, others: list[list[int]],
                   rows: Rows) -> None:
        """Score ``rows`` for the current candidate and, in the same pass, for the states in which it is
        restored and each unit group of ``others`` is removed instead: one batch of
        ``(1 + len(others))`` times the rows. The results wait for :meth:`rows_scores`, which takes one
        only when the masks are exactly in its state: a speculation that does not come true costs work,
        never a decision (cswap_nb/METHOD.md §10)."""
        rows = tuple(rows)
        with torch.inference_mode():
            plan, cache, given, _ = self._begin(layer, x)
            chunk = cache.values[0]
            now = self.masker.removed[layer.name]
            current = now.nonzero().flatten().tolist()
            under_test = set((now & ~cache.base).nonzero().flatten().tolist())
            kept = [u for u in current if u not in under_test]  # removed before this candidate
            states = [(current, {n: take_rows(v, rows) for n, v in given[0].items()} if given else {})]
            for units in others:
                removed = sorted(set(kept) | set(units))
                extra = [u for u in removed if not bool(cache.base[u])]
                states.append((removed, self._corrected_rows(plan, chunk, extra, rows)))
            env = {n: (torch.cat([take_rows(v, rows)] * len(states)) if n in plan.batched else v)
                   for n, v in chunk.items()}
            for corr in plan.corrections:
                env[corr.node] = torch.cat([g[corr.node] for _, g in states])
            for r in plan.materialize:
                parts = []
                for removed, _ in states:
                    v = take_rows(chunk[r], rows, copy=True)
                    if removed:
                        _zero_channels(v, [plan.channels[u] for u in removed], plan.dim != 1)
                    parts.append(v)
                env[r] = torch.cat(parts)
            logits = self._dirty_run(plan, env)
            n, ys = row_count(rows), take_rows(y, rows)
            self._stacked = {}
            for i, (removed, _) in enumerate(states):
                q = true_class_scores(logits[i * n : (i + 1) * n], ys, score)
                self._stacked[(self._token(layer, x, removed), rows)] = q
        self.forward_equivalents += plan.cost * n * len(states) / x.shape[0]

    def clear_stacked(self) -> None:
        """Forget the results :meth:`stack_rows` computed in advance."""
        self._stacked = {}

    def _corrected_rows(self, plan: Plan, chunk: dict, units: list[int], rows: Rows) -> dict:
        """:meth:`_corrected` on ``rows`` only, for a speculated candidate."""
        out = {}
        for corr in plan.corrections:
            base = take_rows(chunk[corr.node], rows)
            if not units:
                out[corr.node] = base.clone()
                continue
            idx = [i for u in units for i in corr.channels[u]]
            out[corr.node] = base - corr.partial(take_rows(chunk[corr.input], rows), idx)
        return out


def _last_use(order: list) -> dict:
    """For every node that a node of ``order`` reads, the position in ``order`` of its last reader."""
    return {a: i for i, n in enumerate(order) for a in n.all_input_nodes}


def _downstream(starts) -> set:
    """Every node that reads, directly or not, one of ``starts``."""
    seen, stack = set(), list(starts)
    while stack:
        n = stack.pop()
        for u in n.users:
            if u not in seen:
                seen.add(u)
                stack.append(u)
    return seen


def _zero_channels(v: Tensor, idx: list[int], last_dim: bool) -> None:
    """Set channels ``idx`` of ``v`` to 0 in place (dim 1, or the last dim for token layouts)."""
    if last_dim:
        v[..., idx] = 0
    else:
        v[:, idx] = 0


def _layout_ok(mod: nn.Module, dim: int, ndim: int | None) -> bool:
    """Whether ``mod`` mixes the region's channel dimension (a conv: dim 1; a linear: the last)."""
    if isinstance(mod, nn.Linear):
        return dim == -1 or ndim == 2
    return dim == 1


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


def _mixes_channels(mod: nn.Module) -> bool:
    """A layer the correction applies to: a linear or an ungrouped, zero-padded conv."""
    if isinstance(mod, nn.Linear):
        return True
    return (isinstance(mod, nn.modules.conv._ConvNd) and not mod.transposed and mod.groups == 1
            and mod.padding_mode == "zeros")


def _per_channel(node: fx.Node, prev: fx.Node, modules: dict, layer: UnitLayer, dim: int = 1) -> str | None:
    """How ``node`` (whose only tensor input is ``prev``) treats a zeroed channel: ``"mask"`` (one of
    the layer's mask points: zero again), ``"zero"`` (f(0) = 0, per channel), ``"nonzero"`` (per
    channel, f(0) may differ from 0: a later mask point must zero it), or None (mixes channels or
    reads anything else: no correction)."""
    if node.args[:1] != (prev,) or any(isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values())):
        return None
    if node.op == "call_module":
        mod = modules[node.target]
        if node.target in layer.points:
            return "mask" if isinstance(mod, nn.modules.batchnorm._NormBase) or is_depthwise(mod) else None
        if isinstance(mod, ZERO_MODULES) or (dim == 1 and isinstance(mod, POOLS)):
            return "zero"
        if is_depthwise(mod):
            return "zero" if mod.bias is None and mod.padding_mode == "zeros" else "nonzero"
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            return "nonzero"
        return None
    if node.op == "call_function" and node.target in ZERO_FUNCTIONS:
        return "zero"
    if node.op == "call_method" and node.target in ZERO_METHODS:
        return "zero"
    return None


def make_engine(kind: str, model: nn.Module, masker: Masker, example: Tensor) -> FullEngine:
    """The scoring engine of the option ``engine`` (cswap_nb/METHOD.md §10): ``"fast"`` (:class:`GraphEngine`),
    ``"naive"`` (:class:`~cswap_nb.engine.FullEngine`: one full pass per candidate, the reference) or
    ``"parts"`` (:class:`~cswap_nb.engine.PrefixEngine`, the family's parts only)."""
    if kind == "naive":
        return FullEngine(model, masker)
    if kind == "fast":
        return GraphEngine(model, masker, example)
    if kind == "parts":
        return PrefixEngine(model, masker, example)
    raise ValueError(f"engine must be one of 'fast', 'naive', 'parts', got {kind!r}")
