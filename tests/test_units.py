"""Coverage of the units (cswap_nb.core.units.unit_coverage): which share of the parameters C-SWAP and the
baselines can test and remove, and why the rest is left out; said by a session before the work."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

import cswap_nb as cs
from cswap_nb.pruning.session import LOW_COVERAGE, LowCoverageWarning, PruneSession
from cswap_nb.core.surgery import count_params, remove_units
from cswap_nb.core.units import (COUPLED_STREAM, GROUPED_CONV, IGNORED_LAYER, NOT_ONE_TO_ONE, OUTPUT_LAYER, STAT_NORM,
                            Masker, find_unit_layers, survey_units, unit_coverage, unit_sums)


class GroupedBlock(nn.Module):
    """RegNet's X block: 1x1 conv, grouped 3x3 conv, 1x1 conv, plus the input (projected when widths differ)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout),
                               nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.proj = (nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)) if cin != cout
                     else nn.Identity())

    def forward(self, x):
        return torch.relu(self.c(self.b(self.a(x))) + self.proj(x))


def grouped_net() -> nn.Module:
    """A RegNet in miniature: a narrow stem, then blocks whose channels feed grouped convolutions."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         GroupedBlock(8, 32, 4), GroupedBlock(32, 32, 4),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)).eval()


def norm_net() -> nn.Module:
    """Three convs; the middle one's channels are normalised by a GroupNorm."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()


def _message(caught) -> str:
    return next(str(w.message) for w in caught if issubclass(w.category, LowCoverageWarning))


def _data(model, own_label_data, shape=(3, 16, 16), n=48):
    return own_label_data(model, n=n, shape=shape, min_per_class=2)


def test_mlp_counts_every_weight_once():
    """Linear(4, 6) - Linear(6, 5) - Linear(5, 3), by hand. Removing every unit deletes the first two
    layers and the head's weight; the middle weight, sliced by both unit layers, is counted once."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    cov = unit_coverage(model, torch.randn(1, 4))
    assert cov.params == 30 + 35 + 18
    assert cov.in_units == 30 + 35 + 15
    assert cov.excluded == {OUTPUT_LAYER: 3}  # the head's bias
    # unit 0 of each layer kept: 5 rows of (4 + 1); the middle weight keeps row 0 x column 0, 4 of 5 biases;
    # the head keeps column 0
    assert cov.removable == 25 + (30 - 1) + 4 + (15 - 3)
    assert cov.share == pytest.approx(80 / 83) and cov.reasons == {OUTPUT_LAYER: pytest.approx(3 / 83)}


@pytest.mark.parametrize("scope", ["internal", "all"])
def test_share_is_what_removing_every_unit_removes(tiny_resnet, scope):
    """The share and the most removable are the parameters physical removal deletes (exactly)."""
    model = tiny_resnet()
    x = torch.randn(1, 3, 32, 32)
    layers, cov = survey_units(model, x, scope=scope)
    assert [layer.name for layer in layers] == [layer.name for layer in find_unit_layers(model, x, scope=scope)]
    assert cov.in_units + sum(cov.excluded.values()) == cov.params == count_params(model)
    everything = remove_units(copy.deepcopy(model), x, {layer.name: list(range(layer.size)) for layer in layers})
    assert count_params(model) - count_params(everything) == cov.in_units
    most = remove_units(copy.deepcopy(model), x, {layer.name: list(range(1, layer.size)) for layer in layers})
    assert count_params(model) - count_params(most) == cov.removable
    assert cov.share > LOW_COVERAGE


def test_coupled_share_is_what_scope_all_adds(tiny_resnet):
    model = tiny_resnet()
    x = torch.randn(1, 3, 32, 32)
    internal, every = unit_coverage(model, x), unit_coverage(model, x, scope="all")
    assert internal.excluded[COUPLED_STREAM] > 0 and COUPLED_STREAM not in every.excluded
    assert every.in_units == internal.in_units + internal.excluded[COUPLED_STREAM]


def test_ignored_layer_is_a_reason(tiny_resnet):
    model = tiny_resnet()
    x = torch.randn(1, 3, 32, 32)
    layers, cov = survey_units(model, x, ignored_layers=[model.layer1[0].conv1])
    assert "layer1.0.conv1" not in {layer.name for layer in layers}
    # un-ignored, its group would add its BN and the next conv's inputs (its own filters are the stem's
    # unit layer's inputs already); that conv's filters count first under the residual stream they feed
    gained = unit_coverage(model, x).in_units - cov.in_units
    assert gained == model.layer1[0].bn1.weight.numel() * 2 + model.layer1[0].conv2.weight.numel()
    assert cov.excluded[IGNORED_LAYER] == model.layer1[0].bn1.weight.numel() * 2


class ConcatGrouped(nn.Module):
    """Two wide convs concatenated into a grouped 1x1 conv (groups=2): each source fills one of its blocks, so
    no channel of either source can go without its twin in the other source. Most parameters sit there."""

    def __init__(self):
        super().__init__()
        self.p, self.q = nn.Conv2d(3, 256, 5, padding=2), nn.Conv2d(3, 256, 5, padding=2)
        self.g = nn.Sequential(nn.Conv2d(512, 8, 1, groups=2, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x):
        return self.head(self.g(torch.cat([torch.relu(self.p(x)), torch.relu(self.q(x))], 1)))


def concat_grouped_net() -> nn.Module:
    torch.manual_seed(0)
    return ConcatGrouped().eval()


def test_unit_sums_put_each_units_channels_in_its_place_on_the_last_dimension():
    """What the criteria (one score per channel) and the first-order estimate (one per sample and channel)
    both sum onto units: a unit's channel, or the sum of its slot's channels, in the units' order."""
    g = torch.Generator().manual_seed(0)
    per_channel, per_sample = torch.randn(12, generator=g), torch.randn(5, 12, generator=g)
    slots = [[3, 7, 11], [0, 4, 8], [1, 5, 9], [2, 6, 10]]
    order = [5, 0, 11, 2]
    assert torch.equal(unit_sums(per_channel, order, False), per_channel[order])
    assert torch.equal(unit_sums(per_sample, order, False), per_sample[:, order])
    assert torch.equal(unit_sums(per_channel, slots, True), torch.stack([per_channel[c].sum() for c in slots]))
    want = torch.stack([per_sample[i, c].sum() for i in range(5) for c in slots]).view(5, 4)
    assert torch.allclose(unit_sums(per_sample, slots, True), want)


def test_grouped_convolutions_are_pruned_by_slots(own_label_data, randomize_bn):
    """Channels that feed (or leave) a grouped conv are units of one slot each: position j of every block of
    the conv, removed together (Torch-Pruning keeps the groups). Masked equals removed, the footprints count
    a cut as pruning a copy does, and most of the network is covered again."""
    model = randomize_bn(grouped_net())
    x, y = _data(model, own_label_data)
    layers, cov = survey_units(model, x[:1])
    slotted = {layer.name: layer for layer in layers if layer.slots is not None}
    assert {"3.a.0", "3.b.0", "4.a.0", "4.b.0"} <= set(slotted)  # both convs of each block, in and out
    for layer in slotted.values():  # 32 channels in 4 blocks of 8: 8 slots of 4 channels, one per block
        assert layer.size == 8 and all(len(c) == 4 for c in layer.slots)
        assert all(sorted(c % 8 for c in chans) == [u] * 4 for u, chans in enumerate(layer.slots))
        assert sorted(ch for chans in layer.slots for ch in chans) == list(range(32))
        (per_unit,) = [v for k, v in layer.points.items()]
        assert [sorted(c) for c in per_unit] == layer.slots
    assert cov.share > LOW_COVERAGE and GROUPED_CONV not in cov.excluded
    cut = {"3.a.0": [1, 5], "3.b.0": [0, 2, 7], "4.a.0": [3], "4.b.0": [6, 4]}
    masker = Masker(model, layers)
    for name, units in cut.items():
        masker.set(name, units, True)
    with torch.no_grad():
        masked = model(x)
    masker.remove()
    pruned = remove_units(copy.deepcopy(model), x[:1], cut)
    with torch.no_grad():
        assert (pruned(x) - masked).abs().max() < 1e-4
        assert (model(x) - masked).abs().max() > 1e-3  # the cut does change the network
    assert pruned[3].b[0].groups == 4 and pruned[3].b[0].in_channels == 32 - 4 * 2
    assert pruned[3].b[0].out_channels == 32 - 4 * 3
    assert cov.footprints.params_after(cut) == count_params(pruned)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowCoverageWarning)
        res = cs.prune(model, (x, y), method="l1", ratio=0.3, samples_per_class=2, progress=False)
    assert res.params_removed_pct > 0.3 * 100 * cov.share / 2


def test_grouped_convs_that_cut_alike_share_units_and_a_concatenation_cannot():
    """Two grouped convs reading the same channels (groups 2 and 4): a unit is the smallest union of slots of
    both, 4 channels. A grouped conv fed by a concatenation holds each source's channels in one of its blocks:
    no slot lies within one source, so those channels are set aside with the reason."""

    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.b2, self.b4 = nn.Conv2d(16, 8, 3, padding=1, groups=2), nn.Conv2d(16, 8, 3, padding=1, groups=4)
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

        def forward(self, x):
            h = self.a(x)
            return self.head(self.b2(h) + self.b4(h))

    torch.manual_seed(0)
    model = TwoReaders().eval()
    x = torch.randn(4, 3, 12, 12)
    (layer,) = [lay for lay in find_unit_layers(model, x[:1]) if lay.name == "a.0"]
    assert layer.slots == [[u, u + 4, u + 8, u + 12] for u in range(4)]
    masker = Masker(model, [layer])
    masker.set("a.0", [2], True)
    with torch.no_grad():
        masked = model(x)
    masker.remove()
    pruned = remove_units(copy.deepcopy(model), x[:1], {"a.0": [2]})
    with torch.no_grad():
        assert (pruned(x) - masked).abs().max() < 1e-5
    assert (pruned.b2.in_channels, pruned.b4.in_channels) == (12, 12)

    model = concat_grouped_net()
    layers, cov = survey_units(model, torch.randn(1, 3, 16, 16))
    assert [layer.name for layer in layers] == ["g.0"]  # the grouped conv's own outputs: 4 slots of 2
    assert layers[0].slots == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert cov.share < LOW_COVERAGE and cov.excluded[GROUPED_CONV] > 0
    assert "feeds a grouped convolution with other channels" in str(cov)


def test_low_coverage_warns_and_says_why(own_label_data):
    model = concat_grouped_net()
    x, y = _data(model, own_label_data)
    layers, cov = survey_units(model, x[:1])
    assert f"units cover {100 * cov.share:.1f}% of" in str(cov)
    with pytest.warns(LowCoverageWarning, match="grouped convolution") as caught:
        res = cs.prune(model, (x, y), method="l1", ratio=0.3, samples_per_class=2, progress=False)
    assert "ratio= counts these units" in _message(caught)
    s = res.summary()
    assert s["units_param_share_pct"] == round(100 * cov.share, 3)
    assert s["units_excluded_pct"][GROUPED_CONV] == round(100 * cov.reasons[GROUPED_CONV], 3)
    assert 0 < s["params_removed_pct"] <= s["units_removable_pct"]
    with pytest.warns(LowCoverageWarning, match="C-SWAP tests only these units"):
        session = PruneSession(model, (x, y), samples_per_class=2, progress=False)
    assert session.coverage == cov


def test_params_target_beyond_the_units_is_refused(own_label_data):
    model = concat_grouped_net()
    x, y = _data(model, own_label_data)
    cov = unit_coverage(model, x[:1])
    floor = cov.params - cov.removable
    with pytest.raises(ValueError, match=rf"params=4,000 is out of reach: .* leaves {floor:,} of the "
                                         rf"{cov.params:,} parameters \(at most {cov.removable:,}"):
        cs.prune(model, (x, y), method="l1", params=4000, samples_per_class=2, progress=False)
    with pytest.warns(LowCoverageWarning, match="params= target"):  # reachable, but still a small share
        res = cs.prune(model, (x, y), method="l1", params=floor, samples_per_class=2, progress=False)
    assert res.params_after == floor


def test_norm_coupled_channels_are_a_reason():
    """The GroupNorm's group is set aside. Its conv's weights are the first unit layer's consumers and the
    last conv's inputs are that layer's own filters, so what is left out is the conv's bias and the norm's
    affine parameters, exactly."""
    model = norm_net()
    layers, cov = survey_units(model, torch.randn(1, 3, 16, 16))
    assert [layer.name for layer in layers] == ["0", "6"]
    conv, gn = model[3], model[4]
    assert cov.excluded[STAT_NORM] == conv.bias.numel() + gn.weight.numel() + gn.bias.numel()
    assert cov.in_units == cov.params - cov.excluded[STAT_NORM] - model[11].bias.numel()
    assert "channels coupled to GroupNorm" in str(cov)


def tiny_convnext() -> nn.Module:
    """A ConvNeXt in miniature (torchvision's own blocks): a stem conv and LayerNorm2d, two CNBlocks (depthwise
    conv, channels-last LayerNorm, MLP, layer scale, residual), a final LayerNorm2d; LayerNorm affine
    parameters spread so that a wrong statistic would show."""
    from torchvision.models.convnext import CNBlock, LayerNorm2d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16), CNBlock(16, 0.5, 0.0), CNBlock(16, 0.5, 0.0),
                          LayerNorm2d(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        for block in (model[2], model[3]):
            block.block[0].bias.uniform_(-1, 1)  # the depthwise conv's bias reaches the norm at a removed channel
    return model


def test_layernorm_coupled_channels_are_units_whose_norm_is_recomputed(own_label_data):
    """The residual stream of a ConvNeXt runs through LayerNorms. A mask that zeroes a channel would leave it in
    the norm's mean and variance; the masker recomputes each LayerNorm over the kept channels instead, so masked
    equals removed, where plain zeroing does not."""
    model = tiny_convnext()
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    layers, cov = survey_units(model, x[:1], scope="all")
    stream = next(layer for layer in layers if layer.name == "0")
    assert layer_norms(model, stream) == ["1", "2.block.2", "3.block.2", "4"]
    assert STAT_NORM not in cov.excluded and cov.share > 0.99  # all but the classifier's bias
    cut = {"0": [1, 4, 9], "2.block.3": [5, 20, 31]}
    masker = Masker(model, layers)
    for name, units in cut.items():
        masker.set(name, units, True)
    with torch.no_grad():
        masked = model(x)
    masker.remove()
    pruned = remove_units(copy.deepcopy(model), x[:1], cut)
    with torch.no_grad():
        assert (pruned(x) - masked).abs().max() < 1e-4
        assert (model(x) - masked).abs().max() > 1e-2
    assert pruned[1].normalized_shape == (13,) and cov.footprints.params_after(cut) == count_params(pruned)
    # zeroing alone would not do: the same cut with the norms' channels only multiplied by 0
    zeroed = copy.deepcopy(model)
    keep = torch.ones(16)
    keep[cut["0"]] = 0
    for name in ["0", "2.block.5", "3.block.5"]:  # the stream's producers
        zeroed.get_submodule(name).register_forward_hook(
            lambda m, i, o: o * (keep.view(1, -1, 1, 1) if o.ndim == 4 and o.shape[1] == 16 else keep))
    masker = Masker(model, layers)
    masker.set("2.block.3", cut["2.block.3"], True)
    with torch.no_grad():
        assert (pruned(x) - zeroed(x)).abs().max() > 1e-2
    masker.remove()


def test_layernorm_streams_take_the_naive_engines_decisions(own_label_data):
    from _helpers import assert_same_decisions

    model = tiny_convnext()
    x, y = own_label_data(model, n=60, shape=(3, 16, 16), min_per_class=4)
    kwargs = dict(samples_per_class=4, progress=False, scope="all")
    fast = cs.prune(model, (x, y), engine="fast", **kwargs)
    naive = cs.prune(model, (x, y), engine="naive", **kwargs)
    assert_same_decisions(fast, naive)
    assert "0" in set(fast.labels.layer) and fast.equivalence_max_abs_diff < 1e-4


def layer_norms(model: nn.Module, layer) -> list[str]:
    return [n for n in layer.points if isinstance(model.get_submodule(n), nn.LayerNorm)]


def test_plain_resnet_prunes_without_a_coverage_warning(tiny_resnet, own_label_data):
    model = tiny_resnet()
    x, y = own_label_data(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowCoverageWarning)
        res = cs.prune(model, (x, y), method="l1", ratio=0.3, samples_per_class=3, progress=False)
    assert res.summary()["units_param_share_pct"] == round(100 * unit_coverage(model, x[:1]).share, 3) > 50


def test_regnet_x_400mf_is_covered_by_slots(own_label_data):
    """The reported case: torchvision's RegNetX-400MF, 64x64 inputs, where only the stem's 32 channels (0.058% of
    the parameters) used to be units. With slots, its blocks' channels are units; l1 at ratio=0.3 removes a
    real share of the network, with masked == pruned."""
    torch.manual_seed(0)
    model = torchvision.models.regnet_x_400mf(num_classes=10).eval()
    x, y = own_label_data(model, n=16, shape=(3, 64, 64), min_per_class=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowCoverageWarning)
        res = cs.prune(model, (x, y), method="l1", ratio=0.3, samples_per_class=1, progress=False)
    s = res.summary()
    assert s["units_param_share_pct"] > 90 and s["params_removed_pct"] > 15
    assert len(s["per_layer"]) > 40 and res.equivalence_max_abs_diff < 1e-4


class ConcatNet(nn.Module):
    """Two branches concatenated into one conv (DDRNet's DAPPM does this), then a flatten into a linear:
    the concatenation's input dim is sliced by two unit layers, the flatten's by 16 entries per channel."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(11, 7, 1), nn.BatchNorm2d(7), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(7 * 16, 9), nn.ReLU(), nn.Linear(9, 3))

    def forward(self, x):
        return self.head(self.mix(torch.cat([self.a(x), self.b(x)], 1)))


def _footprint_models(tiny_resnet):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=4,
                            mlp_ratio=2.0).eval()
    return [
        ("tiny resnet", tiny_resnet, (1, 3, 32, 32)),
        ("concat + flatten", ConcatNet, (1, 3, 8, 8)),
        ("vit heads + mlp", lambda: vit, (1, 3, 16, 16)),
        ("ddrnet", lambda: cs.models.ddrnet23_slim(num_classes=3, width=4).eval(), (1, 3, 64, 64)),
    ]


@pytest.mark.parametrize("scope", ["internal", "all"])
@pytest.mark.parametrize("which", range(4))
def test_footprints_count_a_cut_as_pruning_a_copy_does(which, scope, tiny_resnet):
    """A cut's parameter count from the footprints equals the count of a physically pruned copy, on
    random cuts: concatenated inputs sliced by two layers, a flatten's 16 columns per channel, heads,
    weights sliced on both dims, DDRNet's fusions. A footprint that dropped one layer's columns, or
    counted a concatenation's dim once per layer, would be off by those entries."""
    import random
    name, make, shape = _footprint_models(tiny_resnet)[which]
    model, x = make(), torch.randn(*shape)
    layers, cov = survey_units(model, x, scope=scope)
    assert cov.footprints is not None, name
    rng = random.Random(which)
    for _ in range(4):
        cut = {layer.name: rng.sample(range(layer.size), rng.randint(0, layer.size - 1)) for layer in layers}
        expected = count_params(remove_units(copy.deepcopy(model), x, cut))
        assert cov.footprints.params_after(cut) == expected, (name, scope, cut)
    assert cov.footprints.params_after({}) == count_params(model)
    every = layers[0]
    assert cov.footprints.params_after({every.name: list(range(every.size))}) is None  # no layer loses its last unit
    assert cov.footprints.params_after({"no such layer": [0]}) is None


@pytest.mark.parametrize("which", [0, 1, 3])
def test_footprints_count_a_cuts_macs_as_a_pruned_copy_does(which, tiny_resnet):
    """A cut's conv and linear multiply-accumulates from the footprints and each weight's output positions
    (what compaction's rule reads, cswap_nb/engines/compact.py) equal torch's FLOP counter on a physically pruned
    copy, on random cuts of networks without attention (the counter's only other matmuls)."""
    import random
    from cswap_nb.core.surgery import count_macs
    from cswap_nb.core.units import weight_positions
    name, make, shape = _footprint_models(tiny_resnet)[which]
    model, x = make(), torch.randn(*shape)
    layers, cov = survey_units(model, x, scope="all")
    positions = weight_positions(model, x)
    assert cov.footprints.macs_after({}, positions) == count_macs(model, x), name
    rng = random.Random(which)
    for _ in range(3):
        cut = {layer.name: rng.sample(range(layer.size), rng.randint(0, layer.size - 1)) for layer in layers}
        expected = count_macs(remove_units(copy.deepcopy(model), x, cut), x)
        assert cov.footprints.macs_after(cut, positions) == expected, (name, cut)


def test_session_counts_params_targets_from_footprints(tiny_resnet, own_label_data):
    """PruneSession.params_after takes the footprints' count, and it is the pruned copy's count."""
    model = tiny_resnet()
    x, y = own_label_data(model, n=48)
    session = PruneSession(model, (x, y), "l1", ratio=0.3, progress=False, samples_per_class=4)
    cut = {layer.name: list(range(layer.size // 2)) for layer in session.layers}
    assert session.coverage.footprints is not None
    assert session.params_after(cut) == count_params(remove_units(copy.deepcopy(session.template), session.example, cut))


def test_a_model_torch_pruning_cannot_graph_is_refused_with_the_reason():
    import cswap_nb as cs
    from cswap_nb.core.units import UnsupportedModel

    # torchvision's ShuffleNetV2 at a small width: its channel shuffle (a view that splits the channels into
    # groups, a transpose, a view back) after a stride-1 block makes Torch-Pruning's index mapping divide by zero
    torch.manual_seed(0)
    model = torchvision.models.ShuffleNetV2([3, 1, 1], [24, 48, 96, 192, 64], num_classes=3).eval()
    x = torch.randn(12, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    with pytest.raises(UnsupportedModel, match="dependency graph of ShuffleNetV2.*reshapes the channel dimension"):
        cs.prune(model, (x, y), method="l1", ratio=0.3, samples_per_class=None, progress=False)


def test_a_graph_whose_channels_torch_pruning_cannot_infer_is_refused():
    """torchvision's Swin Transformer: Torch-Pruning's shape inference gives up (its window partition), and
    grouping the channels then exhausted 24 GiB (swin_t) or failed on a None count (swin_s, swin_b)."""
    from torchvision.models.swin_transformer import SwinTransformer

    from cswap_nb.core.units import UnsupportedModel

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1, 2, 1], num_heads=[2, 2, 2, 2],
                            window_size=[7, 7], num_classes=3).eval()
    x = torch.randn(6, 3, 112, 112)
    with torch.no_grad():
        y = model(x).argmax(1)
    with pytest.raises(UnsupportedModel, match="could not infer the channel counts of SwinTransformer"):
        cs.prune(model, (x, y), method="l1", ratio=0.3, samples_per_class=None, progress=False)


def test_edgenext_is_surveyed_and_its_unremovable_layers_refused_before_the_work(own_label_data):
    """timm's EdgeNeXt. (1) Torch-Pruning groups channels whose indices run past a producer's own outputs (a
    view of them): such a group is not one-to-one (the survey used to fail with an IndexError). (2) Its
    cross-covariance attention reshapes ``qkv``'s outputs into heads, which the dependency graph does not see:
    removing one of those units breaks the model. A session refuses it at set-up, naming the layers, instead of
    crashing when the analysis is over."""
    import timm

    from cswap_nb.core.surgery import failing_removals
    from cswap_nb.core.units import UnsupportedModel

    torch.manual_seed(0)
    model = timm.create_model("edgenext_xx_small", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    layers, cov = survey_units(model, x)
    assert layers and cov.excluded[NOT_ONE_TO_ONE] > 0
    broken = failing_removals(model, x, layers)
    assert set(broken) == {"stages.1.blocks.1.xca.qkv", "stages.2.blocks.5.xca.qkv", "stages.3.blocks.1.xca.qkv"}
    assert all("is invalid for input of size" in err for err in broken.values())
    fine = [layer for layer in layers if layer.name not in broken]
    assert failing_removals(model, x, fine) == {}
    x, y = own_label_data(model, n=24, shape=(3, 64, 64), min_per_class=2)
    with pytest.raises(UnsupportedModel, match=r"breaks the model.*stages\.1\.blocks\.1\.xca\.qkv.*ignored_layers="):
        cs.prune(model, (x, y), method="l1", ratio=0.3, samples_per_class=2, progress=False)
    ignored = [model.get_submodule(name) for name in broken]
    res = cs.prune(model, (x, y), method="l1", ratio=0.3, samples_per_class=2, progress=False, ignored_layers=ignored)
    assert res.params_removed_pct > 5 and res.equivalence_max_abs_diff < 1e-4


def test_the_index_mapping_is_computed_once_per_survey_and_after_each_prune_only(monkeypatch):
    """Torch-Pruning recomputes every concatenation's index mapping on each get_pruning_group call
    (cswap_nb.core.units._MappingMemo). The survey, which prunes nothing, must compute it once and find exactly
    the layers and coverage it finds with Torch-Pruning's own behaviour; a surgery must recompute it after each
    prune (its channel counts changed) and give the same pruned network."""
    from torch_pruning.dependency import index_mapping as im
    from cswap_nb.core.units import MAPPINGS, _survey

    model = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    calls = []
    original = MAPPINGS.original

    def counting(graph):
        calls.append(graph)
        return original(graph)

    monkeypatch.setattr(MAPPINGS, "original", counting)
    layers, cov = _survey(model, x, "all", None, coverage=True)
    memo_calls = len(calls)
    cut = {layer.name: [0, 2] for layer in layers if layer.size > 2}
    calls.clear()
    pruned = remove_units(copy.deepcopy(model), x, cut)
    surgery_calls = len(calls)

    monkeypatch.setattr(im, "update_index_mapping", counting)  # Torch-Pruning's own: on every call
    calls.clear()
    layers_ref, cov_ref = _survey(model, x, "all", None, coverage=True)
    assert len(calls) > 5 * memo_calls
    assert memo_calls == 2  # Torch-Pruning's build computes it, then the survey's first group
    assert [(la.name, la.size, la.points) for la in layers] == [(la.name, la.size, la.points) for la in layers_ref]
    assert str(cov) == str(cov_ref)
    ref = remove_units(copy.deepcopy(model), x, cut)
    assert surgery_calls == 1 + len(cut)  # the build's, then before each anchor's group (after the previous prune)
    assert [p.shape for p in pruned.parameters()] == [p.shape for p in ref.parameters()]
    with torch.no_grad():
        assert torch.allclose(pruned(x), ref(x))


def test_the_maskers_channel_masks_follow_the_removed_units_at_every_point():
    """Masker.set writes a layer's masks at all its points in one operation (one flat tensor), and rows_keep
    builds the per-row masks from a table: both must equal masks built unit by unit from the layers' points,
    with a DenseNet's channels masked at every later norm of their block and several layers sharing a point."""
    from cswap_nb.core.units import Masker, find_unit_layers, unit_channels

    model = torchvision.models.DenseNet(growth_rate=4, block_config=(3, 2), num_init_features=8, bn_size=2,
                                        num_classes=3).eval()
    layers = find_unit_layers(model, torch.randn(1, 3, 16, 16))
    assert max(len(layer.points) for layer in layers) >= 3
    masker = Masker(model, layers)
    assert masker._flat is not None and set(masker._flat_pos) == {layer.name for layer in layers}  # one operation each
    g = torch.Generator().manual_seed(0)
    try:
        for step in range(60):
            layer = layers[int(torch.randint(len(layers), (1,), generator=g))]
            units = torch.randperm(layer.size, generator=g)[: int(torch.randint(1, layer.size + 1, (1,), generator=g))]
            masker.set(layer.name, units.tolist(), bool(step % 3))
            expected = {}
            for other in layers:
                removed = masker.removed[other.name].nonzero().flatten().tolist()
                assert masker.removed_units[other.name] == tuple(removed)
                for point, per_unit in other.points.items():
                    keep = expected.setdefault(point, torch.ones(masker._keep[point].numel()))
                    keep[unit_channels(per_unit, removed)] = 0.0
            for point, keep in expected.items():
                assert torch.equal(masker._keep[point], keep), (step, point)
            assert masker._masked == {p for p, keep in expected.items() if not bool(keep.all())}
            point = next(iter(layer.points))
            states = [[], [0], list(range(layer.size))]
            got = masker.rows_keep(layer.name, point, states, 2)
            base = expected[point].clone()
            base[unit_channels(layer.points[point], list(masker.removed_units[layer.name]))] = 1.0
            for i, units in enumerate(states):
                want = base.clone()
                want[unit_channels(layer.points[point], units)] = 0.0
                assert torch.equal(got[2 * i], want) and torch.equal(got[2 * i + 1], want)
    finally:
        masker.remove()
