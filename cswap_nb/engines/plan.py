"""Planning for the fast engine (cswap_nb/engines/graph.py): what a candidate of one unit layer recomputes.

Reads the traced graph only, runs nothing: which nodes are downstream of the layer's mask points
(``dirty``), which values they read from the cache (``frontier``), and where the per-channel region
after the masks ends in a layer that mixes channels, whose output is corrected linearly
(:class:`Correction`) instead of recomputed (cswap_nb/METHOD.md §10).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from timm.layers import get_notrace_functions, is_notrace_module
from torch import Tensor, nn

from ..core.units import UnitLayer, channel_dim, is_depthwise

# per-channel operations with f(0) = 0: a zeroed channel stays zero, the others are untouched
ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.Tanh, nn.LeakyReLU, nn.ELU,
                nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
ZERO_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.mish, torch.tanh, F.leaky_relu,
                  F.elu, F.hardtanh, F.dropout}
ZERO_METHODS = {"relu", "tanh", "relu_"}
# pooling over positions: per channel (channels-first tensors only), a zero channel pools to zero
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d)
# the convs and norms that fold_norms folds: torch's own classes, whose forward is the conv or the norm alone
PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
PLAIN_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, torch.relu_}


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer, with timm's untraceable layers and functions kept as leaves."""

    def __init__(self):
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_notrace_module(type(m)) or super().is_leaf_module(m, qualname)


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
    norm: nn.Module | None = None  # the BatchNorm after L whose output the cache holds instead (fold_norms)
    weight: Tensor | None = None  # then L's weight with the norm's scale folded in

    @property
    def last_dim(self) -> bool:
        """Whether ``L`` mixes the last dimension (a linear) rather than dim 1 (a conv)."""
        return isinstance(self.module, nn.Linear)

    def partial(self, v: Tensor, idx: list[int]) -> Tensor:
        m = self.module
        w = m.weight if self.weight is None else self.weight
        if self.last_dim:
            return F.linear(v[..., idx], w[:, idx])
        return m._conv_forward(v[:, idx], w[:, idx], None)

    def normed(self, out: Tensor) -> Tensor:
        """L's cached output ``out`` as the cache holds it: through :attr:`norm` (its hooks aside), if any."""
        bn = self.norm
        if bn is None:
            return out
        return F.batch_norm(out, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


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
    row_points: list[str] = field(default_factory=list)  # the layer's mask points a candidate recomputes
    thin: dict = field(default_factory=dict)  # dirty layers run on the kept channels only (thin_inputs)
    folds: dict = field(default_factory=dict)  # conv -> its BatchNorm, run as one conv (fold_norms)
    norms: set = field(default_factory=set)  # BatchNorms whose conv ran them: only their hooks run (fold_norms)
    shared: set = field(default_factory=set)  # those of norms whose unmasked output is a cached value: copied
    reuse: dict = field(default_factory=dict)  # sums written into one of their inputs' memory (reused_sums)

    def __post_init__(self):
        # values a candidate computes itself and keeps no further: in-place ops may work on them. The
        # corrections' outputs are not among them: they are kept to fold a removal into the cache.
        self.fresh = set(self.dirty) | set(self.materialize)

    @property
    def shortcut(self) -> bool:
        """Whether candidates read the region or L from the cache (else: masks run with hooks)."""
        return bool(self.corrections or self.materialize)


def node_costs(nodes: list[fx.Node], value_of) -> tuple[dict, dict]:
    """Each node's share of a forward pass's FLOPs and the number of dimensions of its output, from one
    pass in which ``value_of(node, env)`` computes each node's value (``env``: the values so far)."""
    from torch.utils.flop_counter import FlopCounterMode

    env, costs, ndim = {}, {}, {}
    with torch.inference_mode():
        for node in nodes:
            if node.op == "placeholder":
                env[node] = value_of(node, env)
                continue
            with FlopCounterMode(display=False) as counter:
                env[node] = value_of(node, env)
            costs[node] = float(counter.get_total_flops())
            if isinstance(env[node], Tensor):
                ndim[node] = env[node].ndim
    total = sum(costs.values()) or 1.0
    return {n: c / total for n, c in costs.items()}, ndim


@dataclass
class GraphView:
    """What planning reads of a traced model: its nodes in order, its modules by name, each node's share
    of a forward pass's FLOPs and its output's number of dimensions, and the modules a masker hooks."""

    nodes: list[fx.Node]
    modules: dict[str, nn.Module]
    costs: dict[fx.Node, float]
    ndim: dict[fx.Node, int]
    hooked: set[str]


def plan_layer(g: GraphView, layer: UnitLayer) -> Plan | None:
    """What a candidate of ``layer`` recomputes and reads (None: no mask point of the layer is a node)."""
    masks = [n for n in g.nodes if n.op == "call_module" and n.target in layer.points]
    if not masks:
        return None
    shortcut = _heads(g, layer, masks) if layer.kind == "heads" else _region(g, layer, masks)
    corrections, materialize, channels, dim, region = shortcut if shortcut is not None else ([], [], [], 1, set())
    given = {c.node for c in corrections} | set(materialize)  # values a candidate gets without running
    if shortcut is None:
        dirty = downstream(masks) | set(masks)
    else:
        # a region node is never recomputed: what reads it outside the region is given its value (a GhostNet
        # module materialises both its primary branch and the cheap branch computed from it)
        exits = {u for r in materialize for u in r.users if u not in given and u not in region}
        dirty = (downstream(given) | exits) - given - region
    dirty_list = [n for n in g.nodes if n in dirty]
    stale = next((n for n in g.nodes if n not in dirty and any(i in dirty for i in n.all_input_nodes)), None)
    if stale is not None:  # the cache would be built from a value it does not compute
        raise ValueError(f"{stale.name} is read from the cache but reads a recomputed value")
    frontier = {i for d in dirty_list for i in d.all_input_nodes if i not in dirty and i not in given}
    needed = frontier | given | {c.input for c in corrections}
    cost = sum(g.costs.get(n, 0.0) for n in dirty_list)
    build = sum(g.costs.get(n, 0.0) for n in g.nodes if n not in dirty)
    # free each recomputed value after its last use: a run that keeps them all allocates fresh
    # memory for every op, and page faults then cost as much as the arithmetic (2x on the ViT)
    release: list[list[fx.Node]] = [[] for _ in dirty_list]
    for a, i in last_use(dirty_list).items():
        if a in dirty or a in given:
            release[i].append(a)
    return Plan(dirty_list, [n for n in g.nodes if n in needed], corrections, cost, build,
                [g.costs.get(c.node, 0.0) for c in corrections], materialize, channels, dim, release)


def thin_inputs(g: GraphView, dirty: list[fx.Node], points: set[str]) -> dict[fx.Node, str]:
    """The layers among ``dirty`` that mix channels (a linear, an ungrouped conv) and read, through per-channel
    operations with f(0) = 0 only, the output of a channel mask point (``points``) that the same run
    recomputes: ``{node: the mask point's module name}``. Every channel the masks zero there is zero in the
    layer's input, so the layer can run on the kept channels alone (:func:`~cswap_nb.engines.graph._thin_run`):
    the units already removed cost no multiplications, as in the compacted network. Values read from the cache
    are left out: their zeros are the cache's, not the masks'."""
    inside, out = set(dirty), {}
    for node in dirty:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        mod = g.modules[node.target]  # its own hooks: the masker's on a mask point only (run after it)
        if (not _mixes_channels(mod) or mod._forward_pre_hooks
                or (mod._forward_hooks and node.target not in points)):
            continue
        linear = isinstance(mod, nn.Linear)
        prev = node.args[0]
        while isinstance(prev, fx.Node) and prev in inside and prev.op in ("call_module", "call_function",
                                                                         "call_method"):
            if prev.op == "call_module" and prev.target in points:
                dim = channel_dim(g.modules[prev.target])
                if (dim == -1 or g.ndim.get(prev) == 2) if linear else dim == 1:
                    out[node] = prev.target
                break
            if not _keeps_zeros(prev, g, channels_first=not linear):
                break
            prev = prev.args[0]
    return out


def fold_norms(g: GraphView, plan: Plan, points: set[str]) -> None:
    """Let ``plan``'s candidates skip the eval-mode BatchNorms that read a conv alone: a recomputed conv and
    its norm run as one conv whose weights fold in the norm's scale and shift (:attr:`Plan.folds`,
    :func:`~cswap_nb.engines.graph._fold_run`); a correction's layer followed by
    such a norm caches the norm's output and corrects it with the folded weights (:attr:`Correction.norm`).
    The norm node then only applies its mask hook (:attr:`Plan.norms`). The same values up to float
    reassociation, without the norm's own pass over the output (17% of a ResNet50 analysis's time,
    METHOD.md §10). ``points``: the masker's channel mask points, whose hooks read only the output."""
    for node in plan.dirty:
        norm = _foldable(g, node, points)
        if norm is not None and norm in plan.fresh:
            plan.folds[node] = norm
    for corr in plan.corrections:
        norm = None if corr.last_dim else _foldable(g, corr.node, points)
        if norm is not None and norm in plan.fresh:
            corr.norm = g.modules[norm.target]
            corr.weight = folded(corr.module, corr.norm)[0]
            plan.norms.add(norm)
            if not all(_makes_new(u, g.modules) for u in norm.users):
                plan.shared.add(norm)
    plan.norms.update(plan.folds.values())


def reused_sums(g: GraphView, plan: Plan) -> None:
    """The sums among the recomputed nodes (a residual add) that can be written into the memory of one of their
    two inputs: a value the same run computed into a tensor of its own (a conv, a linear, a norm, a sum) that
    no later node reads. ``plan.reuse`` maps each such sum to that input's position; the run adds in place
    when both tensors have the same shape, strides and type (:meth:`GraphEngine._dirty_run
    <cswap_nb.engines.graph.GraphEngine>`). The sum is the same, bit for bit; it saves the allocation of a
    new output, which on this CPU costs page faults as much as the addition (a 24-MB sum took 34 ms)."""
    pos = {n: i for i, n in enumerate(plan.dirty)}
    last = last_use(plan.dirty)
    owned = set()
    for node in plan.dirty:
        if node in plan.norms:
            if node in plan.folds.values():  # its conv's output, which only it reads
                owned.add(node)
            continue
        if node.op == "call_module" and _makes_new(node, g.modules) and not g.modules[node.target]._forward_hooks:
            owned.add(node)
        if node.op != "call_function" or node.target not in (operator.add, torch.add) or node.kwargs:
            continue
        owned.add(node)  # a new tensor, or the memory of an input it owned
        if len(node.args) != 2 or node.args[0] is node.args[1] or not all(isinstance(a, fx.Node) for a in node.args):
            continue  # a sum with a constant is left as it is
        for k, a in enumerate(node.args):
            if a in owned and len(a.users) == 1 and last.get(a) == pos[node]:  # no other reader, not even an alias
                plan.reuse[node] = k
                break


def _makes_new(node: fx.Node, modules: dict) -> bool:
    """Whether ``node`` reads its inputs without changing them and returns a new tensor (a layer, a sum, a
    concatenation): a value it reads may be one the cache keeps."""
    if node.op == "call_module":
        mod = modules[node.target]
        return isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm))
    return node.op == "call_function" and node.target in (operator.add, torch.add, torch.cat, operator.mul)


def _foldable(g: GraphView, node: fx.Node, points: set[str]) -> fx.Node | None:
    """The eval-mode BatchNorm that alone reads conv ``node``'s output, where the two can run as one conv: no
    hooks on the conv, none on the norm but a channel mask point's (``points``)."""
    if node.op != "call_module" or len(node.users) != 1 or len(node.args) != 1 or node.kwargs:
        return None
    norm = next(iter(node.users))
    conv = g.modules[node.target]
    if (norm.op != "call_module" or norm.args != (node,) or norm.kwargs or type(conv) not in PLAIN_CONVS
            or conv.training or conv._forward_hooks or conv._forward_pre_hooks or node.target in g.hooked
            or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks):
        return None
    bn = g.modules[norm.target]
    # torch's own classes only: a subclass may do more in its forward (timm's BatchNormAct2d: an activation)
    if (type(bn) not in PLAIN_NORMS or bn.training or bn.running_mean is None
            or bn.running_var is None or bn.num_features != conv.out_channels or bn._forward_pre_hooks
            or bn._forward_hooks_with_kwargs or len(bn._forward_hooks) != (1 if norm.target in points else 0)):
        return None
    return norm


def folded(conv: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """The weight and bias of one conv computing ``bn(conv(x))`` (eval mode), by torch's own fusion."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    with torch.inference_mode(False), torch.no_grad():
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                    bn.bias)
    return w.detach(), b.detach()


def _keeps_zeros(node: fx.Node, g: GraphView, channels_first: bool) -> bool:
    """Whether ``node`` is a per-channel operation of one tensor with f(0) = 0 that no hook changes."""
    if not node.args or any(isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values())):
        return False
    if node.op == "call_module":
        mod = g.modules[node.target]
        return (node.target not in g.hooked and not mod._forward_hooks and not mod._forward_pre_hooks
                and (isinstance(mod, ZERO_MODULES) or (channels_first and isinstance(mod, POOLS))))
    if node.op == "call_function":
        return node.target in ZERO_FUNCTIONS
    return node.op == "call_method" and node.target in ZERO_METHODS


def _heads(g: GraphView, layer: UnitLayer, masks: list[fx.Node]):
    out = []
    for m in masks:
        mod = g.modules[m.target]
        if not (isinstance(mod, nn.Linear) and len(m.args) == 1 and not m.kwargs):
            return None
        d, per_unit = layer.head_dim, layer.points[m.target]
        out.append(Correction(m, m.args[0], [list(range(h * d, (h + 1) * d)) for h in per_unit], mod))
    return out, [], [], -1, set()


def _region(g: GraphView, layer: UnitLayer, masks: list[fx.Node]):
    """The per-channel region after the layer's first mask points: ``(corrections, materialized
    nodes, channel per unit, channel dim, the region's nodes)``, or None when a candidate must run all
    downstream nodes.

    A region node's value for a candidate is its cached value with the removed units' channels
    set to 0 (zero state) or unknown (a BatchNorm or biased depthwise conv after the zero); a
    consumer outside the region is a linear layer (corrected), or reads the value materialised
    from the cache (then the region node must be in zero state)."""
    below = downstream(masks)
    firsts = [m for m in masks if m not in below]
    per_unit = layer.points[firsts[0].target]
    if (any(layer.points[m.target] != per_unit for m in firsts) or layer.slots is not None
            or any(isinstance(g.modules[m.target], nn.LayerNorm) for m in masks)):
        # a unit of several channels (a grouped conv's slot), or a LayerNorm mask point (recomputed, not
        # zeroed, for a candidate): every downstream node runs
        return None
    dim = channel_dim(g.modules[firsts[0].target])
    zero: dict[fx.Node, bool] = {}
    for n in g.nodes:
        if n in firsts:
            zero[n] = True
            continue
        ins = n.all_input_nodes
        if len(ins) == 1 and ins[0] in zero:
            step = _per_channel(n, ins[0], g.modules, layer, dim)
            if step == "mask" and layer.points[n.target] != per_unit:
                step = None
            if step is not None:
                zero[n] = True if step == "mask" else (zero[ins[0]] and step == "zero")
    corrections, materialize = [], []
    for r, is_zero in zero.items():
        exits = [u for u in r.users if u not in zero]
        if not exits:
            continue
        if not is_zero:
            return None
        rest = []
        for u in exits:
            mod = g.modules.get(u.target) if u.op == "call_module" else None
            if (mod is not None and _mixes_channels(mod) and u.args == (r,) and not u.kwargs
                    and u.target not in g.hooked and not mod._forward_hooks and not mod._forward_pre_hooks
                    and _layout_ok(mod, dim, g.ndim.get(r))):
                corrections.append(Correction(u, r, [[i] for i in per_unit], mod))
            else:
                rest.append(u)
        if rest:
            materialize.append(r)
    return corrections, materialize, per_unit, dim, set(zero)


def last_use(order: list) -> dict:
    """For every node that a node of ``order`` reads, the position in ``order`` of its last reader."""
    return {a: i for i, n in enumerate(order) for a in n.all_input_nodes}


def downstream(starts) -> set:
    """Every node that reads, directly or not, one of ``starts``."""
    seen, stack = set(), list(starts)
    while stack:
        n = stack.pop()
        for u in n.users:
            if u not in seen:
                seen.add(u)
                stack.append(u)
    return seen


def _layout_ok(mod: nn.Module, dim: int, ndim: int | None) -> bool:
    """Whether ``mod`` mixes the region's channel dimension (a conv: dim 1; a linear: the last)."""
    if isinstance(mod, nn.Linear):
        return dim == -1 or ndim == 2
    return dim == 1


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
