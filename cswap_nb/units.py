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
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class UnitLayer:
    """One prunable group of channels.

    ``name``: the root module (anchor) whose output channels index the units;
    ``kind``: ``"internal"`` (one producer) or ``"coupled"`` (several, e.g. a residual stream);
    ``points``: module name -> channel index per unit, where the mask is applied;
    ``magnitude``: L1 norm of each unit's filters summed over producers (visiting order);
    ``magnitude_l2``: L2 norm of each unit's filters over all producers;
    ``position``: execution index of the anchor in a forward pass (layer order).
    """

    name: str
    kind: str
    size: int
    points: dict[str, list[int]]
    magnitude: Tensor
    position: int
    producers: list[str] = field(default_factory=list)
    magnitude_l2: Tensor | None = None


def _channel_dim(module: nn.Module) -> int:
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
    return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def find_unit_layers(
    model: nn.Module,
    example: Tensor,
    scope: str = "internal",
    ignored_layers: list[nn.Module] | None = None,
) -> list[UnitLayer]:
    """All prunable unit layers of ``model``, in execution order of their anchors.

    ``example`` is one input batch (e.g. ``x[:1]``). The classifier (last conv/linear
    executed) and ``ignored_layers`` are never pruned.
    """
    if scope not in ("internal", "all"):
        raise ValueError(f"scope must be 'internal' or 'all', got {scope!r}")
    was_training = model.training
    model.eval()
    try:
        order = execution_order(model, example)
        head = output_layer(model, order)
        names = {m: n for n, m in model.named_modules()}
        graph = build_graph(model, example)
        ignored = [head] + list(ignored_layers or [])
        layers: list[UnitLayer] = []
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRODUCERS):
            layer = _layer_from_group(group, graph, names, order)
            if layer is None or (scope == "internal" and layer.kind != "internal"):
                continue
            layers.append(layer)
    finally:
        model.train(was_training)
    layers.sort(key=lambda layer: layer.position)
    return layers


def _is_out_pruning(dep) -> bool:
    return "out_channels" in getattr(dep.handler, "__name__", "")


def _layer_from_group(group, graph, names, order) -> UnitLayer | None:
    root = group[0].dep.target.module
    if root not in names or not isinstance(root, PRODUCERS):
        return None
    size = len(group[0].idxs)
    producers, norms = [], []
    for item in group:
        mod = item.dep.target.module
        if mod not in names or not _is_out_pruning(item.dep):
            continue
        if isinstance(mod, PRODUCERS) and mod not in producers:
            producers.append(mod)
        elif isinstance(mod, (nn.modules.batchnorm._NormBase, nn.LayerNorm)) and mod not in norms:
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
            l1, sq = w.abs().sum(1), w.pow(2).sum(1)
            for idx, root_idx in zip(item.idxs, item.root_idxs):
                magnitude[int(root_idx)] += l1[int(idx)]
                squares[int(root_idx)] += sq[int(idx)]
    kind = "internal" if len(producers) == 1 else "coupled"
    return UnitLayer(
        name=names[root], kind=kind, size=size, points=points, magnitude=magnitude,
        position=order.get(root, len(order)), producers=[names[p] for p in producers],
        magnitude_l2=squares.sqrt(),
    )


class Masker:
    """Forward hooks that zero chosen units; ``remove()`` restores the model exactly.

    ``masks[layer.name]`` is a bool tensor of length ``layer.size`` (True = unit removed).
    """

    def __init__(self, model: nn.Module, layers: list[UnitLayer]):
        self.model = model
        self.layers = {layer.name: layer for layer in layers}
        self.removed = {layer.name: torch.zeros(layer.size, dtype=torch.bool) for layer in layers}
        modules = dict(model.named_modules())
        self._keep: dict[str, Tensor] = {}
        self._handles = []
        for layer in layers:
            for mod_name in layer.points:
                if mod_name in self._keep:
                    continue
                mod = modules[mod_name]
                n = self._width(mod)
                self._keep[mod_name] = torch.ones(n)
                self._handles.append(mod.register_forward_hook(self._hook(mod_name, _channel_dim(mod))))

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

    def set(self, layer_name: str, units, removed: bool) -> None:
        """Remove (``removed=True``) or restore units of one layer."""
        layer = self.layers[layer_name]
        units = [int(u) for u in (units if hasattr(units, "__iter__") else [units])]
        self.removed[layer_name][units] = removed
        for mod_name, per_unit in layer.points.items():
            idx = [per_unit[u] for u in units]
            self._keep[mod_name][idx] = 0.0 if removed else 1.0

    def pruned(self) -> dict[str, list[int]]:
        return {name: mask.nonzero().flatten().tolist() for name, mask in self.removed.items()}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
