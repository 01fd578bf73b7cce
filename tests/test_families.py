"""MobileNetV2, ResNet50 and ViT as first-class families (cswap_nb/METHOD.md §4).

For each family: masking units (the causal intervention) equals removing them physically,
on full-size random-weight models from torchvision/timm and on the shipped checkpoints;
attention heads are whole units; the fast engine takes the naive engine's decisions;
pruned models survive a save / ``load_pruned`` round trip.
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import cswap_nb as cs
from _helpers import mask_and_remove
from cswap_nb import models
from cswap_nb.pruning.descent import CSwapConfig, visiting_plan
from cswap_nb.engines.passes import sequential_parts
from cswap_nb.experiments.effects import attention_maps
from cswap_nb.core.surgery import count_params, remove_heads, remove_units
from cswap_nb.core.units import AUTO_GROUP_SIZE, Masker, find_unit_layers

TOL = 1e-4
COLS = ["layer", "unit", "label", "pruned"]


def _mobilenet_v2():
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2(num_classes=10)


def _timm_resnet50():
    torch.manual_seed(1)
    return timm.create_model("resnet50", pretrained=False, num_classes=10)


def _vit(embed_dim: int = 192, depth: int = 2, num_heads: int = 3, patch_size: int = 8):
    """A vit_tiny-like timm ViT at 32x32 input (random weights)."""
    torch.manual_seed(2)
    return VisionTransformer(img_size=32, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                             num_heads=num_heads, num_classes=10)


RANDOM_MODELS = {"mobilenet_v2": _mobilenet_v2, "timm-resnet50": _timm_resnet50, "vit-tiny-like": _vit}
CHECKPOINTS = ["mobilenetv2-digits", "resnet50-digits", "vit-digits"]


@pytest.fixture(scope="module")
def checkpoints(zoo_load):
    """The shipped checkpoints of this file's families (loaded once; tests deep-copy them)."""
    return {name: zoo_load(name)[0] for name in CHECKPOINTS}


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_shipped_checkpoints_are_accurate_and_describable(name, checkpoints, digits):
    model = checkpoints[name]  # cs.zoo.load verified its sha256 against data/zoo.json
    record = cs.zoo.read_manifest()[name]
    acc = cs.evaluate(model, digits.test)
    assert acc >= 95.0
    assert acc == pytest.approx(record["test_accuracy_pct"], abs=0.6)
    assert count_params(model) == record["params"]
    assert models.shapes_of(models.build(models.describe(model))) == models.shapes_of(model)
    assert name in (cs.zoo.data_dir() / "README.md").read_text()




@pytest.mark.parametrize("name", list(RANDOM_MODELS))
def test_masked_equals_pruned_on_full_size_random_models(name, randomize_bn):
    model = randomize_bn(RANDOM_MODELS[name](), seed=11)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    params_before = count_params(model)
    layers, dense, masked, pruned, _ = mask_and_remove(model, x)
    assert (masked - dense).abs().max() > 1e-3, "masking 40% of the units changed nothing"
    assert float((pruned - masked).abs().max()) <= TOL
    assert count_params(model) < params_before
    assert all(layer.kind in ("internal", "heads") for layer in layers)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_masked_equals_pruned_on_shipped_checkpoints(name, checkpoints, digits):
    model = copy.deepcopy(checkpoints[name])
    x = digits.test.x[:8]
    _, dense, masked, pruned, _ = mask_and_remove(model, x, fraction=0.3)
    assert (masked - dense).abs().max() > 1e-3
    assert float((pruned - masked).abs().max()) <= TOL


def test_mobilenet_units_are_the_expanded_channels():
    model = _mobilenet_v2().eval()
    x = torch.randn(1, 3, 32, 32)
    layers = {layer.name: layer for layer in find_unit_layers(model, x)}
    for i, block in enumerate(model.features[2:-1], start=2):  # every inverted residual with an expansion
        expand, dw = block.conv[0][0], block.conv[1][0]
        layer = layers[f"features.{i}.conv.0.0"]
        assert layer.kind == "internal" and layer.size == expand.out_channels == dw.out_channels
        # masked after the expand BN and after the depthwise BN: the depthwise BN's shift dies too
        assert set(layer.points) == {f"features.{i}.conv.0.1", f"features.{i}.conv.1.1"}
    assert torch.tensor(0.0).clamp(0, 6) == 0  # ReLU6(0) = 0: a masked channel stays zero through the dw conv
    # nothing else: not the stem, not block outputs, not the last 1x1 conv (those come with scope="all")
    assert set(layers) == {f"features.{i}.conv.0.0" for i in range(2, len(model.features) - 1)}
    wider = {layer.name for layer in find_unit_layers(model, x, scope="all")}
    assert {"features.0.0", "features.18.0"} <= wider


def test_mobilenet_removal_shrinks_the_depthwise_conv(randomize_bn):
    model = randomize_bn(_mobilenet_v2().eval(), seed=3)
    x = torch.randn(1, 3, 32, 32)
    remove_units(model, x, {"features.4.conv.0.0": list(range(0, 144, 3))})
    block = model.features[4].conv
    assert block[0][0].out_channels == block[1][0].in_channels == block[1][0].out_channels == 96
    assert block[1][0].groups == 96 and block[1][1].num_features == 96 and block[2].in_channels == 96


def test_resnet50_units_are_conv1_and_conv2_of_each_bottleneck():
    model = _timm_resnet50().eval()
    layers = find_unit_layers(model, torch.randn(1, 3, 32, 32))
    names = {layer.name for layer in layers}
    for s in range(1, 5):
        for b in range(len(getattr(model, f"layer{s}"))):
            assert {f"layer{s}.{b}.conv1", f"layer{s}.{b}.conv2"} <= names


def test_vit_units_are_mlp_hidden_units_and_heads():
    model = _vit().eval()
    layers = find_unit_layers(model, torch.randn(1, 3, 32, 32), scope="all")
    got = {(layer.name, layer.kind, layer.size) for layer in layers}
    expected = {(f"blocks.{i}.attn", "heads", 3) for i in range(2)} | \
               {(f"blocks.{i}.mlp.fc1", "internal", 768) for i in range(2)}
    assert got == expected  # never the qkv channels alone, never the embedding stream (LayerNorm-coupled)
    heads = next(layer for layer in layers if layer.kind == "heads")
    assert heads.head_dim == 64 and list(heads.points) == ["blocks.0.attn.proj"]


@pytest.mark.parametrize("fused", [True, False])
def test_masking_a_head_equals_removing_it(fused):
    model = _vit(embed_dim=96, depth=2, num_heads=4).eval()
    for block in model.blocks:
        block.attn.fused_attn = fused
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    layers = [layer for layer in find_unit_layers(model, x[:1]) if layer.kind == "heads"]
    masker = Masker(model, layers)
    masker.set("blocks.0.attn", [1, 3], True)
    masker.set("blocks.1.attn", [0], True)
    with torch.no_grad():
        masked = model(x)
    masker.remove()
    remove_units(model, x[:1], masker.pruned())
    with torch.no_grad():
        assert float((model(x) - masked).abs().max()) <= TOL
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    assert (a0.num_heads, a0.attn_dim, a0.head_dim) == (2, 48, 24)
    assert (a1.num_heads, a1.attn_dim) == (3, 72)
    assert a0.qkv.weight.shape == (3 * 48, 96) and a0.qkv.bias.shape == (144,) and a0.proj.weight.shape == (96, 48)
    assert a0.scale == 24 ** -0.5
    assert model.embed_dim == 96 and model.blocks[0].norm1.normalized_shape == (96,)


def test_removing_heads_keeps_the_others_exactly():
    """Head h's q, k, v rows and proj columns are cut; the remaining heads compute what they did."""
    model = _vit(embed_dim=96, depth=1, num_heads=4).eval()
    attn = model.blocks[0].attn
    ref = copy.deepcopy(attn)
    remove_heads(attn, [2])
    w = ref.qkv.weight.reshape(3, 4, 24, 96)
    assert torch.equal(attn.qkv.weight, w[:, [0, 1, 3]].reshape(-1, 96))
    assert torch.equal(attn.proj.weight, ref.proj.weight.reshape(96, 4, 24)[:, [0, 1, 3]].reshape(96, -1))
    with pytest.raises(ValueError, match="every head"):
        remove_heads(attn, [0, 1, 2])


def test_vit_mlp_layers_are_tested_in_groups_by_default():
    model = _vit().eval()  # MLP hidden width 768 > threshold: groups of 4 by default
    layers = find_unit_layers(model, torch.randn(1, 3, 32, 32))
    plan = visiting_plan(layers, CSwapConfig())
    fc1 = [units for layer, units in plan if layer.name.endswith("fc1")]
    heads = [units for layer, units in plan if layer.kind == "heads"]
    assert all(len(u) == AUTO_GROUP_SIZE for u in fc1) and len(fc1) == 2 * 768 // AUTO_GROUP_SIZE
    assert all(len(u) == 1 for u in heads)
    single = visiting_plan(layers, CSwapConfig(group_size=1))  # explicit single units
    assert all(len(u) == 1 for _, u in single)
    # no grouping in CNNs by default
    cnn_layers = find_unit_layers(_mobilenet_v2().eval(), torch.randn(1, 3, 32, 32))
    assert all(len(u) == 1 for _, u in visiting_plan(cnn_layers, CSwapConfig()))


def test_wide_dense_layers_are_tested_in_groups_by_default():
    """A fully connected layer of thousands of units (a VGG classifier's) is tested in groups that leave it
    at most AUTO_DENSE_TESTS tests; at the threshold and in convolutions, units stay single."""
    from cswap_nb.core.units import AUTO_DENSE_TESTS, AUTO_DENSE_THRESHOLD

    torch.manual_seed(0)
    wide, edge = 2048, AUTO_DENSE_THRESHOLD
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, wide), nn.ReLU(), nn.Linear(wide, edge), nn.ReLU(),
                          nn.Linear(edge, 10)).eval()
    layers = {layer.name: layer for layer in find_unit_layers(model, torch.randn(1, 1, 8, 8))}
    assert layers["1"].auto_group == -(-wide // AUTO_DENSE_TESTS) == 8 and layers["3"].auto_group == 1
    plan = visiting_plan(list(layers.values()), CSwapConfig())
    first = [units for layer, units in plan if layer.name == "1"]
    assert len(first) == AUTO_DENSE_TESTS and sorted(u for g in first for u in g) == list(range(wide))
    x = torch.randn(400, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # its own predictions: every sample correct
    res = cs.prune(model, (x, y), samples_per_class=4, progress=False, alpha=0.05)
    assert res.equivalence_max_abs_diff < 1e-4 and len(res.labels) == AUTO_DENSE_TESTS + edge
    wide_conv = nn.Sequential(nn.Conv2d(1, 2048, 3), nn.ReLU(), nn.Conv2d(2048, 4, 1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    assert all(layer.auto_group == 1 for layer in find_unit_layers(wide_conv, torch.randn(1, 1, 8, 8)))


@pytest.mark.parametrize("name", ["mobilenetv2-digits", pytest.param("vit-digits", marks=pytest.mark.slow)])  # vit: ~14 s
def test_fast_and_naive_engines_agree_on_checkpoints(name, checkpoints, digits):
    model = checkpoints[name]
    assert sequential_parts(model) is not None
    # units tested 16 at a time: a few hundred tests instead of thousands, same code path
    kwargs = dict(samples_per_class=3, group_size=16, progress=False)
    fast = cs.prune(model, digits.calib, engine="fast", **kwargs)
    naive = cs.prune(model, digits.calib, engine="naive", **kwargs)
    assert fast.engine["fallback"] is None
    assert fast.labels[COLS].equals(naive.labels[COLS])
    assert fast.engine["forward_equivalents"] < naive.engine["forward_equivalents"]


@pytest.mark.parametrize("build", [_mobilenet_v2, _vit], ids=["mobilenet_v2", "vit"])
def test_split_forward_reproduces_the_model(build):
    model = build().eval()
    x = torch.randn(2, 3, 32, 32)
    h = x
    with torch.no_grad():
        for _, fn, _ in sequential_parts(model):
            h = fn(h)
        assert torch.allclose(h, model(x), atol=1e-6)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_save_and_load_pruned_round_trip(name, checkpoints, digits, tmp_path):
    model = checkpoints[name]
    res = cs.prune(model, digits.calib, samples_per_class=3, group_size=32, progress=False)
    assert res.spec is not None and res.params_after < res.params_before
    # tables count units, not tests: every unit of a layer is labelled once, in groups of 32
    table = res.per_layer
    assert (table[["critical", "neutral", "detrimental"]].sum(axis=1) == table.units).all()
    assert (table.tests == -(-table.units // 32)).all()
    assert sum(res.summary()["counts"].values()) == table.units.sum()
    path = res.save(tmp_path / "pruned.pt")
    reloaded = cs.load_pruned(path)
    x = digits.test.x[:16]
    with torch.no_grad():
        assert torch.equal(reloaded(x), res.model.eval()(x))
    assert count_params(reloaded) == res.params_after


@pytest.mark.parametrize("build", [_mobilenet_v2, _timm_resnet50, _vit], ids=["mobilenet_v2", "resnet50", "vit"])
def test_describe_build_round_trip_of_full_size_models(build):
    model = build()
    spec = models.describe(model)
    assert models.shapes_of(models.build(spec)) == models.shapes_of(model)


def test_reshape_to_rebuilds_head_and_channel_pruned_vit():
    model = _vit(embed_dim=96, depth=2, num_heads=4).eval()
    x = torch.randn(2, 3, 32, 32)
    remove_units(model, x[:1], {"blocks.0.attn": [0, 2], "blocks.1.mlp.fc1": list(range(100))})
    rebuilt = models.reshape_to(models.build(models.describe(_vit(embed_dim=96, depth=2, num_heads=4))),
                                models.shapes_of(model))
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.blocks[0].attn.num_heads == 2 and rebuilt.blocks[0].attn.attn_dim == 48
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))


def test_unsupported_architectures_say_so():
    with pytest.raises(ValueError, match="cannot describe"):
        models.describe(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="unknown key"):
        models.build({"family": "timm.vit", "depth": 1, "windows": 3})
    with pytest.raises(ValueError, match="timm VisionTransformer"):
        attention_maps(_mobilenet_v2(), torch.randn(1, 3, 32, 32))


def test_attention_maps_follow_head_pruning():
    model = _vit(embed_dim=96, depth=2, num_heads=4).eval()
    x = torch.randn(3, 3, 32, 32)
    maps = attention_maps(model, x)
    assert maps.shape == (3, 4, 4, 4)
    # softmax weights of the class token over the patches (the rest goes to the class token itself)
    assert bool((maps >= 0).all()) and bool((maps.sum((2, 3)) <= 1 + 1e-5).all())
    kept = attention_maps(model, x)[:, [0, 3]]
    remove_units(model, x[:1], {"blocks.1.attn": [1, 2]})
    after = attention_maps(model, x)
    assert after.shape == (3, 2, 4, 4) and torch.allclose(after, kept, atol=1e-6)


def test_family_plots_draw_on_the_given_axis():
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cswap_nb.ui.plots import plot_attention_maps, plot_group_sizes

    maps = attention_maps(_vit(embed_dim=96, depth=1, num_heads=4).eval(), torch.randn(1, 3, 32, 32))[0]
    ax = Figure().add_subplot()
    assert plot_attention_maps(maps[[0, 2]], heads=[0, 2], ax=ax) is ax
    assert [t.get_text() for t in ax.get_xticklabels()] == ["head 0", "head 2"]
    with pytest.raises(ValueError, match="2 maps but 3 head labels"):
        plot_attention_maps(maps[:2], heads=[0, 1, 2])
    rows = [{"group_size": g, "tests": 100 // g, "params_removed_pct": 40.0 - g, "metric_after": 98.0,
             "metric_before": 99.0} for g in (1, 4, 16)]
    assert isinstance(plot_group_sizes(rows), Axes)


def test_describe_refuses_vits_and_mobilenets_it_would_silently_change():
    """A spec that rebuilds different layers (activation, norm eps, dynamic size) must be refused."""
    import functools

    odd = [
        VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, act_layer=nn.ReLU),
        VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, dynamic_img_size=True),
        torchvision.models.mobilenet_v2(num_classes=10, norm_layer=functools.partial(nn.BatchNorm2d, eps=1e-3)),
    ]
    for model in odd:
        with pytest.raises(ValueError, match="describe: this"):
            models.describe(model)
    # settings that do not change the eval-mode function are fine
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, drop_rate=0.1,
                            drop_path_rate=0.1, global_pool="avg")
    assert models.shapes_of(models.build(models.describe(vit))) == models.shapes_of(vit)
