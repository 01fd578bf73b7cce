"""Physical removal of pruned units (Torch-Pruning's dependency graph) and size counting."""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .units import build_graph


def remove_units(model: nn.Module, example: Tensor, pruned: dict[str, list[int]]) -> nn.Module:
    """Physically delete the given units in place: ``{anchor module name: [unit indices]}``.

    Each anchor's output channels are removed together with every coupled producer and
    the matching inputs of every consumer, as Torch-Pruning's dependency graph finds them.
    Returns ``model`` (now smaller).
    """
    todo = {name: sorted(set(idx)) for name, idx in pruned.items() if idx}
    if not todo:
        return model
    was_training = model.training
    model.eval()
    graph = build_graph(model, example)
    modules = dict(model.named_modules())
    for name, idxs in todo.items():
        anchor = modules[name]
        fn = tp.prune_linear_out_channels if isinstance(anchor, nn.Linear) else tp.prune_conv_out_channels
        group = graph.get_pruning_group(anchor, fn, idxs=idxs)
        group.prune()
    model.train(was_training)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (FLOPs / 2), via torch's FLOP counter."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
