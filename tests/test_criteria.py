"""Baseline criteria: shapes, determinism, and planted cases each must rank right."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import cswap_nb as cs
from cswap_nb.criteria import CRITERIA, Cost, score_units
from cswap_nb.core.units import find_unit_layers


def planted_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A conv net on 3 synthetic classes where hidden channel 0 of conv1 has zero weights
    (dead) and channel 1 alone detects class 2's pattern, which nothing else carries."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n = 60
    y = torch.arange(3).repeat_interleave(n)
    x = 0.05 * torch.randn(3 * n, 1, 8, 8, generator=g)
    x[y == 0, 0, :4, :] += 1.0      # class 0: bright top half
    x[y == 1, 0, 4:, :] += 1.0      # class 1: bright bottom half
    x[y == 2, 0, :, :] -= 1.0       # class 2: dark everywhere
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        conv, bn, fc = model[0], model[1], model[5]
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[1] = -1.0 / 9        # channel 1: responds to darkness (class 2 only)
        conv.weight[2, 0, :, :] = 1.0 / 9  # channel 2: overall brightness
        conv.weight[3, 0, 0, :] = 1.0 / 3  # channel 3: top edge filter
        conv.weight[4, 0, 2, :] = 1.0 / 3  # channel 4: bottom edge filter
        conv.weight[5, 0, 1, 1] = 0.2      # channel 5: a weak copy of brightness
        bn.running_mean.zero_(); bn.running_var.fill_(1.0); bn.weight.fill_(1.0); bn.bias.zero_()
        fc.weight.zero_(); fc.bias.zero_()
        fc.weight[2, 1] = 8.0             # class 2 <- darkness channel only
        fc.weight[0, 3] = 6.0; fc.weight[1, 4] = 6.0
        fc.weight[0, 2] = 1.0; fc.weight[1, 2] = 1.0; fc.weight[0, 5] = 0.5
        fc.bias[2] = 0.5
    assert (model(x).argmax(1) == y).float().mean() > 0.95
    return model, x, y


@pytest.fixture(scope="module")
def planted():
    model, x, y = planted_cnn()
    layers = find_unit_layers(model, x[:1])
    assert [layer.name for layer in layers] == ["0"]
    return model, layers, x, y


@pytest.mark.parametrize("name", list(CRITERIA))
def test_criterion_shape_and_determinism(name, planted):
    model, layers, x, y = planted
    if name == "lrp":
        with pytest.raises(ValueError, match="lrp is available for torchvision and timm ResNets only"):
            score_units(name, model, layers, x, y)
        return
    a = score_units(name, model, layers, x, y, seed=3)
    b = score_units(name, model, layers, x, y, seed=3)
    assert set(a) == {"0"} and a["0"].shape == (6,)
    assert torch.isfinite(a["0"]).all()
    assert torch.equal(a["0"], b["0"])


def test_zero_weight_filter_scores_lowest_under_l1_and_l2(planted):
    model, layers, x, y = planted
    for name in ("l1", "l2"):
        s = score_units(name, model, layers, x, y)["0"]
        assert int(s.argmin()) == 0 and float(s[0]) == 0.0


def test_ablation_ranks_the_only_carrier_of_a_class_highest(planted):
    model, layers, x, y = planted
    s = score_units("ablation", model, layers, x, y)["0"]
    assert int(s.argmax()) == 1
    assert abs(float(s[0])) < 1e-6  # a dead channel changes nothing when ablated


def test_activation_and_gradient_criteria_see_the_dead_channel(planted):
    model, layers, x, y = planted
    for name in ("activation", "taylor", "gradxact"):
        s = score_units(name, model, layers, x, y)["0"]
        assert float(s[0]) <= float(s.min()) + 1e-9, name


def test_random_depends_on_seed(planted):
    model, layers, x, y = planted
    assert not torch.equal(score_units("random", model, layers, x, y, seed=0)["0"],
                           score_units("random", model, layers, x, y, seed=1)["0"])


def test_cost_counters_are_exact(planted):
    model, layers, x, y = planted
    expected = {"l1": (0, 0), "activation": (1, 0), "taylor": (1, 1), "gradxact": (1, 1)}
    for name, (fwd, bwd) in expected.items():
        cost = Cost()
        score_units(name, model, layers, x, y, cost=cost)
        assert (cost.forward_passes, cost.backward_passes) == (fwd, bwd), name
    # seconds add up over calls: a second criterion on the same counter adds its own time
    cost = Cost()
    score_units("activation", model, layers, x, y, cost=cost)
    first = cost.seconds
    score_units("taylor", model, layers, x, y, cost=cost)
    assert 0 < first < cost.seconds and (cost.forward_passes, cost.backward_passes) == (2, 1)


def test_lrp_on_torchvision_and_timm_resnets_conserves_sign_and_shape():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    for model in (resnet18(num_classes=4).eval(), cs.models.resnet_digits(channels=(4, 8, 8, 8), num_classes=4).eval()):
        x = torch.randn(6, 3, 32, 32)
        with torch.no_grad():
            y = model(x).argmax(1)
        layers = find_unit_layers(model, x[:1])
        s = score_units("lrp", model, layers, x, y)
        assert {k: v.shape[0] for k, v in s.items()} == {layer.name: layer.size for layer in layers}
        assert all(torch.isfinite(v).all() and (v >= 0).all() for v in s.values())


def test_unknown_criterion_lists_known_ones(planted):
    model, layers, x, y = planted
    with pytest.raises(ValueError, match="unknown criterion 'nope'; known: l1"):
        score_units("nope", model, layers, x, y)


def test_vit_criteria_taylor_works_and_captum_refuses_clearly(zoo_load):
    model, data = zoo_load("vit-digits")
    x, y = cs.select_calibration(model, *data.train, 3)
    layers = find_unit_layers(model, x[:1])
    s = score_units("taylor", model, layers, x, y)
    assert {k: v.shape[0] for k, v in s.items()} == {layer.name: layer.size for layer in layers}
    with pytest.raises(ValueError, match="token-shaped outputs and attention heads"):
        score_units("gradxact", model, layers, x, y)


def test_conductance_of_every_layer_at_once_equals_captums_layer_by_layer(tiny_resnet, randomize_bn,
                                                                          own_label_data):
    """The criterion computes conductance for all mask points from one set of interpolated passes; it must
    equal Captum's LayerConductance run on each layer alone (same steps, baseline and target)."""
    from captum.attr import LayerConductance

    from cswap_nb.criteria import _conductance, _no_inplace

    model = _no_inplace(randomize_bn(tiny_resnet(channels=(4, 6, 6, 8))))  # timm zero-inits the last BN of a block
    x, y = own_label_data(model, n=24)
    mods = [model.bn1, model.layer1[0].bn1, model.layer2[1].bn2, model.layer4[0].downsample[1]]
    ours = _conductance(model, mods, x, y, n_steps=8)
    for mod, got in zip(mods, ours):
        want = LayerConductance(model, mod).attribute(x, baselines=torch.zeros_like(x), target=y, n_steps=8,
                                                      internal_batch_size=8 * len(y)).detach()
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        assert want.abs().max() > 1e-3  # a real comparison, not of two zero tensors


def test_activation_scores_read_a_residual_point_before_the_in_place_shortcut_add(tiny_resnet, randomize_bn,
                                                                                  own_label_data):
    """timm's blocks add the shortcut in place onto bn2's output (``x += shortcut``); a score at that mask
    point (scope="all") must see bn2's own output, not the sum."""
    model = randomize_bn(tiny_resnet(channels=(4, 6, 6, 8)))
    x, y = own_label_data(model, n=24)
    layers = find_unit_layers(model, x[:1], scope="all")
    layer = next(layer for layer in layers if "layer1.0.bn2" in layer.points)
    seen = {}

    def grab(m, i, o):
        seen["o"] = o.detach().clone()  # a copy, taken before the block's in-place add

    h = model.layer1[0].bn2.register_forward_hook(grab)
    with torch.no_grad():
        model(x)
    h.remove()
    per_channel = seen["o"].abs().mean((2, 3)).mean(0)
    want = torch.zeros(layer.size)
    for name, channels in layer.points.items():
        if name == "layer1.0.bn2":
            want += per_channel[channels]
    got = score_units("activation", model, [layer], x, y)[layer.name]
    # a residual unit sums the shares of all its points; each is read from a clean copy of its module's output
    others = torch.zeros(layer.size)
    for name, channels in layer.points.items():
        if name != "layer1.0.bn2":
            mod = dict(model.named_modules())[name]
            h = mod.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.detach().clone()))
            with torch.no_grad():
                model(x)
            h.remove()
            others += seen[name].abs().mean((2, 3)).mean(0)[channels]
    torch.testing.assert_close(got, want + others, rtol=1e-4, atol=1e-6)


def test_ablation_equals_captums_layer_feature_ablation(tiny_resnet, randomize_bn, own_label_data):
    """The engine's ablation (only the network after the unit runs) gives Captum's LayerFeatureAblation:
    the drop of the true-class probability with one channel zeroed, per unit of one mask point."""
    from captum.attr import LayerFeatureAblation

    model = randomize_bn(tiny_resnet(channels=(4, 6, 6, 8)))
    x, y = own_label_data(model, n=32)
    layers = [layer for layer in find_unit_layers(model, x[:1]) if len(layer.points) == 1][:3]
    assert layers
    got = score_units("ablation", model, layers, x, y)
    modules = dict(model.named_modules())
    for layer in layers:
        (name, channels), = layer.points.items()
        width = len(channels)
        mask = torch.arange(width).reshape(1, width, 1, 1)
        with torch.no_grad():
            a = LayerFeatureAblation(lambda inp: model(inp).softmax(1), modules[name]).attribute(
                x, target=y, layer_mask=mask, layer_baselines=0.0)
        want = a.flatten(2).mean(2).mean(0)[channels]
        torch.testing.assert_close(got[layer.name], want, rtol=1e-4, atol=1e-6)
        assert want.abs().max() > 1e-4


def test_a_registered_criterion_is_a_method_of_prune(tiny_resnet, own_label_data):
    """A scoring function registered with @criterion is a method of cs.prune like the built-in ones: a copy
    of l1 under a new name prunes the units l1 prunes; a name registered twice is refused."""
    from cswap_nb.criteria import CRITERIA, criterion, score_l1

    @criterion("l1-copy")
    def l1_copy(model, layers, x=None, y=None, **_):
        return score_l1(model, layers)

    try:
        assert list(CRITERIA)[-1] == "l1-copy"
        model = tiny_resnet()
        x, y = own_label_data(model, n=48)
        copied = cs.prune(model, (x, y), "l1-copy", ratio=0.3, progress=False, samples_per_class=4)
        plain = cs.prune(model, (x, y), "l1", ratio=0.3, progress=False, samples_per_class=4)
        assert copied.pruned_units and copied.pruned_units == plain.pruned_units
        with pytest.raises(ValueError, match="criterion 'l1-copy' is already registered"):
            criterion("l1-copy")(l1_copy)
    finally:
        CRITERIA.pop("l1-copy", None)
    with pytest.raises(ValueError, match="method must be one of"):
        cs.prune(model, (x, y), "l1-copy", ratio=0.3, progress=False, samples_per_class=4)
