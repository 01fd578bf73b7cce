"""Physical removal of pruned units (Torch-Pruning's dependency graph) and size counting."""
from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..models.families.attention import head_attention_modules, remove_heads  # noqa: F401 (re-exported)
from .units import MAPPINGS, build_graph, grouped_slots, is_depthwise


def remove_units(model: nn.Module, example: Tensor, pruned: dict[str, list[int]]) -> nn.Module:
    """Physically delete the given units in place: ``{anchor module name: [unit indices]}``.

    Each anchor's output channels are removed together with every coupled producer and
    the matching inputs of every consumer, as Torch-Pruning's dependency graph finds them.
    A name of a timm attention module (a ``"heads"`` unit layer) removes those heads with
    :func:`remove_heads`. Where the anchor's channels feed or leave a grouped convolution, a unit is a
    slot of channels (:func:`~cswap_nb.core.units.grouped_slots`, as the unit layer counts them) and all of
    its channels go. Returns ``model`` (now smaller).
    """
    todo = {name: sorted(set(idx)) for name, idx in pruned.items() if idx}
    if not todo:
        return model
    was_training = model.training
    model.eval()
    attentions = head_attention_modules(model)
    for name in [n for n in todo if n in attentions]:
        remove_heads(attentions[name], todo.pop(name))
    if not todo:
        model.train(was_training)
        return model
    graph = build_graph(model, example)
    modules = dict(model.named_modules())
    with MAPPINGS.holding(graph):  # the index mapping recomputed after each prune only
        _remove_groups(graph, modules, todo)
    model.train(was_training)
    return model


def _remove_groups(graph, modules: dict[str, nn.Module], todo: dict[str, list[int]]) -> None:
    """Prune each anchor's units (:func:`remove_units`) through ``graph``."""
    grouped = _has_grouped(modules)
    for name, idxs in todo.items():
        anchor = modules[name]
        fn, width = _out_channels(anchor)
        if grouped:
            # (the slots are read from this partly pruned model: each grouped conv's side belongs to one group,
            # which no earlier removal in this loop has changed)
            slots = grouped_slots(graph.get_pruning_group(anchor, fn, idxs=list(range(width))))
            if slots is not None:
                idxs = sorted(c for u in idxs for c in slots[u])
        group = graph.get_pruning_group(anchor, fn, idxs=idxs)
        norms = _layer_norm_rows(group)
        group.prune()
        MAPPINGS.stale(graph)
        for norm, kept, params in norms:  # Torch-Pruning 1.6.1 may keep a LayerNorm's rows out of order
            _put_rows(norm, kept, params)


def _out_channels(anchor: nn.Module) -> tuple:
    """Torch-Pruning's function that prunes ``anchor``'s output channels, and their number."""
    if isinstance(anchor, nn.Linear):
        return tp.prune_linear_out_channels, anchor.out_features
    return tp.prune_conv_out_channels, anchor.out_channels


def _has_grouped(modules: dict[str, nn.Module]) -> bool:
    """Whether a conv with groups (not a depthwise one) is among ``modules``: then units may be slots."""
    return any(isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not is_depthwise(m) for m in modules.values())


def _affine_params(norm: nn.LayerNorm) -> dict[str, Tensor]:
    """A copy of a LayerNorm's weight and bias, before a handler slices them (:func:`_put_rows`)."""
    return {name: p.detach().clone() for name, p in (("weight", norm.weight), ("bias", norm.bias)) if p is not None}


def _put_rows(norm: nn.LayerNorm, kept: list[int], params: dict[str, Tensor]) -> None:
    """Set a LayerNorm's affine parameters to the rows ``kept`` of ``params`` (:func:`_affine_params`), in order:
    Torch-Pruning 1.6.1's handler may keep them out of order (:func:`_layer_norm_rows`)."""
    for name, value in params.items():
        setattr(norm, name, nn.Parameter(value[kept], requires_grad=value.requires_grad))


class CutSurgery:
    """Many cuts of one dense model, each removed from a fresh copy of it in one sweep: what compaction's copies
    need (:mod:`cswap_nb.engines.compact`, cswap_nb/METHOD.md §10), where :func:`remove_units` would prune one
    layer's group after another and Torch-Pruning would recompute its index mapping after each (1.5 s for one
    copy of a random DenseNet121 at 64 px, most of a copy's cost).

    Every unit layer's group is read once from the dense ``model``'s dependency graph, in the dense numbering:
    each item a module's (or an unwrapped parameter's) dimension, its Torch-Pruning handler and, per unit, the
    indices the unit deletes there. Graph operations without weights (concatenations, splits, reshapes) carry no
    item. :meth:`apply` deletes, per item, the union of the cut's indices in one handler call: nothing has been
    removed from the copy before, so the dense numbering holds for every layer at once. A grouped conv's units
    are its slots (:func:`~cswap_nb.core.units.grouped_slots`), as in :func:`remove_units`. Cuts of attention
    heads are handed to :func:`remove_units`. The copy must still be checked against the masked network, as
    compaction does with every copy."""

    def __init__(self, model: nn.Module, example: Tensor, names: list[str]):
        attentions = head_attention_modules(model)
        self.heads = {name for name in names if name in attentions}
        was_training = model.training
        model.eval()
        try:
            graph = build_graph(model, example)
            modules = dict(model.named_modules())
            module_names = {m: n for n, m in modules.items()}
            param_names = dict(getattr(graph, "_param_to_name", {}))
            grouped = _has_grouped(modules)
            self.items: dict[str, list[tuple[str, str, object, int, list[list[int]]]]] = {}
            with MAPPINGS.holding(graph):
                for name in names:
                    if name not in self.heads:
                        self.items[name] = self._read(graph, modules[name], grouped, module_names, param_names)
        finally:
            model.train(was_training)

    @staticmethod
    def _read(graph, anchor: nn.Module, grouped: bool, module_names: dict, param_names: dict) -> list:
        """The items of ``anchor``'s group: (target name, "module" or "param", handler, pruning dim, the
        indices of each unit)."""
        fn, width = _out_channels(anchor)
        group = graph.get_pruning_group(anchor, fn, idxs=list(range(width)))
        slots = grouped_slots(group) if grouped else None
        unit_of = {c: u for u, chs in enumerate(slots) for c in chs} if slots else {c: c for c in range(width)}
        units = len(slots) if slots else width
        items = []
        for item in group:
            dep = item.dep
            target = dep.target.module
            if isinstance(target, nn.Parameter) and target in param_names:
                tname, kind = param_names[target], "param"
            elif isinstance(target, nn.Module) and target in module_names:
                tname, kind = module_names[target], "module"
            else:
                continue  # an operation of the graph (concatenation, split, reshape): no weights to slice
            per_unit: list[list[int]] = [[] for _ in range(units)]
            for idx, root in zip(item.idxs, item.root_idxs):  # as the unit layers read them (units.py)
                per_unit[unit_of[int(root)]].append(int(idx))
            items.append((tname, kind, dep.handler, dep.target.pruning_dim, per_unit))
        return items

    def apply(self, model: nn.Module, example: Tensor, cut: dict[str, list[int]]) -> nn.Module:
        """Delete the units of ``cut`` (layer name -> unit indices) from ``model``, a copy of the dense model
        this was built on, in place; returns it."""
        cut = {name: sorted(set(int(u) for u in units)) for name, units in cut.items() if units}
        if any(name in self.heads for name in cut):
            return remove_units(model, example, cut)
        unknown = [name for name in cut if name not in self.items]
        if unknown:
            raise KeyError(f"no unit layer {unknown[0]!r} in this surgery")
        todo: dict[tuple, set[int]] = {}
        for name, units in cut.items():
            for tname, kind, handler, dim, per_unit in self.items[name]:
                got = todo.setdefault((tname, kind, handler, dim), set())
                for u in units:
                    got.update(per_unit[u])
        modules = dict(model.named_modules())
        was_training = model.training
        model.eval()
        try:
            for (tname, kind, handler, dim), idxs in todo.items():
                idxs = sorted(idxs)
                if not idxs:
                    continue
                handler.__self__.pruning_dim = dim  # what Torch-Pruning's Dependency does before each call
                if kind == "param":
                    parent_name, _, attr = tname.rpartition(".")
                    parent = modules[parent_name] if parent_name else model
                    setattr(parent, attr, handler(getattr(parent, attr), idxs))
                    continue
                mod = modules[tname]
                norm = isinstance(mod, nn.LayerNorm) and mod.elementwise_affine
                params = _affine_params(mod) if norm else {}
                width = mod.normalized_shape[-1] if norm else 0
                handler(mod, idxs)
                if norm:  # kept in order (_layer_norm_rows)
                    gone = set(idxs)
                    _put_rows(mod, [c for c in range(width) if c not in gone], params)
        finally:
            model.train(was_training)
        return model


def failing_removals(model: nn.Module, example: Tensor, layers) -> dict[str, str]:
    """The unit layers whose physical removal breaks ``model``: layer name -> the error.

    One unit (the last) of every layer with at least two is removed from one copy, and the copy is run on
    ``example``; on a failure the layers are halved until each failing one is found alone. Torch-Pruning's
    graph does not see every use of a channel (an attention that reshapes a stream into heads), and such a
    layer would otherwise fail only when the analysis is over. The first copy, with every layer's unit, is cut
    in one sweep (:class:`CutSurgery`: the same copy, 5-10x faster on a DenseNet), the search after a failure
    layer by layer (:func:`remove_units`, as the final result is cut). ``model`` is never modified."""
    cut = {layer.name: [layer.size - 1] for layer in layers if layer.size > 1}
    bad: dict[str, str] = {}

    def error(names: list[str], sweep: bool = False) -> str | None:
        try:
            if sweep:
                copy_ = CutSurgery(model, example, names).apply(copy.deepcopy(model), example, cut)
            else:
                copy_ = remove_units(copy.deepcopy(model), example, {n: cut[n] for n in names})
            with torch.inference_mode():
                copy_(example)
        except Exception as exc:  # noqa: BLE001 - any failure of the removal or of the pruned model
            text = str(exc).strip()
            return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"
        return None

    def search(names: list[str], known: str | None = None) -> None:
        found = known if known is not None else error(names)
        if found is None:
            return
        if len(names) == 1:
            bad[names[0]] = found
            return
        half = len(names) // 2
        search(names[:half])
        search(names[half:])

    if cut and error(list(cut), sweep=True) is None:
        return bad
    search(list(cut))
    return bad


def _layer_norm_rows(group) -> list[tuple[nn.LayerNorm, list[int], dict[str, Tensor]]]:
    """The LayerNorms a pruning group slices: each with the channels it keeps, in order, and its affine
    parameters before. Torch-Pruning 1.6.1's LayerNorm handler builds the kept indices from a set and calls
    ``Tensor.sort()``, which does not sort in place, so the kept weights can come out permuted (seen on a
    ConvNeXt stream keeping channels 1, 8, 9, 14); :func:`remove_units` writes them back in order."""
    out, seen = [], set()
    for item in group:
        mod = item.dep.target.module
        if not isinstance(mod, nn.LayerNorm) or id(mod) in seen or not mod.elementwise_affine:
            continue
        seen.add(id(mod))
        gone = {int(i) for i in item.idxs}
        kept = [c for c in range(mod.normalized_shape[-1]) if c not in gone]
        out.append((mod, kept, _affine_params(mod)))
    return out


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one attention (QK^T and AV), from the input shapes."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter has formulas for the CUDA attention kernels but none for the CPU one, so on the
# CPU a ViT's QK^T and AV products went uncounted (and removing a head saved MACs nobody saw)
EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def count_macs(model: nn.Module, example: Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (FLOPs / 2), via torch's FLOP counter
    (with :data:`EXTRA_FLOP_FORMULAS`, so attention counts the same on CPU and CUDA)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
            model(example)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
