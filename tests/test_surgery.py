"""Masking a unit (the causal intervention) must equal removing it physically.

For real ResNets (timm and torchvision, BasicBlock and Bottleneck, reduced and full
width) a seeded random subset of units is masked with :class:`cswap_nb.core.units.Masker`,
the masked logits are recorded, the units are removed with
:func:`cswap_nb.core.surgery.remove_units`, and the logits must agree. BatchNorm statistics
and affine parameters are randomized first, so masking before a BN (leaving its shift
alive) would be caught. The pruned shapes and parameter count are checked against an
independent, name-based model of ResNet channel coupling.
"""
from __future__ import annotations

import copy
import re

import pytest
import timm
import torch
import torchvision
from torch import nn

import cswap_nb as cs
from cswap_nb.core.surgery import count_macs, count_params, remove_units
from cswap_nb.core.units import Masker, UnitLayer, find_unit_layers

TOL = 1e-4


def _tv_resnet18():
    torch.manual_seed(1)
    return torchvision.models.resnet18(num_classes=10)


def _tv_resnet50():
    torch.manual_seed(2)
    return torchvision.models.resnet50(num_classes=10)


def _timm_resnet50():
    torch.manual_seed(3)
    return timm.create_model("resnet50", pretrained=False, num_classes=10)


def _timm_resnet18_digits():
    torch.manual_seed(4)
    return cs.models.resnet_digits()


MODELS = {
    "timm-resnet18-digits": (_timm_resnet18_digits, (2, 3, 32, 32)),
    "tv-resnet18": (_tv_resnet18, (2, 3, 32, 32)),
    "tv-resnet50": (_tv_resnet50, (2, 3, 40, 40)),
    "timm-resnet50": (_timm_resnet50, (1, 3, 32, 32)),
}


# --------------------------------------------------------------------------------------
# An independent model of ResNet channel coupling (timm and torchvision share the names
# conv1/bn1, layerS.B.convK/bnK, layerS.B.downsample.0/.1, fc).
# --------------------------------------------------------------------------------------

def _bn_of(conv: str) -> str:
    if conv.endswith("downsample.0"):
        return conv[:-1] + "1"
    return re.sub(r"conv(\d)$", r"bn\1", conv)


class ResNetWidths:
    def __init__(self, model: nn.Module):
        self.mods = dict(model.named_modules())
        self.io = {n: [m.in_channels, m.out_channels] for n, m in self.mods.items() if isinstance(m, nn.Conv2d)}
        self.io["fc"] = [model.fc.in_features, model.fc.out_features]
        self.bn = {n: m.num_features for n, m in self.mods.items() if isinstance(m, nn.BatchNorm2d)}
        self.blocks = {s: sorted((n for n in self.mods if re.fullmatch(rf"layer{s}\.\d+", n)),
                                 key=lambda n: int(n.split(".")[1])) for s in range(1, 5)}
        self.last = 3 if f"{self.blocks[1][0]}.conv3" in self.mods else 2

    def has(self, name: str) -> bool:
        return name in self.mods

    def drop_out(self, conv: str, r: int) -> None:
        self.io[conv][1] -= r
        self.bn[_bn_of(conv)] -= r

    def drop_in(self, conv: str, r: int) -> None:
        self.io[conv][0] -= r

    def stream(self, stage: int) -> tuple[list[str], list[str]]:
        """Producers and consumers of the residual stream of ``stage``."""
        blocks = self.blocks[stage]
        first_ds = f"{blocks[0]}.downsample.0"
        producers = [f"{b}.conv{self.last}" for b in blocks]
        consumers = [f"{b}.conv1" for b in blocks[1:]]
        if self.has(first_ds):
            producers.insert(0, first_ds)
        else:  # the stage input is the stem output (torchvision BasicBlock layer1)
            assert stage == 1
            producers.insert(0, "conv1")
            consumers.insert(0, f"{blocks[0]}.conv1")
        if stage < 4:
            nxt = self.blocks[stage + 1][0]
            consumers += [f"{nxt}.conv1"] + ([f"{nxt}.downsample.0"] if self.has(f"{nxt}.downsample.0") else [])
        else:
            consumers.append("fc")
        return producers, consumers

    def apply(self, layer: UnitLayer, r: int) -> None:
        if r == 0:
            return
        name = layer.name
        if layer.kind == "internal":
            self.drop_out(name, r)
            if name == "conv1":
                b0 = self.blocks[1][0]
                self.drop_in(f"{b0}.conv1", r)
                if self.has(f"{b0}.downsample.0"):
                    self.drop_in(f"{b0}.downsample.0", r)
            else:
                block, k = name.rsplit(".conv", 1)
                self.drop_in(f"{block}.conv{int(k) + 1}", r)
        else:
            stage = next(int(p[5]) for p in layer.producers if p.startswith("layer"))
            producers, consumers = self.stream(stage)
            for p in producers:
                self.drop_out(p, r)
            for c in consumers:
                self.drop_in(c, r)

    def params(self) -> int:
        total = 0
        for n, (cin, cout) in self.io.items():
            m = self.mods[n]
            if isinstance(m, nn.Conv2d):
                total += cout * (cin // m.groups) * m.kernel_size[0] * m.kernel_size[1]
                total += cout if m.bias is not None else 0
            else:
                total += cout * cin + (cout if m.bias is not None else 0)
        return total + 2 * sum(self.bn.values())


# --------------------------------------------------------------------------------------


def _choose(layers, fraction: float, seed: int) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(seed)
    chosen = {}
    for i, layer in enumerate(layers):
        if i % 3 == 2:  # leave some layers untouched
            continue
        k = min(layer.size - 1, max(1, round(fraction * layer.size)))
        chosen[layer.name] = torch.randperm(layer.size, generator=g)[:k].tolist()
    return chosen


@pytest.mark.parametrize("scope", ["internal", "all"])
@pytest.mark.parametrize("name", list(MODELS))
def test_masked_equals_physically_pruned(name, scope, randomize_bn):
    build, shape = MODELS[name]
    model = randomize_bn(build().eval(), seed=11)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    example = x[:1]
    widths = ResNetWidths(model)  # before any change
    params_before, macs_before = count_params(model), count_macs(model, example)
    assert widths.params() == params_before  # the independent model describes the dense network

    layers = find_unit_layers(model, example, scope=scope)
    assert layers
    if scope == "all":
        assert any(layer.kind == "coupled" for layer in layers)
    else:
        assert all(layer.kind == "internal" for layer in layers)

    with torch.no_grad():
        dense = model(x)
    masker = Masker(model, layers)
    chosen = _choose(layers, 0.4, seed=7)
    for lname, units in chosen.items():
        masker.set(lname, units, True)
    assert masker.pruned() == {layer.name: sorted(chosen.get(layer.name, [])) for layer in layers}
    with torch.no_grad():
        masked = model(x)
    assert (masked - dense).abs().max() > 1e-3, "masking 40% of the units changed nothing"
    masker.remove()
    with torch.no_grad():
        assert torch.equal(model(x), dense), "Masker.remove() did not restore the model"

    remove_units(model, example, masker.pruned())
    with torch.no_grad():
        pruned = model(x)
    diff = float((pruned - masked).abs().max())
    assert diff <= TOL, f"{name}/{scope}: physically pruned model differs from the masked one by {diff}"

    # shapes: every anchor lost exactly the removed units, and every coupled tensor followed
    for layer in layers:
        widths.apply(layer, len(chosen.get(layer.name, [])))
    mods = dict(model.named_modules())
    for n, (cin, cout) in widths.io.items():
        m = mods[n]
        got = (m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) else (m.in_features, m.out_features)
        assert got == (cin, cout), f"{n}: (in, out) = {got}, expected {(cin, cout)}"
        assert m.weight.shape[0] == cout
    for n, c in widths.bn.items():
        m = mods[n]
        assert m.num_features == c
        assert m.weight.shape == m.bias.shape == m.running_mean.shape == m.running_var.shape == (c,), n
    for layer in layers:
        anchor = mods[layer.name]
        assert anchor.out_channels == layer.size - len(chosen.get(layer.name, []))

    params_after = count_params(model)
    assert params_after == widths.params()
    assert params_before - params_after > 0
    assert count_macs(model, example) < macs_before


@pytest.mark.parametrize("scope", ["internal", "all"])
def test_restoring_units_gives_back_dense_output(scope, tiny_resnet, randomize_bn):
    model = randomize_bn(tiny_resnet(channels=(8, 8, 16, 16)), seed=3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    layers = find_unit_layers(model, x[:1], scope=scope)
    masker = Masker(model, layers)
    with torch.no_grad():
        dense = model(x)
        for layer in layers:
            masker.set(layer.name, [0, 1], True)
        assert not torch.allclose(model(x), dense)
        for layer in layers:
            masker.set(layer.name, [0, 1], False)
        assert torch.equal(model(x), dense)
    assert all(units == [] for units in masker.pruned().values())
    masker.remove()


def test_masking_before_bn_would_be_caught(randomize_bn):
    """Sanity check of the test design: a mask at the conv output (before BN) differs from removal."""
    model = randomize_bn(_tv_resnet18().eval(), seed=11)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    layers = find_unit_layers(model, x[:1], scope="internal")
    layer = layers[0]
    assert list(layer.points) == [_bn_of(layer.name)]  # the real mask point is the BN after the conv
    wrong = UnitLayer(name=layer.name, kind=layer.kind, size=layer.size,
                      points={layer.name: list(range(layer.size))}, magnitude=layer.magnitude,
                      position=layer.position, producers=layer.producers)
    masker = Masker(model, [wrong])
    masker.set(layer.name, list(range(0, layer.size, 2)), True)
    with torch.no_grad():
        masked = model(x)
    masker.remove()
    remove_units(model, x[:1], masker.pruned())
    with torch.no_grad():
        assert (model(x) - masked).abs().max() > 1e-3


def test_internal_mask_points_are_the_norm_after_the_anchor(zoo_model, digits):
    layers = find_unit_layers(zoo_model, digits.test.x[:1], scope="all")
    for layer in layers:
        assert layer.size == len(layer.magnitude)
        for per_unit in layer.points.values():
            assert sorted(per_unit) == list(range(layer.size))
        if layer.kind == "internal":
            assert layer.producers == [layer.name]
            assert list(layer.points) == [_bn_of(layer.name)]
        else:
            assert len(layer.producers) > 1
            assert sorted(layer.points) == sorted(_bn_of(p) for p in layer.producers)
    positions = [layer.position for layer in layers]
    assert positions == sorted(positions)


def test_find_unit_layers_torchvision_resnet18():
    model = _tv_resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    internal = find_unit_layers(model, x, scope="internal")
    expected = [f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2)]
    assert [layer.name for layer in internal] == expected
    assert [layer.size for layer in internal] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert all(layer.kind == "internal" for layer in internal)
    for layer in internal:
        assert layer.points == {_bn_of(layer.name): list(range(layer.size))}
        w = dict(model.named_modules())[layer.name].weight.detach()
        assert torch.allclose(layer.magnitude, w.abs().sum((1, 2, 3)))

    everything = find_unit_layers(model, x, scope="all")
    coupled = [layer for layer in everything if layer.kind == "coupled"]
    assert [layer.name for layer in everything if layer.kind == "internal"] == expected
    assert len(everything) == len(internal) + len(coupled)
    # the stem (coupled with layer1's residual stream) and the three downsampled streams
    assert sorted(layer.size for layer in coupled) == [64, 128, 256, 512]
    widths = ResNetWidths(model)
    for layer in coupled:
        stage = next(int(p[5]) for p in layer.producers if p.startswith("layer"))
        producers, _ = widths.stream(stage)
        assert sorted(layer.producers) == sorted(producers)
    stem = next(layer for layer in coupled if "conv1" in layer.producers)
    assert sorted(stem.producers) == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]


def test_find_unit_layers_never_returns_the_classifier_and_honours_ignored(tiny_resnet):
    model = tiny_resnet()
    x = torch.randn(1, 3, 32, 32)
    layers = find_unit_layers(model, x, scope="all")
    names = [layer.name for layer in layers]
    assert "fc" not in names
    ignore = dict(model.named_modules())["layer2.0.conv1"]
    fewer = find_unit_layers(model, x, scope="all", ignored_layers=[ignore])
    assert [n for n in names if n != "layer2.0.conv1"] == [layer.name for layer in fewer]
    with pytest.raises(ValueError, match="scope must be"):
        find_unit_layers(model, x, scope="everything")


def test_find_unit_layers_restores_training_mode(tiny_resnet):
    model = tiny_resnet().train()
    bn_before = model.bn1.running_mean.clone()
    find_unit_layers(model, torch.randn(2, 3, 32, 32), scope="all")
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model.bn1.running_mean, bn_before)


def test_mlp_hidden_units_mask_equals_removal():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    x = torch.randn(4, 5)
    layers = find_unit_layers(model, x[:1])
    assert [(layer.name, layer.size) for layer in layers] == [("0", 7), ("2", 6)]
    assert [list(layer.points) for layer in layers] == [["0"], ["2"]]
    masker = Masker(model, layers)
    masker.set("0", [1, 4], True)
    masker.set("2", [0, 5, 3], True)
    with torch.no_grad():
        masked = model(x)
    masker.remove()
    remove_units(model, x[:1], masker.pruned())
    assert model[0].weight.shape == (5, 5) and model[2].weight.shape == (3, 5) and model[4].weight.shape == (3, 3)
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-6)


def test_remove_units_without_units_is_a_no_op(tiny_resnet):
    model = tiny_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert remove_units(model, torch.randn(1, 3, 32, 32), {"layer1.0.conv1": []}) is model
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_count_params_and_macs():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
    assert count_params(model) == 12 * 5 + 5 + 5 * 2 + 2
    assert count_macs(model, torch.randn(1, 3, 4)) == 12 * 5 + 5 * 2
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert count_macs(conv, torch.randn(1, 3, 8, 8)) == 4 * 8 * 8 * 3 * 3 * 3
    model.train()
    count_macs(model, torch.randn(1, 3, 4))
    assert model.training


def test_grouped_conv_units_mask_equals_removal(randomize_bn):
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    model = randomize_bn(ResNet(Bottleneck, [1, 1, 1, 1], num_classes=3, groups=4, width_per_group=4).eval())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    layers = find_unit_layers(model, x[:1], scope="internal")
    masker = Masker(model, layers)
    for lname, units in _choose(layers, 0.4, seed=7).items():
        masker.set(lname, units, True)
    with torch.no_grad():
        masked = model(x)
    masker.remove()
    remove_units(model, x[:1], masker.pruned())
    with torch.no_grad():
        assert (model(x) - masked).abs().max() <= TOL


def test_attention_macs_are_counted_on_cpu_and_fall_with_each_removed_head():
    """QK^T and AV are counted (the CPU kernel has no formula in torch), and removing one head
    lowers the count by exactly that head's share: qkv rows, proj columns and its attention."""
    from timm.models.vision_transformer import VisionTransformer

    from cswap_nb.core.surgery import remove_heads

    torch.manual_seed(0)
    e, heads, depth, img, patch = 32, 4, 2, 16, 4
    model = VisionTransformer(img_size=img, patch_size=patch, embed_dim=e, depth=depth, num_heads=heads,
                              num_classes=3, mlp_ratio=2.0).eval()
    x = torch.randn(1, 3, img, img)
    n, d = (img // patch) ** 2 + 1, e // heads  # tokens (with the class token), head dim
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear)) * n
    linear -= model.head.in_features * model.head.out_features * (n - 1)  # the head sees the class token only
    patch_embed = e * 3 * patch * patch * (n - 1)
    attention = depth * 2 * heads * n * n * d  # QK^T and AV, per block
    assert count_macs(model, x) == linear + patch_embed + attention
    before = count_macs(model, x)
    remove_heads(model.blocks[0].attn, [1])
    assert count_macs(model, x) == before - (3 * d * e + d * e) * n - 2 * n * n * d


def test_stage_profile_adds_up_to_the_model_and_sees_what_a_cut_removes():
    """Per stage: parameters add up to the model's, MACs to count_macs; a cut of one stage's channels shows
    in that stage's parameters and MACs (and in its consumers'), nowhere else."""
    from torch import nn

    from cswap_nb.core.surgery import count_macs, remove_units
    from cswap_nb.experiments.bench import stage_profile

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    x = torch.randn(4, 3, 16, 16)
    dense = stage_profile(model, x, repeats=2)
    assert list(dense.stage) == [str(i) for i in range(8)]
    assert dense.params.sum() == sum(p.numel() for p in model.parameters())
    assert dense.macs.sum() == count_macs(model, x[:1])
    assert dense.loc[0, "macs"] == 8 * 3 * 9 * 16 * 16 and dense.loc[3, "macs"] == 16 * 8 * 9 * 8 * 8
    assert tuple(dense.loc[2, "output"]) == (8, 8, 8) and (dense.ms >= 0).all()
    for col in ("params_pct", "macs_pct", "ms_pct"):
        assert abs(dense[col].sum() - 100) < 1e-6
    cut = remove_units(copy.deepcopy(model), x[:1], {"0": [0, 1, 2, 3]})  # half of the first conv's channels
    after = stage_profile(cut, x, repeats=2)
    assert after.loc[0, "macs"] == dense.loc[0, "macs"] // 2 and after.loc[3, "macs"] == dense.loc[3, "macs"] // 2
    assert (after.params[4:] == dense.params[4:]).all() and (after.macs[4:] == dense.macs[4:]).all()


def test_the_equivalence_check_allows_rounding_on_huge_logits_only():
    """A network whose logits are huge (a randomly initialised Inception V3's reach 3.2e6) differs between masked and
    pruned by float32 rounding alone: no warning, the scale is reported; the tolerance itself stays at 1e-3
    for ordinary logits, so a real mismatch on them is still flagged."""
    import warnings as _w

    import cswap_nb as cs
    from cswap_nb.core.result import equivalence_tolerance

    assert equivalence_tolerance(0.0) == 1e-3 and equivalence_tolerance(10.0) < 1.2e-3
    assert equivalence_tolerance(3.2e6) > 1.2  # inception_v3's case in the prunability table
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.BatchNorm2d(32),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3)).eval()
    with torch.no_grad():
        model[-1].weight.mul_(1e9)
    x = torch.randn(30, 3, 12, 12)
    with torch.no_grad():
        y = model(x).argmax(1)
    with _w.catch_warnings():
        _w.simplefilter("error")  # the mismatch warning would fail the test
        res = cs.prune(model, (x, y), method="l1", ratio=0.3, samples_per_class=None, progress=False)
    assert res.equivalence_logit_scale > 1e6
    assert res.equivalence_max_abs_diff > 1e-3, "no rounding to allow for: the model does not test the rule"
    assert res.equivalence_max_abs_diff <= equivalence_tolerance(res.equivalence_logit_scale)
    assert res.summary()["equivalence_logit_scale"] == res.equivalence_logit_scale
