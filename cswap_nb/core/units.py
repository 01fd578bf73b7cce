"""Prunable units, found with Torch-Pruning's dependency graph, and the masks that remove them.

A *unit layer* is one group of coupled channels as Torch-Pruning's ``DependencyGraph``
sees it: removing channel ``i`` of the group's root layer removes channel ``i`` of every
coupled producer and the matching inputs of every consumer. A *unit* is one index of it, or, where
grouped convolutions read or write the channels, one *slot* of several (:func:`grouped_slots`).

``scope="internal"`` keeps the groups with a single producer (the channels inside a
residual block, hidden units of an MLP); ``scope="all"`` adds the coupled groups (the
residual stream of a ResNet stage, tested as one coupled unit per channel).

The intervention ``do(unit = 0)`` is a forward hook that zeroes the unit's channel at
every producer's output *after* its BatchNorm (zeroing conv weights would leave BN's
shift alive), which is exactly what physical removal does.

Per family (cswap_nb/METHOD.md §4):

* ResNets: the channels inside a block (BasicBlock conv1; Bottleneck conv1, conv2).
* MobileNetV2: the expanded channels of an inverted residual. Torch-Pruning couples the
  expand 1x1 conv, its BN, the depthwise conv and its BN (and the project conv's inputs)
  in one group. A depthwise conv maps channel ``i`` to channel ``i`` only, so it is a
  *pass-through*, not a second producer: the group is one ``"internal"`` unit layer
  anchored at the expand conv. Both BNs are mask points; masking the first is undone by
  nothing (ReLU6(0) = 0, the depthwise filter of a zero channel gives 0) and masking the
  last removes the depthwise BN's shift, so masked == physically pruned.
* ViT (timm): MLP hidden units (``fc1`` outputs; GELU(0) = 0, so zeroing ``fc1``'s output
  equals zeroing after the GELU) and whole attention heads (``kind="heads"``, below).
  The embedding stream is read by every block's q/k/v, so it is never a unit layer (only whole heads).
* Channels normalised by a LayerNorm (a ConvNeXt's residual stream, under ``scope="all"``): zeroing a channel
  would leave it in the norm's mean and variance, so the masker recomputes each such LayerNorm over the kept
  channels (:func:`masked_layer_norm`), which equals the smaller norm removal leaves. GroupNorm channels are
  never units: a removed channel changes which channels share a group.

Attention heads are not a Torch-Pruning group: unit ``h`` of a ``"heads"`` layer is the
``q``, ``k`` and ``v`` rows of head ``h`` in ``attn.qkv`` plus the matching input columns of
``attn.proj``. The mask zeroes that head's slice of the attention output just before
``proj`` (a forward pre-hook); :func:`cswap_nb.core.surgery.remove_units` slices the weights and
updates ``num_heads`` and ``attn_dim`` (``head_dim`` and the softmax scale are unchanged).
"""
from __future__ import annotations

import copy
import math
import traceback
import itertools
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch_pruning.dependency import index_mapping as _tp_index_mapping

from .config import SCOPES
from ..models.families import family_of
from ..models.families.attention import head_attention_modules, head_removal, head_weights  # noqa: F401 (re-exported)

PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class UnitLayer:
    """One prunable group of channels.

    ``name``: the root module (anchor) whose output channels index the units; for
    ``kind="heads"`` the attention module whose heads are the units;
    ``kind``: ``"internal"`` (one producer), ``"coupled"`` (several, e.g. a residual stream)
    or ``"heads"`` (attention heads);
    ``points``: module name -> channel index per unit, where the mask is applied (for
    ``"heads"``: ``{attn.proj: head index per unit}``, applied to ``proj``'s *input*);
    ``magnitude``: L1 norm of each unit's filters summed over producers (visiting order);
    ``magnitude_l2``: L2 norm of each unit's filters over all producers;
    ``position``: execution index of the anchor in a forward pass (layer order);
    ``head_dim``: channels per head (``"heads"`` layers only, else 0);
    ``auto_group``: how many units are tested together when ``group_size=None`` (auto,
    cswap_nb/METHOD.md §3, :func:`auto_group_size`): 4 for wide transformer MLP layers, enough for at most 256
    tests in other fully connected layers wider than 1,024 units, else 1;
    ``slots``: for channels that feed (or leave) a grouped convolution, the anchor's channels of each unit
    (:func:`grouped_slots`: slot *j* of every group, removed together); then each ``points`` entry is the
    list of that unit's channels. None: one channel per unit, unit *u* is the anchor's channel *u*.
    """

    name: str
    kind: str
    size: int
    points: dict[str, list[int] | list[list[int]]]
    magnitude: Tensor
    position: int
    producers: list[str] = field(default_factory=list)
    magnitude_l2: Tensor | None = None
    head_dim: int = 0
    auto_group: int = 1
    slots: list[list[int]] | None = None


# Neuron groups on by default (group_size=None): transformer MLP layers wider than this
# test AUTO_GROUP_SIZE consecutive units of the magnitude order at a time.
AUTO_GROUP_SIZE = 4
AUTO_GROUP_THRESHOLD = 256
# Any other fully connected layer wider than AUTO_DENSE_THRESHOLD units (a VGG or AlexNet classifier's 4,096
# hidden units) is tested in groups that leave it at most AUTO_DENSE_TESTS tests: one by one, such a layer alone
# would cost thousands of tests (issue "any model").
AUTO_DENSE_THRESHOLD = 1024
AUTO_DENSE_TESTS = 256


def auto_group_size(module: nn.Module, size: int, in_transformer: bool) -> int:
    """How many units of a unit layer whose anchor is ``module`` are tested together by default."""
    if not isinstance(module, nn.Linear):
        return 1
    if in_transformer and size > AUTO_GROUP_THRESHOLD:
        return AUTO_GROUP_SIZE
    if size > AUTO_DENSE_THRESHOLD:
        return -(-size // AUTO_DENSE_TESTS)
    return 1

STAT_NORMS = (nn.LayerNorm, nn.GroupNorm)  # a removed channel changes their statistics

# Why a channel group of the dependency graph holds no units (cswap_nb/METHOD.md §4): the keys of
# Coverage.excluded. EXCLUSION_ORDER is the order in which the parameters outside the units are
# given a reason, each counted once (a weight whose rows and columns two groups slice goes to the
# first): first what an option changes (scope=, ignored_layers=), then what no option changes. So
# the share of the residual streams is exactly what scope="all" adds to the units' share.
COUPLED_STREAM = "coupled across a residual sum (scope='internal'; scope='all' tests them)"
FAMILY_SCOPE = "outside the family's internal units (scope='internal'; scope='all' tests them)"
IGNORED_LAYER = "ignored layer (ignored_layers=)"
OUTPUT_LAYER = "output layer (the classifier)"
AUXILIARY_HEAD = "auxiliary head (runs in training only)"
QKV_ROWS = "attention q/k/v (units only as whole heads)"
GROUPED_CONV = "feeds a grouped convolution with other channels (no whole slots)"
STAT_NORM = "channels coupled to GroupNorm (or a LayerNorm of another layout)"
NOT_ONE_TO_ONE = "not a one-to-one channel mapping"
NO_MASK_POINT = "no conv/linear/norm output to mask"
NO_GROUP = "in no channel group"
EXCLUSION_ORDER = (COUPLED_STREAM, FAMILY_SCOPE, IGNORED_LAYER, OUTPUT_LAYER, AUXILIARY_HEAD, QKV_ROWS,
                   GROUPED_CONV, STAT_NORM, NOT_ONE_TO_ONE, NO_MASK_POINT, NO_GROUP)


@dataclass(frozen=True)
class Coverage:
    """Which share of a model's parameters its units cover (:func:`unit_coverage`).

    ``params``: all parameters of the model (as :func:`cswap_nb.core.surgery.count_params` counts them);
    ``in_units``: the parameters removed if every unit of every unit layer were removed, as
    Torch-Pruning's dependency graph removes them: a unit's producers' filters (weights, bias, its
    BatchNorm's affine parameters) and the matching input weights of its consumers; for attention
    heads the ``qkv`` rows and ``proj`` columns. Each element of a weight is counted once, also when
    two unit layers slice it (rows by one, columns by the other);
    ``removable``: the same with one unit kept in every unit layer (no strategy removes a layer's
    last unit): the most any target can remove;
    ``excluded``: the parameters outside the units, by reason (:data:`EXCLUSION_ORDER`: each
    element is counted under the first reason whose channel groups would remove it; parameters in
    no channel group at all come last);
    ``scope``: the scope the units were found with;
    ``footprints``: what removing units costs each parameter (:class:`Footprints`), from the same
    trace; None when some unit's removal is not a slice of whole rows or columns.
    ``in_units + sum(excluded.values()) == params``.
    """

    params: int
    in_units: int
    removable: int
    excluded: dict[str, int]
    scope: str = "internal"
    footprints: dict | None = field(default=None, repr=False, compare=False)

    @property
    def share(self) -> float:
        """``in_units / params``, in [0, 1]."""
        return self.in_units / self.params if self.params else 0.0

    @property
    def removable_share(self) -> float:
        """``removable / params``, in [0, 1]."""
        return self.removable / self.params if self.params else 0.0

    @property
    def reasons(self) -> dict[str, float]:
        """The share of all parameters outside the units per reason, largest first."""
        shares = {reason: n / self.params for reason, n in self.excluded.items() if n} if self.params else {}
        return dict(sorted(shares.items(), key=lambda kv: -kv[1]))

    def as_dict(self) -> dict:
        """The summary's numbers: the share in units, the most removable, each reason, in percent."""
        return {"units_param_share_pct": round(100 * self.share, 3),
                "units_removable_pct": round(100 * self.removable_share, 3),
                "units_excluded_pct": {reason: round(100 * v, 3) for reason, v in self.reasons.items()}}

    def __str__(self) -> str:
        """Two lines: the share and the most removable; the reasons for the rest (those of 0.05% or more)."""
        head = (f"units cover {_pct(self.share)} of the {self.params:,} parameters (scope={self.scope!r}; "
                f"at most {_pct(self.removable_share)} removable, every layer keeping one unit)")
        shown = {reason: v for reason, v in self.reasons.items() if v >= 0.0005}
        if not shown:
            return head
        return head + "\noutside the units: " + "; ".join(f"{reason}: {_pct(v)}" for reason, v in shown.items())


def _pct(share: float) -> str:
    """A share as a percentage: one decimal, or two significant digits below 1% (0.058%, not 0.1%)."""
    pct = 100 * share
    return f"{pct:.2g}%" if 0 < pct < 1 else f"{pct:.1f}%"


def is_depthwise(module: nn.Module) -> bool:
    """A conv mapping each channel to itself only (MobileNet's depthwise conv)."""
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def channel_dim(module: nn.Module) -> int:
    """The dimension of ``module``'s output that holds its units: the last for a linear layer or a
    LayerNorm (token layouts), 1 for the rest (channels-first), including a LayerNorm subclass with its own
    ``forward`` (torchvision's and timm's ``LayerNorm2d`` normalise dim 1 of an NCHW tensor)."""
    if isinstance(module, nn.LayerNorm):
        return 1 if type(module).forward is not nn.LayerNorm.forward else -1
    return -1 if isinstance(module, nn.Linear) else 1


def masked_layer_norm(module: nn.LayerNorm, x: Tensor, keep: Tensor, dim: int) -> Tensor:
    """What ``module`` computes on ``x`` once the channels where ``keep`` is 0 are removed, at full width:
    mean and variance over the kept channels only, the kept channels normalised with their own weight and
    bias, the removed ones 0. Equals the LayerNorm Torch-Pruning shrinks, fed the kept channels."""
    xm = x.movedim(dim, -1) if dim != -1 else x
    k = keep.to(device=x.device, dtype=x.dtype)
    n = k.sum()
    mean = (xm * k).sum(-1, keepdim=True) / n
    centred = (xm - mean) * k
    var = (centred * centred).sum(-1, keepdim=True) / n
    y = centred * torch.rsqrt(var + module.eps)
    if module.weight is not None:
        y = y * module.weight
    if module.bias is not None:
        y = y + module.bias
    y = y * k
    return y.movedim(-1, dim) if dim != -1 else y


def _maskable_norm(module: nn.Module) -> bool:
    """Whether removing a channel of ``module`` can be done by :func:`masked_layer_norm`: a LayerNorm over one
    dimension whose output, for a random input, equals that formula with every channel kept (so its layout is
    the one :func:`channel_dim` says). GroupNorm never: a removed channel changes which channels share a group."""
    if not isinstance(module, nn.LayerNorm) or len(module.normalized_shape) != 1:
        return False
    c, dim = module.normalized_shape[0], channel_dim(module)
    p = next(iter(module.parameters()), None)
    x = torch.randn((2, 3, c) if dim == -1 else (2, c, 2, 3), generator=torch.Generator().manual_seed(0))
    if p is not None:
        x = x.to(p.device, p.dtype)
    try:
        with torch.no_grad():
            expected = module(x)
            ours = masked_layer_norm(module, x, torch.ones(c), dim)
    except Exception:  # noqa: BLE001 - a layout the formula does not fit
        return False
    return expected.shape == ours.shape and bool(torch.allclose(expected, ours, atol=1e-4, rtol=1e-4))


def _hooked_pass(model: nn.Module, example: Tensor, modules, hook) -> None:
    """One forward pass of ``model`` (in eval mode, restored after) on ``example`` with ``hook`` as a forward
    hook of each of ``modules``, removed after."""
    handles = [m.register_forward_hook(hook) for m in modules]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def execution_order(model: nn.Module, example: Tensor) -> dict[nn.Module, int]:
    """Index of the first call of each leaf module in one forward pass (in eval mode)."""
    order: dict[nn.Module, int] = {}

    def record(module, inputs, output) -> None:
        order.setdefault(module, len(order))

    _hooked_pass(model, example, [m for m in model.modules() if len(list(m.children())) == 0], record)
    return order


def output_layer(model: nn.Module, order: dict[nn.Module, int]) -> nn.Module:
    """The last conv/linear executed: the classifier, never pruned."""
    producers = [m for m in order if isinstance(m, PRODUCERS)]
    if not producers:
        raise ValueError("the model has no Conv or Linear layer: nothing to prune")
    return max(producers, key=order.__getitem__)


class _MappingMemo:
    """Torch-Pruning (1.6.1) recomputes every concatenation's, split's and reshape's index mapping at each
    ``get_pruning_group`` call, whatever happened since. The mapping follows from the graph's channel counts,
    which change only when a group is pruned: on a DenseNet169 (82 concatenations) the recomputations took 17 s
    of a 29-s session set-up (profiled). Within :meth:`holding` a graph's mapping is recomputed on the first call
    and after :meth:`stale` (a prune) only; every other graph gets Torch-Pruning's own behaviour."""

    def __init__(self, original: Callable):
        self.original = original
        self.current: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> mapping up to date

    def update(self, graph) -> None:
        state = self.current.get(graph)  # None: not held; False: held, to recompute; True: held, up to date
        if not state:
            self.original(graph)
            if state is False:
                self.current[graph] = True

    @contextmanager
    def holding(self, graph):
        self.current[graph] = False
        try:
            yield graph
        finally:
            self.current.pop(graph, None)

    def stale(self, graph) -> None:
        if graph in self.current:
            self.current[graph] = False


_own = getattr(_tp_index_mapping.update_index_mapping, "__self__", None)
MAPPINGS = _own if isinstance(_own, _MappingMemo) else _MappingMemo(_tp_index_mapping.update_index_mapping)
_tp_index_mapping.update_index_mapping = MAPPINGS.update  # Torch-Pruning's graph looks it up on each call


def build_graph(model: nn.Module, example: Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph. A model with a ``forward_all`` method (DDRNet with its
    auxiliary head) is traced through it, so heads that only run in training are resized too."""
    forward_all = getattr(model, "forward_all", None)
    forward_fn = (lambda m, x: m.forward_all(x)) if callable(forward_all) else None
    try:
        with warnings.catch_warnings():
            # Torch-Pruning's shape inference gives up with this warning: its channel counts could not be
            # inferred, the groups would be wrong, and grouping a Swin Transformer this way filled 24 GiB (swin_t)
            # or failed on a None channel count (swin_s, swin_b). Other warnings pass through untouched.
            warnings.filterwarnings("error", message="Maximum recursive depth", category=UserWarning)
            return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False,
                                                         forward_fn=forward_fn)
    except UserWarning as w:
        if "Maximum recursive depth" not in str(w):
            raise
        raise UnsupportedModel(
            f"Torch-Pruning could not infer the channel counts of {type(model).__name__}'s graph ('{w}' in its "
            "shape inference): its channel groups would be wrong, and finding them can exhaust memory "
            "(torchvision's Swin Transformers do this: their window partition reshapes the spatial positions "
            "into the batch). This model cannot be pruned as it is") from w
    except (ArithmeticError, AttributeError, IndexError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        # e.g. a channel shuffle (ShuffleNetV2: a view that splits the channels into groups, a transpose, a
        # view back), whose index mapping Torch-Pruning 1.x divides by zero: say what failed and what it means.
        # Only Torch-Pruning's own failures: an error in the model's forward, or memory, is the user's to see.
        where = traceback.extract_tb(exc.__traceback__)[-1]
        if "torch_pruning" not in Path(where.filename).parts or "out of memory" in str(exc).lower():
            raise
        raise UnsupportedModel(
            f"Torch-Pruning could not build the dependency graph of {type(model).__name__} "
            f"({type(exc).__name__}: {exc}; in {Path(where.filename).name}:{where.lineno} {where.name}). The units "
            "and their physical removal both come from that graph, so this model cannot be pruned as it is. "
            + ("Its forward reshapes the channel dimension (a channel shuffle or a split into groups), which is "
               "the usual cause; " if "reshape" in str(where.name) else "")
            + "the prunability table (README, 'Which models') lists the torchvision models measured") from exc


class UnsupportedModel(ValueError):
    """A model whose units cannot be found: Torch-Pruning's dependency graph could not be built, or its shape
    inference gave up (``from cswap_nb.core.units import UnsupportedModel``)."""


def _auxiliary_producers(model: nn.Module) -> list[nn.Module]:
    """Convs/linears of heads outside the eval-mode output: resized with their inputs, never units."""
    return [m for h in family_of(model).auxiliary_heads(model) for m in h.modules() if isinstance(m, PRODUCERS)]


def find_unit_layers(
    model: nn.Module,
    example: Tensor,
    scope: str = "internal",
    ignored_layers: list[nn.Module] | None = None,
) -> list[UnitLayer]:
    """All prunable unit layers of ``model``, in execution order of their anchors.

    ``example`` is one input batch (e.g. ``x[:1]``). The classifier (last conv/linear
    executed) and ``ignored_layers`` are never pruned. With ``scope="internal"`` a family's
    adapter may narrow the units (:meth:`cswap_nb.models.families.Family.internal_units`): for a
    torchvision MobileNetV2 the expanded channels of the inverted residuals (expand 1x1 +
    depthwise + BN, cswap_nb/METHOD.md §4); ``scope="all"`` adds the stem, the block outputs
    and the last 1x1 conv. :func:`survey_units` also says which share of the parameters these
    units cover, from the same trace.
    """
    return _survey(model, example, scope, ignored_layers, coverage=False)[0]


def survey_units(
    model: nn.Module,
    example: Tensor,
    scope: str = "internal",
    ignored_layers: list[nn.Module] | None = None,
) -> tuple[list[UnitLayer], Coverage]:
    """:func:`find_unit_layers` and :func:`unit_coverage` from one trace of the model.

    Returns the unit layers (as :func:`find_unit_layers` gives them) and their :class:`Coverage`.
    """
    return _survey(model, example, scope, ignored_layers, coverage=True)


def unit_coverage(
    model: nn.Module,
    example: Tensor,
    scope: str = "internal",
    ignored_layers: list[nn.Module] | None = None,
) -> Coverage:
    """Which share of ``model``'s parameters lies in testable units, and why the rest does not.

    Takes the arguments of :func:`find_unit_layers`. The share is *exact*: it counts the
    parameters that Torch-Pruning would delete if every unit of every unit layer were removed
    (each element of a weight counted once, however many groups slice it); see :class:`Coverage`.
    A ``ratio=`` of a baseline counts units, so a model whose units cover a small share (an EfficientNet under
    ``scope="internal"``, whose blocks' outer channels are coupled by residual sums) loses few parameters at
    any ratio.
    """
    return _survey(model, example, scope, ignored_layers, coverage=True)[1]


def _survey(model: nn.Module, example: Tensor, scope: str, ignored_layers, coverage: bool):
    """The unit layers and, with ``coverage``, their :class:`Coverage`: every channel group of the
    dependency graph is either a unit layer or set aside for one of :data:`EXCLUSION_ORDER`'s reasons."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
    was_training = model.training
    model.eval()
    try:
        order = execution_order(model, example)
        head = output_layer(model, order)
        names = {m: n for n, m in model.named_modules()}
        graph = build_graph(model, example)
        user_ignored = list(ignored_layers or [])
        auxiliary = _auxiliary_producers(model)
        ignored = [head] + user_ignored + auxiliary
        attentions = head_attention_modules(model)
        skip = {m.qkv for m in attentions.values()}  # q/k/v rows are pruned as whole heads
        ignored_qkv = {m.qkv for m in attentions.values() if any(x in user_ignored for x in (m, m.qkv, m.proj))}
        expanded = family_of(model).internal_units(model) if scope == "internal" else None
        layers: list[UnitLayer] = []
        kept: list[tuple[UnitLayer, object]] = []  # (unit layer, its group)
        excluded: list[tuple[str, object]] = []  # (reason, group)
        # Every group, ignored ones included, so that coverage can say what each reason costs. Torch-Pruning
        # drops a group if an ignored module's outputs are in it; the other groups are the same as with
        # ignored_layers= (the same partition of the channels, rooted at the first producer of each).
        with MAPPINGS.holding(graph):  # read only here: its index mapping is computed once (_MappingMemo)
            for group in graph.get_all_groups(ignored_layers=[], root_module_types=PRODUCERS):
                outs = [item.dep.target.module for item in group if _is_out_pruning(item.dep)]
                if any(m is head for m in outs):
                    reason = OUTPUT_LAYER
                elif any(m in auxiliary for m in outs):
                    reason = AUXILIARY_HEAD
                elif any(m in user_ignored or m in ignored_qkv for m in outs):
                    reason = IGNORED_LAYER
                elif any(m in skip for m in outs):
                    reason = QKV_ROWS
                else:
                    layer, reason = _layer_from_group(group, graph, names, order)
                    if layer is not None and any(item.dep.target.module in skip for item in group):
                        reason = QKV_ROWS  # channels read by q/k/v, e.g. an embedding stream without norms
                    elif layer is not None and scope == "internal" and layer.kind != "internal":
                        reason = COUPLED_STREAM
                    elif layer is not None and expanded is not None and layer.name not in expanded:
                        reason = FAMILY_SCOPE
                    elif layer is not None:
                        layer.auto_group = auto_group_size(model.get_submodule(layer.name), layer.size, bool(attentions))
                        layers.append(layer)
                        kept.append((layer, group))
                        continue
                excluded.append((reason, group))
        heads = []
        for name, attn in attentions.items():
            if any(m in ignored for m in (attn, attn.qkv, attn.proj)) or attn.num_heads < 2:
                continue
            layers.append(_heads_layer(name, attn, order))
            heads.append((name, attn))
        report = _coverage(model, scope, kept, heads, excluded) if coverage else None
    finally:
        model.train(was_training)
    layers.sort(key=lambda layer: layer.position)
    return layers, report


def _is_out_pruning(dep) -> bool:
    return "out_channels" in getattr(dep.handler, "__name__", "")


def _heads_layer(name: str, attn: nn.Module, order: dict[nn.Module, int]) -> UnitLayer:
    """The heads of one attention module as a unit layer (see the module docstring)."""
    h, d = attn.num_heads, attn.head_dim
    w = head_weights(attn).cpu()  # magnitudes live on the CPU, as the conv layers' do
    return UnitLayer(
        name=name, kind="heads", size=h, points={f"{name}.proj": list(range(h))},
        magnitude=w.abs().sum(1), position=order.get(attn.qkv, len(order)),
        producers=[f"{name}.qkv"], magnitude_l2=w.pow(2).sum(1).sqrt(), head_dim=d,
    )


def _layer_from_group(group, graph, names, order) -> tuple[UnitLayer | None, str | None]:
    """The unit layer of one channel group, or ``(None, reason)``: why the group holds no units
    (one of :data:`EXCLUSION_ORDER`)."""
    root = group[0].dep.target.module
    if root not in names or not isinstance(root, PRODUCERS):
        return None, NO_MASK_POINT
    if any(isinstance(item.dep.target.module, STAT_NORMS) and not _maskable_norm(item.dep.target.module)
           for item in group):
        return None, STAT_NORM  # GroupNorm channels (or a LayerNorm of another layout): masking cannot equal removal
    slots = None
    if any(_cuts_channels(item.dep.target.module, group) for item in group):
        slots = grouped_slots(group)
        if slots is None:
            return None, GROUPED_CONV  # no slots: a conv fed other channels too, or a single slot
    size = len(slots) if slots is not None else len(group[0].idxs)
    unit_of = ({root: u for u, roots in enumerate(slots) for root in roots} if slots is not None else None)
    producers, norms = [], []
    for item in group:
        mod = item.dep.target.module
        if mod not in names or not _is_out_pruning(item.dep):
            continue
        if isinstance(mod, PRODUCERS) and mod not in producers:
            producers.append(mod)
        elif isinstance(mod, (nn.modules.batchnorm._NormBase, nn.LayerNorm)) and mod not in norms:
            norms.append(mod)  # a LayerNorm is masked by recomputing it over the kept channels (Masker)
    # Mask a producer's output unless a norm layer of the group directly follows it;
    # then mask the norm's output instead (so BN's shift is removed as well).
    followed = set()
    for prod in producers:
        node = graph.module2node[prod]
        if any(out.module in norms for out in node.outputs):
            followed.add(prod)
    mask_modules = [m for m in producers if m not in followed] + norms
    for item in group:  # every index must be a channel of its module (not, e.g., of a reshaped view of it)
        mod = item.dep.target.module
        if (mod in mask_modules or mod in producers) and _is_out_pruning(item.dep):
            width = Masker._width(mod)
            if any(int(i) >= width for i in item.idxs):
                return None, NOT_ONE_TO_ONE
    points: dict[str, list[int]] = {}
    for item in group:
        mod = item.dep.target.module
        if mod in mask_modules and _is_out_pruning(item.dep) and names[mod] not in points:
            if unit_of is not None:
                channels: list[list[int]] = [[] for _ in range(size)]
                for idx, root_idx in zip(item.idxs, item.root_idxs):
                    channels[unit_of[int(root_idx)]].append(int(idx))
                if [len(c) for c in channels] != [len(roots) for roots in slots]:
                    return None, NOT_ONE_TO_ONE
                points[names[mod]] = [sorted(c) for c in channels]
                continue
            per_unit = [-1] * size
            for idx, root_idx in zip(item.idxs, item.root_idxs):
                per_unit[int(root_idx)] = int(idx)
            if -1 in per_unit:
                return None, NOT_ONE_TO_ONE  # e.g. grouped reshapes: skip
            points[names[mod]] = per_unit
    if not points:
        return None, NO_MASK_POINT
    magnitude, squares = torch.zeros(size), torch.zeros(size)
    for item in group:
        mod = item.dep.target.module
        if mod in producers and _is_out_pruning(item.dep):
            w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
            l1, sq = w.abs().sum(1).cpu(), w.pow(2).sum(1).cpu()
            for idx, root_idx in zip(item.idxs, item.root_idxs):
                u = int(root_idx) if unit_of is None else unit_of[int(root_idx)]
                magnitude[u] += l1[int(idx)]
                squares[u] += sq[int(idx)]
    # depthwise convs pass channel i to channel i: they do not make a group "coupled"
    real = [p for p in producers if not is_depthwise(p)] or producers
    kind = "internal" if len(real) == 1 else "coupled"
    anchor = root
    if kind == "internal" and real[0] is not root:
        # name the unit layer after its one real producer (MobileNet's expand conv, not the
        # depthwise conv Torch-Pruning chose as root) when its channels are the root's
        item = next(i for i in group if i.dep.target.module is real[0] and _is_out_pruning(i.dep))
        if [int(v) for v in item.idxs] == [int(v) for v in item.root_idxs]:
            anchor = real[0]
    return UnitLayer(
        name=names[anchor], kind=kind, size=size, points=points, magnitude=magnitude,
        position=order.get(anchor, len(order)), producers=[names[p] for p in producers],
        magnitude_l2=squares.sqrt(), slots=slots,
    ), None


def _is_grouped(module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1


def _cuts_channels(module, group) -> bool:
    """Whether ``module`` is a grouped conv that keeps the channels of ``group`` from going one by one: any
    grouped conv but a depthwise one whose outputs are in the group (it maps channel i to channel i)."""
    if not _is_grouped(module):
        return False
    return not (is_depthwise(module) and any(i.dep.target.module is module and _is_out_pruning(i.dep) for i in group))


def grouped_slots(group) -> list[list[int]] | None:
    """The units of a channel group that grouped convolutions slice: the root's channel indices of each
    unit, or None when there is no such partition (cswap_nb/METHOD.md §4).

    A conv with ``groups=G`` over ``C`` channels reads (or writes) them in G blocks of ``S = C / G``. One
    channel alone cannot go: every block must keep the same width. What can go is a *slot*: position *j* of
    every block, G channels, after which the conv still has G groups of ``S - 1``. This is what Torch-Pruning's
    handlers do with such indices (a whole block instead would break its grouped-conv handler), and masking a
    slot's channels equals removing them. When several grouped convs slice the group differently, a unit is
    the smallest set of channels that is a union of slots for each of them. Every grouped conv must see all
    its channels in the group (not one input of a concatenation), and at least two units must result. A
    depthwise conv whose outputs are in the group maps channel *i* to *i* and cuts nothing. Units are
    ordered by their first root channel."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    grouped = False
    for item in group:
        mod = item.dep.target.module
        if not _cuts_channels(mod, group):
            continue  # not a grouped conv, or a depthwise one: channel i in, channel i out
        if is_depthwise(mod):
            return None
        width = mod.out_channels if _is_out_pruning(item.dep) else mod.in_channels
        if len(item.idxs) != width or width % mod.groups or len(item.idxs) != len(group[0].idxs):
            return None  # the conv sees other channels too, or only some of the group's (a split): no equal slots
        grouped = True
        per_block = width // mod.groups
        first: dict[int, int] = {}
        for idx, root in zip(item.idxs, item.root_idxs):
            root = int(root)
            slot = int(idx) % per_block
            if slot in first:
                parent[find(root)] = find(first[slot])
            else:
                first[slot] = find(root)
    if not grouped:
        return None
    units: dict[int, list[int]] = {}
    for root in sorted(int(r) for r in group[0].root_idxs):
        units.setdefault(find(root), []).append(root)
    partition = sorted(units.values())
    return partition if len(partition) > 1 else None


def unit_sums(values: Tensor, per_unit: list, slotted: bool) -> Tensor:
    """Per-channel ``values`` (channels on the last dimension) onto units, in the order of ``per_unit`` (a mask
    point's ``points`` entry): each unit's channel, or with ``slotted`` (``layer.slots`` set) the sum of its
    slot's channels. The units take the last dimension's place."""
    if slotted:
        return torch.stack([values[..., c].sum(-1) for c in per_unit], -1)
    return values[..., per_unit]


def unit_channels(per_unit: list, units) -> list[int]:
    """The channels of ``units`` at one mask point (``points`` entries: a channel, or a list for a slot)."""
    out: list[int] = []
    for u in units:
        c = per_unit[u]
        if isinstance(c, list):
            out.extend(c)
        else:
            out.append(c)
    return out


def _coverage(model: nn.Module, scope: str, kept: list, heads: list[tuple[str, nn.Module]],
              excluded: list[tuple[str, object]]) -> Coverage:
    """:class:`Coverage` from the unit layers' groups, the attention modules with head units and the
    groups set aside (with their reasons). Each parameter has a boolean mask of its removed elements;
    a group adds the elements its items would delete (:func:`_removed_elements`), so an element two
    groups remove is counted once."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    known = {id(p) for p in params}

    def add(masks: dict[int, Tensor], removals) -> int:
        """Mark the elements of ``removals`` in ``masks``; how many were not marked yet."""
        added = 0
        for p, mask in removals:
            if id(p) not in known:
                continue
            old = masks.get(id(p))
            masks[id(p)] = mask if old is None else old | mask
            added += int(masks[id(p)].sum()) - (0 if old is None else int(old.sum()))
        return added

    everything: dict[int, Tensor] = {}
    most: dict[int, Tensor] = {}
    in_units = removable = 0
    names = {id(p): name for name, p in model.named_parameters()}
    slices: dict[str, list[tuple[str, int, int]]] | None = {}
    sized = [(layer.name, layer.size, group, _group_removal, layer.slots[0] if layer.slots else 0)
             for layer, group in kept]
    sized += [(attn_name, attn.num_heads, attn, head_removal, 0) for attn_name, attn in heads]
    for name, size, group, removal, first in sized:
        in_units += add(everything, removal(group))
        spared = list(removal(group, keep=first))
        removable += add(most, spared)
        if slices is not None:
            slices[name] = _slices(spared, size, names)
            if slices[name] is None:
                slices = None
    out: dict[str, int] = {}
    for reason in EXCLUSION_ORDER:
        n = sum(add(everything, _group_removal(group)) for why, group in excluded if why == reason)
        if n:
            out[reason] = n
    rest = total - in_units - sum(out.values())
    if rest:
        out[NO_GROUP] = rest
    footprints = None if slices is None else Footprints(
        {name: tuple(p.shape) for name, p in model.named_parameters()}, slices,
        {name: size for name, size, *_ in sized})
    return Coverage(params=total, in_units=in_units, removable=removable, excluded=out, scope=scope,
                    footprints=footprints)


def _slices(removals, size: int, names: dict[int, str]) -> list[tuple[str, int, int]] | None:
    """How removing a layer's units slices each parameter: ``(parameter name, dim, entries per unit)``,
    read from the removal of every unit but one (``removals``: (parameter, flat removed mask) pairs).
    None when a parameter's removed elements are not whole slices along one dimension."""
    masks: dict[int, Tensor] = {}
    params: dict[int, Tensor] = {}
    for p, mask in removals:
        if id(p) in names:
            masks[id(p)] = mask if id(p) not in masks else masks[id(p)] | mask
            params[id(p)] = p
    out = []
    for key, mask in masks.items():
        shaped = mask.view(params[key].shape)
        if not bool(shaped.any()):
            continue
        found = None
        for dim in range(shaped.ndim):
            others = [d for d in range(shaped.ndim) if d != dim]
            along = shaped.any(dim=others) if others else shaped
            view = [1] * shaped.ndim
            view[dim] = -1
            if torch.equal(shaped, along.view(view).expand_as(shaped)):
                if found is not None or size < 2 or int(along.sum()) % (size - 1):
                    return None
                found = (names[key], dim, int(along.sum()) // (size - 1))
        if found is None:
            return None
        out.append(found)
    return out


@dataclass(frozen=True)
class Footprints:
    """What removing units costs each parameter, to count a cut's parameters without pruning a copy.

    ``shapes``: every parameter's shape; ``slices[layer]``: ``(parameter, dim, entries per unit)``
    for each parameter that removing the layer's units slices (a unit's filter rows, its BatchNorm
    entries, its consumers' input columns; ``head_dim`` rows per attention head); ``sizes``: units
    per layer. Every unit of a layer slices the same number of entries, so a cut's parameter count
    follows from how many units it takes from each layer: each dim shrinks by the units removed times
    their entries, summed over the layers that slice it (a concatenation's input), and a weight
    sliced by two layers (rows by one, columns by the other) shrinks in both. Read from the same
    Torch-Pruning handlers as :class:`Coverage`, and equal to counting a pruned copy
    (``tests/test_units.py``).
    """

    shapes: dict[str, tuple[int, ...]]
    slices: dict[str, list[tuple[str, int, int]]]
    sizes: dict[str, int]

    def _shrunk(self, cut: dict[str, list[int]]) -> dict[str, list[int]] | None:
        """The shapes ``cut`` changes (parameter name -> shape after), or None for a cut it cannot count."""
        dims: dict[str, list[int]] = {}
        for layer, units in cut.items():
            n = len(set(units))
            if not n:
                continue
            if layer not in self.slices or n >= self.sizes[layer]:
                return None
            for name, dim, per_unit in self.slices[layer]:
                shape = dims.setdefault(name, list(self.shapes[name]))
                shape[dim] -= n * per_unit
        return dims

    def params_after(self, cut: dict[str, list[int]]) -> int | None:
        """The parameter count with the units of ``cut`` removed; None for a cut it cannot count
        (a layer it does not know, or every unit of a layer removed)."""
        dims = self._shrunk(cut)
        if dims is None:
            return None
        return sum(math.prod(dims.get(name, shape)) for name, shape in self.shapes.items())

    def macs_after(self, cut: dict[str, list[int]], positions: dict[str, int]) -> int | None:
        """The multiply-accumulates per sample of the weights in ``positions`` (parameter name -> the output
        positions it is applied at per sample: a conv's output pixels, a linear layer's tokens;
        :func:`weight_positions`) with the units of ``cut`` removed: each weight's elements times its positions.
        None for a cut it cannot count."""
        dims = self._shrunk(cut)
        if dims is None:
            return None
        return sum(math.prod(dims.get(name, self.shapes[name])) * n for name, n in positions.items()
                   if name in self.shapes)


def weight_positions(model: nn.Module, example: Tensor) -> dict[str, int]:
    """Each conv and linear weight's output positions per sample of ``example`` (parameter name -> count: a
    conv's output pixels, a linear layer's tokens), summed over the module's calls: with
    :meth:`Footprints.macs_after`, a cut's multiply-accumulates without pruning a copy."""
    names = {m: n for n, m in model.named_modules()}
    got: dict[str, int] = {}

    def hook(module, inputs, output):
        if isinstance(output, Tensor) and output.ndim >= 2:
            width = module.out_features if isinstance(module, nn.Linear) else output.shape[1]
            key = f"{names[module]}.weight"
            got[key] = got.get(key, 0) + output.numel() // (example.shape[0] * width)

    _hooked_pass(model, example, [m for m in model.modules() if isinstance(m, PRODUCERS)], hook)
    return got


def _group_removal(group, keep: int | list[int] | None = None):
    """(parameter, flat bool mask of the elements deleted) for each item of a full channel group,
    the root channel ``keep`` (or the channels of a slot, a list) spared (None: every unit removed)."""
    spare = set() if keep is None else {keep} if isinstance(keep, int) else set(keep)
    for item in group:
        idxs = [int(i) for i, r in zip(item.idxs, item.root_idxs) if int(r) not in spare]
        if idxs:
            yield from _removed_elements(item.dep, idxs)


def _tagged(p: Tensor) -> nn.Parameter:
    """A stand-in for ``p`` whose elements hold their own flat indices (float64: exact below 2**53)."""
    return nn.Parameter(torch.arange(p.numel(), dtype=torch.float64).view(p.shape))


def _removed_elements(dep, idxs: list[int]) -> list[tuple[Tensor, Tensor]]:
    """Which elements of its target's parameters a Torch-Pruning dependency deletes at ``idxs``:
    (parameter, flat bool mask) pairs.

    The dependency's own handler runs on a copy of the target whose parameters are :func:`_tagged`
    stand-ins; the tags that survive are the elements it keeps. So the count follows Torch-Pruning
    for every layer type it handles (transposed, depthwise and grouped convs, norms, unwrapped
    ``nn.Parameter``s), and the model is never touched. Some handlers fail when no channel is left
    (a LayerNorm's); slicing is per index, so all of them are then the last one's elements joined
    with the rest's.
    """
    target = dep.target.module
    dep.handler.__self__.pruning_dim = dep.target.pruning_dim  # as Dependency.__call__ does
    try:
        if isinstance(target, nn.Parameter):
            return [(target, _removed_mask(target, dep.handler(_tagged(target), idxs)))]
        own = dict(target.named_parameters())
        clone = _tagged_clone(target, own)
        dep.handler(clone, idxs)
    except Exception:
        if len(idxs) < 2:
            return []  # a handler that cannot remove this channel: counted as in no group
        return _removed_elements(dep, idxs[:-1]) + _removed_elements(dep, idxs[-1:])
    after = dict(clone.named_parameters())
    return [(p, _removed_mask(p, after.get(name))) for name, p in own.items()]


def _tagged_clone(target: nn.Module, own: dict[str, nn.Parameter]) -> nn.Module:
    """A copy of ``target`` whose parameters are :func:`_tagged` stand-ins, for a handler to slice.

    A layer without submodules (nearly every target) gets a shallow copy with its own parameter and
    buffer dicts, since a handler replaces tensors by assignment and never writes into them: ~20x
    cheaper than a deep copy, which copied every buffer and cost most of a session's set-up on
    DDRNet. Anything else is deep-copied."""
    if target._modules:
        return copy.deepcopy(target, {id(p): _tagged(p) for p in own.values()})
    clone = copy.copy(target)
    clone._parameters = {name: None if p is None else _tagged(p) for name, p in target._parameters.items()}
    clone._buffers = dict(target._buffers)
    return clone


def _removed_mask(p: Tensor, kept: Tensor | None) -> Tensor:
    removed = torch.ones(p.numel(), dtype=torch.bool)
    if kept is not None:
        removed[kept.detach().flatten().long()] = False
    return removed


class Masker:
    """Forward hooks that zero chosen units; ``remove()`` restores the model exactly.

    ``removed[layer.name]`` is a bool tensor of length ``layer.size`` (True = unit removed), changed only
    through :meth:`set` (which keeps the masks, the masked points and the state key in step). Channel units are zeroed in the output of their mask points; a LayerNorm mask point is recomputed over
    its kept channels (:func:`masked_layer_norm`); heads are zeroed in the input of ``attn.proj`` (a forward
    pre-hook).
    """

    def __init__(self, model: nn.Module, layers: list[UnitLayer]):
        self.model = model
        self.layers = {layer.name: layer for layer in layers}
        self.removed = {layer.name: torch.zeros(layer.size, dtype=torch.bool) for layer in layers}
        modules = dict(model.named_modules())
        self._keep: dict[str, Tensor] = {}
        self._keep_heads: dict[str, Tensor] = {}
        self._norms: set[str] = set()  # mask points recomputed over their kept channels (LayerNorm)
        # per-row masks (module name -> (batch, channels)) that replace a point's mask for a batch of that many
        # rows: candidates stacked in one pass, each with its own units removed (engines/graph.py)
        self.row_keep: dict[str, Tensor] = {}
        # what set() last left, so that a pass and a cache key ask no tensor: the points with a channel
        # masked, and each layer's removed units as a tuple
        self._masked: set[str] = set()
        self._units: dict[str, tuple[int, ...]] = {layer.name: () for layer in layers}
        self._handles = []
        for layer in layers:
            if layer.kind == "heads":
                for mod_name in layer.points:
                    if mod_name not in self._keep_heads:
                        self._keep_heads[mod_name] = torch.ones(layer.size)
                        self._handles.append(modules[mod_name].register_forward_pre_hook(
                            self._head_hook(mod_name, layer.head_dim)))
                continue
            for mod_name in layer.points:
                if mod_name in self._keep:
                    continue
                mod = modules[mod_name]
                n = self._width(mod)
                self._keep[mod_name] = torch.ones(n, device=self._device(model, mod))
                if isinstance(mod, nn.LayerNorm):
                    self._norms.add(mod_name)
                hook = (self._norm_hook if isinstance(mod, nn.LayerNorm) else self._hook)(mod_name, channel_dim(mod))
                self._handles.append(mod.register_forward_hook(hook))
        # a point is masked while any layer it belongs to has a unit removed (every unit has a channel there)
        self._owners: dict[str, list[str]] = {}
        for layer in layers:
            if layer.kind != "heads":
                for mod_name in layer.points:
                    self._owners.setdefault(mod_name, []).append(layer.name)
        self._flat, self._flat_pos, self._chan = self._flatten(layers)

    def _flatten(self, layers: list[UnitLayer]):
        """Every channel mask as a view of one flat tensor, and per layer whose units are one channel at each
        point a ``(units, points)`` table of their positions there: :meth:`set` then changes a layer's masks
        with one operation, however many points it has (a DenseNet layer's channels are masked again at every
        later norm of its block). Also each such (layer, point)'s channel per unit as a tensor
        (:meth:`rows_keep`). Where the masks live on several devices: no flat tensor and no table (None, {}),
        the channel tensors still."""
        chan = {(layer.name, m): torch.tensor(per_unit) for layer in layers if layer.kind != "heads"
                for m, per_unit in layer.points.items() if all(isinstance(c, int) for c in per_unit)}
        if not self._keep or len({t.device for t in self._keep.values()}) != 1:
            return None, {}, chan
        offsets, total = {}, 0
        for name, t in self._keep.items():
            offsets[name], total = total, total + t.numel()
        flat = torch.ones(total, device=next(iter(self._keep.values())).device)
        for name, t in self._keep.items():
            self._keep[name] = flat[offsets[name] : offsets[name] + t.numel()]
        def within(name: str, m: str) -> bool:  # a channel outside its point would write into a neighbour's mask
            c = chan.get((name, m))
            return c is not None and 0 <= int(c.min()) and int(c.max()) < self._keep[m].numel()

        pos = {layer.name: torch.stack([chan[(layer.name, m)] + offsets[m] for m in layer.points], 1).to(flat.device)
               for layer in layers if layer.kind != "heads" and all(within(layer.name, m) for m in layer.points)}
        return flat, pos, chan

    @property
    def hooked(self) -> set[str]:
        """The names of the modules whose output (channels) or input (heads) the masker's hooks change."""
        return set(self._keep) | set(self._keep_heads)

    @staticmethod
    def _device(model: nn.Module, mod: nn.Module) -> torch.device:
        """Where a mask point's mask lives: with its own parameters or buffers, else (a norm without either,
        such as a default InstanceNorm) with the model's."""
        for t in itertools.chain(mod.parameters(), mod.buffers(), model.parameters(), model.buffers()):
            return t.device
        return torch.device("cpu")

    @staticmethod
    def _width(mod: nn.Module) -> int:
        if isinstance(mod, nn.modules.conv._ConvNd):
            return mod.out_channels
        if isinstance(mod, nn.Linear):
            return mod.out_features
        if isinstance(mod, nn.LayerNorm):
            return mod.normalized_shape[-1]
        return mod.num_features

    def _hook(self, mod_name: str, dim: int):
        def hook(module, inputs, output):
            rows = self.row_keep.get(mod_name) if self.row_keep else None
            if rows is not None and dim != 0 and output.shape[0] == rows.shape[0]:
                shape = [1] * output.ndim
                shape[0], shape[dim] = rows.shape
                return output * rows.view(shape)
            if mod_name not in self._masked:
                return output
            shape = [1] * output.ndim
            shape[dim] = -1
            return output * self._keep[mod_name].view(shape)

        return hook

    @property
    def channel_points(self) -> set[str]:
        """The modules whose output channels the hooks zero (not the heads' inputs)."""
        return set(self._keep)

    def kept_channels(self, mod_name: str, batch: int) -> Tensor | None:
        """The channels of ``mod_name``'s output that the masks keep in every row of a pass over ``batch`` rows
        (:attr:`row_keep` where it applies), as indices; None when every channel is kept."""
        rows = self.row_keep.get(mod_name) if self.row_keep else None
        if rows is not None and rows.shape[0] == batch:
            keep = rows.amax(0)
        elif mod_name in self._masked:
            keep = self._keep[mod_name]
        else:
            return None
        return keep.nonzero().flatten()

    def row_maskable(self, mod_name: str) -> bool:
        """Whether :attr:`row_keep` can give ``mod_name``'s output a mask per row: a channel mask point whose
        hook multiplies (not a LayerNorm's recomputation, not a head)."""
        return mod_name in self._keep and mod_name not in self._norms

    def rows_keep(self, layer_name: str, mod_name: str, states: list[list[int]], rows: int | list[int]) -> Tensor:
        """The mask of ``mod_name``'s channels for a batch of ``len(states)`` blocks of ``rows`` rows (or of
        ``rows[i]`` rows for block i), block i with ``layer_name``'s removed units taken as ``states[i]`` (every
        other layer's as they are): a ``(total rows, channels)`` tensor for :attr:`row_keep`."""
        per_unit = self.layers[layer_name].points[mod_name]
        base = self._keep[mod_name].clone()
        chan = self._chan.get((layer_name, mod_name))
        if chan is None:
            base[unit_channels(per_unit, list(self._units[layer_name]))] = 1.0
            blocks = base.repeat(len(states), 1)
            for i, units in enumerate(states):
                blocks[i, unit_channels(per_unit, units)] = 0.0
        else:
            base[chan[list(self._units[layer_name])]] = 1.0
            blocks = base.repeat(len(states), 1)
            which = [i for i, units in enumerate(states) for _ in units]
            blocks[which, chan[[u for units in states for u in units]]] = 0.0
        if isinstance(rows, int) or len(set(rows)) == 1:
            return blocks.repeat_interleave(rows if isinstance(rows, int) else rows[0], dim=0)
        return blocks.repeat_interleave(torch.tensor(rows, device=blocks.device), dim=0)

    def _norm_hook(self, mod_name: str, dim: int):
        """A LayerNorm's channels: its output recomputed over the kept channels (:func:`masked_layer_norm`), so
        that the statistics are those of the smaller norm that removal leaves."""
        def hook(module, inputs, output):
            if mod_name not in self._masked:
                return output
            return masked_layer_norm(module, inputs[0], self._keep[mod_name], dim)

        return hook

    def _head_hook(self, mod_name: str, head_dim: int):
        def hook(module, inputs):
            keep = self._keep_heads[mod_name]
            if bool(keep.all()):
                return None
            x = inputs[0]
            scale = keep.to(x.device, x.dtype).repeat_interleave(head_dim)  # (heads * head_dim,)
            return (x * scale, *inputs[1:])

        return hook

    def set(self, layer_name: str, units, removed: bool) -> None:
        """Remove (``removed=True``) or restore units of one layer."""
        layer = self.layers[layer_name]
        units = [int(u) for u in (units if hasattr(units, "__iter__") else [units])]
        if not units:
            return
        if not all(-layer.size <= u < layer.size for u in units):
            raise IndexError(f"layer {layer_name!r} has {layer.size} units, not {units}")
        units = [u % layer.size for u in units]  # as a tensor index would read them
        self.removed[layer_name][units] = removed
        now = set(self._units[layer_name])
        self._units[layer_name] = tuple(sorted(now | set(units) if removed else now - set(units)))
        value = 0.0 if removed else 1.0
        if layer.kind == "heads":
            for mod_name, per_unit in layer.points.items():
                self._keep_heads[mod_name][unit_channels(per_unit, units)] = value
            return
        pos = self._flat_pos.get(layer_name)
        if pos is not None:
            self._flat.index_fill_(0, pos[units].flatten(), value)
        else:
            for mod_name, per_unit in layer.points.items():
                self._keep[mod_name][unit_channels(per_unit, units)] = value
        for mod_name in layer.points:
            if any(self._units[owner] for owner in self._owners[mod_name]):
                self._masked.add(mod_name)
            else:
                self._masked.discard(mod_name)

    @property
    def removed_units(self) -> dict[str, tuple[int, ...]]:
        """Each layer's removed units as a sorted tuple, kept by :meth:`set` (read it, do not change it):
        what :attr:`removed` says, without a tensor operation."""
        return self._units

    def pruned(self) -> dict[str, list[int]]:
        return {name: list(units) for name, units in self._units.items()}

    def state(self, exclude: str | None = None, instead: tuple[str, list[int]] | None = None) -> tuple:
        """The removed units of every layer as a hashable key, ``((layer, (unit, ...)), ...)`` in the layers'
        order: what a cache of scores or activations is keyed by. ``exclude``: leave that layer out;
        ``instead``: ``(layer, units)``, that layer's removed units taken as ``units`` (sorted) instead."""
        return tuple((name, tuple(sorted(instead[1])) if instead is not None and name == instead[0] else units)
                     for name, units in self._units.items() if name != exclude)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def register_site_hook(module: nn.Module, layer: UnitLayer, fn: Callable[[Tensor], None]):
    """Call ``fn(t)`` with the tensor a mask point of ``layer`` acts on, at every forward pass.

    ``t`` is ``module``'s output for channel units and ``attn.proj``'s input for heads, in
    its own layout (use :func:`channels_first` to index units); it is the live tensor of the
    graph, so ``t.retain_grad()`` gives its gradient. The network goes on with a copy of a module's
    output, so that an in-place operation downstream (timm's ``x += shortcut`` after a block's last
    BatchNorm) leaves ``t`` as the module computed it. Returns the removable hook handle.
    For criteria that score units where C-SWAP intervenes.
    """
    if layer.kind == "heads":
        return module.register_forward_pre_hook(lambda m, inputs: fn(inputs[0]))
    return register_output_hook(module, fn)


def register_output_hook(module: nn.Module, fn: Callable[[Tensor], None]):
    """Call ``fn(output)`` with ``module``'s live output at every forward pass and let the network go on
    with a copy, so that an in-place operation downstream leaves the tensor ``fn`` kept as the module
    computed it (its ``retain_grad()`` still gives its gradient). Returns the removable hook handle."""
    def keep(m, inputs, output):
        fn(output)
        return output.clone()

    return module.register_forward_hook(keep)


def channels_first(t: Tensor, module: nn.Module, layer: UnitLayer) -> Tensor:
    """A mask-site tensor as ``(N, channels, positions...)``, channel ``layer.points[...][u]`` of unit ``u`` (the
    channels of slot ``u`` where ``layer.slots`` is set).

    Conv/BN outputs are already channels-first; a Linear's channels are its last dim
    (tokens of a transformer are positions); for heads, ``(N, tokens, heads * head_dim)``
    becomes ``(N, heads, tokens * head_dim)``.
    """
    if layer.kind == "heads":
        n = t.shape[0]
        return t.reshape(n, -1, layer.size, layer.head_dim).permute(0, 2, 1, 3).reshape(n, layer.size, -1)
    if channel_dim(module) == -1 and t.ndim > 2:
        return t.movedim(-1, 1)
    return t
