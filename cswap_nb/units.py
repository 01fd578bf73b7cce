"""Prunable units, found with Torch-Pruning's dependency graph, and the masks that remove them.

A *unit layer* is one group of coupled channels as Torch-Pruning's ``DependencyGraph``
sees it: removing channel ``i`` of the group's root layer removes channel ``i`` of every
coupled producer and the matching inputs of every consumer. A *unit* is one index of it.

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
  Channels normalised by a LayerNorm or GroupNorm (the embedding stream) are never units:
  removing one changes the norm's statistics, which no mask can reproduce.

Attention heads are not a Torch-Pruning group: unit ``h`` of a ``"heads"`` layer is the
``q``, ``k`` and ``v`` rows of head ``h`` in ``attn.qkv`` plus the matching input columns of
``attn.proj``. The mask zeroes that head's slice of the attention output just before
``proj`` (a forward pre-hook); :func:`cswap_nb.surgery.remove_units` slices the weights and
updates ``num_heads`` and ``attn_dim`` (``head_dim`` and the softmax scale are unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .config import SCOPES
from .families import family_of

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
    cswap_nb/METHOD.md §3): 4 for wide transformer MLP layers, else 1.
    """

    name: str
    kind: str
    size: int
    points: dict[str, list[int]]
    magnitude: Tensor
    position: int
    producers: list[str] = field(default_factory=list)
    magnitude_l2: Tensor | None = None
    head_dim: int = 0
    auto_group: int = 1


# Neuron groups on by default (group_size=None): transformer MLP layers wider than this
# test AUTO_GROUP_SIZE consecutive units of the magnitude order at a time.
AUTO_GROUP_SIZE = 4
AUTO_GROUP_THRESHOLD = 256

STAT_NORMS = (nn.LayerNorm, nn.GroupNorm)  # a removed channel changes their statistics


def is_depthwise(module: nn.Module) -> bool:
    """A conv mapping each channel to itself only (MobileNet's depthwise conv)."""
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def head_attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Attention modules whose heads can be pruned exactly: timm's standard ``Attention``.

    Needs ``qkv``/``proj`` linears and an ``attn_dim`` attribute (the forward reshapes by
    ``attn_dim``, recent timm), no norm before ``proj`` (``scale_norm``; a LayerNorm over the
    heads would couple them) and no output gate.
    """
    try:
        from timm.layers.attention import Attention
    except ImportError:  # pragma: no cover - timm is a dependency
        return {}
    found = {}
    for name, m in model.named_modules():
        if type(m) is not Attention or not hasattr(m, "attn_dim"):
            continue
        if not isinstance(getattr(m, "norm", nn.Identity()), nn.Identity) or getattr(m, "gate", None) is not None:
            continue
        if m.qkv.out_features != 3 * m.num_heads * m.head_dim or m.proj.in_features != m.num_heads * m.head_dim:
            continue
        found[name] = m
    return found


def channel_dim(module: nn.Module) -> int:
    """The dimension of ``module``'s output that holds its units: the last for a linear layer or a
    LayerNorm (token layouts), 1 for the rest (channels-first)."""
    return -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1


def execution_order(model: nn.Module, example: Tensor) -> dict[nn.Module, int]:
    """Index of the first call of each leaf module in one forward pass."""
    order: dict[nn.Module, int] = {}

    def record(module, inputs, output) -> None:
        order.setdefault(module, len(order))

    hooks = [m.register_forward_hook(record) for m in model.modules() if len(list(m.children())) == 0]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return order


def output_layer(model: nn.Module, order: dict[nn.Module, int]) -> nn.Module:
    """The last conv/linear executed: the classifier, never pruned."""
    producers = [m for m in order if isinstance(m, PRODUCERS)]
    if not producers:
        raise ValueError("the model has no Conv or Linear layer: nothing to prune")
    return max(producers, key=order.__getitem__)


def build_graph(model: nn.Module, example: Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph. A model with a ``forward_all`` method (DDRNet with its
    auxiliary head) is traced through it, so heads that only run in training are resized too."""
    forward_all = getattr(model, "forward_all", None)
    forward_fn = (lambda m, x: m.forward_all(x)) if callable(forward_all) else None
    return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False, forward_fn=forward_fn)


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
    adapter may narrow the units (:meth:`cswap_nb.families.Family.internal_units`): for a
    torchvision MobileNetV2 the expanded channels of the inverted residuals (expand 1x1 +
    depthwise + BN, cswap_nb/METHOD.md §4); ``scope="all"`` adds the stem, the block outputs
    and the last 1x1 conv.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
    was_training = model.training
    model.eval()
    try:
        order = execution_order(model, example)
        head = output_layer(model, order)
        names = {m: n for n, m in model.named_modules()}
        graph = build_graph(model, example)
        ignored = [head] + list(ignored_layers or []) + _auxiliary_producers(model)
        attentions = head_attention_modules(model)
        skip = {m.qkv for m in attentions.values()}  # q/k/v rows are pruned as whole heads
        expanded = family_of(model).internal_units(model) if scope == "internal" else None
        layers: list[UnitLayer] = []
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRODUCERS):
            if any(item.dep.target.module in skip for item in group):
                continue
            layer = _layer_from_group(group, graph, names, order)
            if layer is None or (scope == "internal" and layer.kind != "internal"):
                continue
            if expanded is not None and layer.name not in expanded:
                continue
            if attentions and isinstance(model.get_submodule(layer.name), nn.Linear) \
                    and layer.size > AUTO_GROUP_THRESHOLD:
                layer.auto_group = AUTO_GROUP_SIZE  # a wide transformer MLP layer
            layers.append(layer)
        for name, attn in attentions.items():
            if any(m in ignored for m in (attn, attn.qkv, attn.proj)) or attn.num_heads < 2:
                continue
            layers.append(_heads_layer(name, attn, order))
    finally:
        model.train(was_training)
    layers.sort(key=lambda layer: layer.position)
    return layers


def _is_out_pruning(dep) -> bool:
    return "out_channels" in getattr(dep.handler, "__name__", "")


def _heads_layer(name: str, attn: nn.Module, order: dict[nn.Module, int]) -> UnitLayer:
    """The heads of one attention module as a unit layer (see the module docstring)."""
    h, d = attn.num_heads, attn.head_dim
    w_qkv = attn.qkv.weight.detach().reshape(3, h, d, -1).permute(1, 0, 2, 3).reshape(h, -1)
    w_proj = attn.proj.weight.detach().reshape(-1, h, d).permute(1, 0, 2).reshape(h, -1)
    w = torch.cat([w_qkv, w_proj], dim=1)
    return UnitLayer(
        name=name, kind="heads", size=h, points={f"{name}.proj": list(range(h))},
        magnitude=w.abs().sum(1), position=order.get(attn.qkv, len(order)),
        producers=[f"{name}.qkv"], magnitude_l2=w.pow(2).sum(1).sqrt(), head_dim=d,
    )


def _layer_from_group(group, graph, names, order) -> UnitLayer | None:
    root = group[0].dep.target.module
    if root not in names or not isinstance(root, PRODUCERS):
        return None
    if any(isinstance(item.dep.target.module, STAT_NORMS) for item in group):
        return None  # LayerNorm/GroupNorm channels: masking cannot equal removal
    for item in group:
        mod = item.dep.target.module
        if isinstance(mod, nn.modules.conv._ConvNd) and mod.groups > 1:
            depthwise = mod.groups == mod.in_channels == mod.out_channels
            if not (depthwise and any(i.dep.target.module is mod and _is_out_pruning(i.dep) for i in group)):
                return None  # feeds a grouped conv (ResNeXt): one channel alone cannot be removed
    size = len(group[0].idxs)
    producers, norms = [], []
    for item in group:
        mod = item.dep.target.module
        if mod not in names or not _is_out_pruning(item.dep):
            continue
        if isinstance(mod, PRODUCERS) and mod not in producers:
            producers.append(mod)
        elif isinstance(mod, nn.modules.batchnorm._NormBase) and mod not in norms:
            norms.append(mod)
    # Mask a producer's output unless a norm layer of the group directly follows it;
    # then mask the norm's output instead (so BN's shift is removed as well).
    followed = set()
    for prod in producers:
        node = graph.module2node[prod]
        if any(out.module in norms for out in node.outputs):
            followed.add(prod)
    mask_modules = [m for m in producers if m not in followed] + norms
    points: dict[str, list[int]] = {}
    for item in group:
        mod = item.dep.target.module
        if mod in mask_modules and _is_out_pruning(item.dep) and names[mod] not in points:
            per_unit = [-1] * size
            for idx, root_idx in zip(item.idxs, item.root_idxs):
                per_unit[int(root_idx)] = int(idx)
            if -1 in per_unit:
                return None  # not a one-to-one channel mapping (e.g. grouped reshapes): skip
            points[names[mod]] = per_unit
    if not points:
        return None
    magnitude, squares = torch.zeros(size), torch.zeros(size)
    for item in group:
        mod = item.dep.target.module
        if mod in producers and _is_out_pruning(item.dep):
            w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
            l1, sq = w.abs().sum(1).cpu(), w.pow(2).sum(1).cpu()
            for idx, root_idx in zip(item.idxs, item.root_idxs):
                magnitude[int(root_idx)] += l1[int(idx)]
                squares[int(root_idx)] += sq[int(idx)]
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
        magnitude_l2=squares.sqrt(),
    )


class Masker:
    """Forward hooks that zero chosen units; ``remove()`` restores the model exactly.

    ``removed[layer.name]`` is a bool tensor of length ``layer.size`` (True = unit removed).
    Channel units are zeroed in the output of their mask points; heads in the input of
    ``attn.proj`` (a forward pre-hook).
    """

    def __init__(self, model: nn.Module, layers: list[UnitLayer]):
        self.model = model
        self.layers = {layer.name: layer for layer in layers}
        self.removed = {layer.name: torch.zeros(layer.size, dtype=torch.bool) for layer in layers}
        modules = dict(model.named_modules())
        self._keep: dict[str, Tensor] = {}
        self._keep_heads: dict[str, Tensor] = {}
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
                tensors = list(mod.parameters()) + list(mod.buffers())
                device = tensors[0].device if tensors else torch.device("cpu")
                self._keep[mod_name] = torch.ones(n, device=device)
                self._handles.append(mod.register_forward_hook(self._hook(mod_name, channel_dim(mod))))

    @property
    def hooked(self) -> set[str]:
        """The names of the modules whose output (channels) or input (heads) the masker's hooks change."""
        return set(self._keep) | set(self._keep_heads)

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
            keep = self._keep[mod_name]
            if bool(keep.all()):
                return output
            shape = [1] * output.ndim
            shape[dim] = -1
            return output * keep.view(shape)

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
        self.removed[layer_name][units] = removed
        keep = self._keep_heads if layer.kind == "heads" else self._keep
        for mod_name, per_unit in layer.points.items():
            idx = [per_unit[u] for u in units]
            keep[mod_name][idx] = 0.0 if removed else 1.0

    def pruned(self) -> dict[str, list[int]]:
        return {name: mask.nonzero().flatten().tolist() for name, mask in self.removed.items()}

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
    """A mask-site tensor as ``(N, channels, positions...)``, channel ``layer.points[...][u]`` of unit ``u``.

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
