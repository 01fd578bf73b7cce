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
    for name, idxs in todo.items():
        anchor = modules[name]
        fn = tp.prune_linear_out_channels if isinstance(anchor, nn.Linear) else tp.prune_conv_out_channels
        if any(isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not is_depthwise(m) for m in modules.values()):
            # (the slots are read from this partly pruned model: each grouped conv's side belongs to one group,
            # which no earlier removal in this loop has changed)
            width = anchor.out_features if isinstance(anchor, nn.Linear) else anchor.out_channels
            slots = grouped_slots(graph.get_pruning_group(anchor, fn, idxs=list(range(width))))
            if slots is not None:
                idxs = sorted(c for u in idxs for c in slots[u])
        group = graph.get_pruning_group(anchor, fn, idxs=idxs)
        norms = _layer_norm_rows(group)
        group.prune()
        MAPPINGS.stale(graph)
        for norm, kept, params in norms:  # Torch-Pruning 1.6.1 may keep a LayerNorm's rows out of order
            for pname, value in params.items():
                setattr(norm, pname, nn.Parameter(value[kept], requires_grad=value.requires_grad))


def failing_removals(model: nn.Module, example: Tensor, layers) -> dict[str, str]:
    """The unit layers whose physical removal breaks ``model``: layer name -> the error.

    One unit (the last) of every layer with at least two is removed from one copy, and the copy is run on
    ``example``; on a failure the layers are halved until each failing one is found alone. Torch-Pruning's
    graph does not see every use of a channel (an attention that reshapes a stream into heads), and such a
    layer would otherwise fail only when the analysis is over. ``model`` is never modified."""
    cut = {layer.name: [layer.size - 1] for layer in layers if layer.size > 1}
    bad: dict[str, str] = {}

    def error(names: list[str]) -> str | None:
        try:
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
        params = {name: p.detach().clone() for name, p in (("weight", mod.weight), ("bias", mod.bias)) if p is not None}
        out.append((mod, kept, params))
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
