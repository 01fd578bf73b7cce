"""Channels-last memory layout for convolutional networks on the CPU (a speed lever, exact up to float
reassociation).

On the CPU, PyTorch's convolutions (oneDNN) and above all its ``max_pool2d`` run faster on NHWC
("channels-last") tensors than on the default NCHW ones: on this project's 2-core machine a timm
ResNet stem's 3x3 max-pool took 0.21 s of a 0.46 s forward pass of 500 Fashion-MNIST images in NCHW
and a quarter of that in NHWC; whole forward passes ran 1.3-1.6x faster on the ResNets and
MobileNetV2, 1.1x on the ViT (``python benchmarks/layout_speed.py``). The layout changes how sums are
ordered, not what is computed: outputs agree to ~1e-5.

The toolkit converts only its own copies: the session's working copy (and so every engine built on
it), the criteria's copies, and a copy made for :func:`cswap_nb.core.metrics.evaluate`. Results are handed
back in the default layout (:func:`to_default`), so that a latency comparison of a dense and a pruned
model never compares two layouts.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def benefits(model: nn.Module) -> bool:
    """True for a model on the CPU with a 2-d convolution (where channels-last pays)."""
    p = next(model.parameters(), None)
    if p is None or p.device.type != "cpu":
        return False
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert ``model`` in place to channels-last where that pays (:func:`benefits`); return it."""
    if benefits(model):
        model.to(memory_format=torch.channels_last)
    return model


def to_default(model: nn.Module) -> nn.Module:
    """Convert ``model``'s 4-d parameters and buffers in place back to the default (contiguous) layout."""
    if any(t.ndim == 4 and not t.is_contiguous() for t in (*model.parameters(), *model.buffers())):
        model.to(memory_format=torch.contiguous_format)
    return model


def channels_last_copy(model: nn.Module) -> nn.Module:
    """``model`` itself where channels-last does not pay, else a converted deep copy (the caller's model
    keeps its layout)."""
    return to_channels_last(copy.deepcopy(model)) if benefits(model) else model
