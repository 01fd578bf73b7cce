"""The channels-last speed lever (cswap_nb/core/layout.py): only the toolkit's own copies change layout, the
answers stay the same, and results come back in the default layout."""
from __future__ import annotations

import torch
from torch import nn

import cswap_nb as cs
from cswap_nb.core import layout


def _strides(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: v.stride() for k, v in model.state_dict().items()}


def test_channels_last_copy_predicts_the_same_and_leaves_the_model_alone(tiny_resnet, own_label_data):
    model = tiny_resnet()
    x, _ = own_label_data(model)
    before = _strides(model)
    fast = layout.channels_last_copy(model)
    assert fast is not model
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not fast.layer1[0].conv1.weight.is_contiguous()  # really converted (4 channels: NHWC != NCHW)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
    assert _strides(model) == before


def test_models_without_2d_convolutions_are_left_as_they_are():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert not layout.benefits(mlp)
    assert layout.channels_last_copy(mlp) is mlp


def test_prune_and_evaluate_keep_the_callers_layout_and_return_the_default_one(tiny_resnet, own_label_data):
    model = tiny_resnet()
    x, y = own_label_data(model, n=160)
    before = _strides(model)
    acc = cs.evaluate(model, (x, y))
    assert acc == 100.0  # labels are the model's own predictions
    res = cs.prune(model, (x, y), "l1", ratio=0.3, samples_per_class=3, progress=False, eval_data=(x, y))
    assert _strides(model) == before
    assert all(t.is_contiguous() for t in res.model.state_dict().values())  # not channels-last
    assert res.equivalence_max_abs_diff < 1e-4
