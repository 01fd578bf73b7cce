"""DDRNet-23-slim and DDRNet-23 (cswap_nb.models.ddrnet): the published weights' layout, and pruning.

The reference ``tests/data/ddrnet_state_dicts.json`` lists, for the authors' four published
configurations, every state-dict key with its shape (in order), the parameter count and
the output shape for a 1x3x128x256 input; the models built here must match it exactly so
that the official checkpoints load. Then: widths, input checks, checkpoint loading and its
error messages, the aux head, describe/build, the unit layers Torch-Pruning finds, and
masked == physically pruned on small-width models with randomised BatchNorms.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cswap_nb as cs
from _helpers import mask_and_remove
from cswap_nb import models
from cswap_nb.models.ddrnet import DualResNet, load_weights, strip_aux
from cswap_nb.core.surgery import count_params, remove_units
from cswap_nb.core.units import Masker, find_unit_layers

TOL = 1e-4
REFERENCE = json.loads((Path(__file__).parent / "data" / "ddrnet_state_dicts.json").read_text())
PUBLISHED = {
    "ddrnet23_slim": (models.ddrnet23_slim, False),
    "ddrnet23_slim_aux": (models.ddrnet23_slim, True),
    "ddrnet23": (models.ddrnet23, False),
    "ddrnet23_aux": (models.ddrnet23, True),
}
CONSTRUCTORS = {"23-slim": models.ddrnet23_slim, "23": models.ddrnet23}


def _small(variant: str = "23-slim", aux: bool = False, width: int = 8, seed: int = 0, num_classes: int = 19):
    torch.manual_seed(seed)
    return CONSTRUCTORS[variant](num_classes=num_classes, aux=aux, width=width)


def _x(n: int = 2, h: int = 64, w: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configurations_match_the_reference(name):
    build, aux = PUBLISHED[name]
    ref = REFERENCE[name]
    model = build(aux=aux).eval()
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == ref["state_dict"]
    assert count_params(model) == ref["params"]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 256))
    assert isinstance(out, torch.Tensor) and list(out.shape) == ref["output_shape_for_1x3x128x256"]


def test_width_sets_planes_and_scales_dappm_and_head():
    slim = models.ddrnet23_slim(width=16)
    assert (slim.planes, slim.spp_planes, slim.head_planes) == (16, 64, 32)
    assert slim.conv1[0].weight.shape == (16, 3, 3, 3)
    assert slim.spp.scale0[2].weight.shape == (64, 256, 1, 1)  # 16 * planes in, spp_planes out
    assert slim.final_layer.conv1.weight.shape == (32, 64, 3, 3)  # 4 * planes in, head_planes out
    full = models.ddrnet23(width=32, num_classes=5)
    assert (full.planes, full.spp_planes, full.head_planes) == (32, 64, 64)
    assert full.final_layer.conv2.weight.shape == (5, 64, 1, 1)
    tiny = models.ddrnet23_slim(width=1)
    assert (tiny.planes, tiny.spp_planes, tiny.head_planes) == (1, 4, 2)
    assert models.shapes_of(models.ddrnet23_slim(width=32)) == models.shapes_of(models.ddrnet23_slim())
    for bad in (0, -4, 2.5, True, "32"):
        with pytest.raises(ValueError, match="width must be None"):
            models.ddrnet23_slim(width=bad)


def test_input_sides_must_be_multiples_of_8():
    model = _small().eval()
    with torch.no_grad():
        assert model(_x(1, 40, 72)).shape == (1, 19, 5, 9)
        for h, w in ((60, 64), (64, 68), (30, 30)):
            with pytest.raises(ValueError, match="multiples of 8.*e.g. to"):
                model(_x(1, h, w))
        with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
            model(torch.randn(3, 64, 64))


def test_aux_returns_two_outputs_in_training_and_one_tensor_in_eval():
    model = _small(aux=True).train()
    out = model(_x())
    assert isinstance(out, list) and len(out) == 2
    assert out[0].shape == out[1].shape == (2, 19, 8, 8)
    model.eval()
    with torch.no_grad():
        main = model(_x())
        assert isinstance(main, torch.Tensor) and main.shape == (2, 19, 8, 8)
        both = model.forward_all(_x())
    assert torch.equal(both[0], main) and both[1].shape == main.shape
    assert model.auxiliary_heads() == [model.seghead_extra]
    plain = _small(aux=False).train()
    assert isinstance(plain(_x()), torch.Tensor) and plain.auxiliary_heads() == []


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def test_weights_load_from_any_usual_checkpoint_layout(tmp_path):
    source = _small(aux=True, width=4, seed=3).eval()
    state = source.state_dict()
    loss = {"loss.criterion.weight": torch.ones(19)}  # the authors' training wrapper saves its loss too
    layouts = {
        "bare": state,
        "state_dict": {"state_dict": state, "epoch": 484},
        "model": {"model": _prefixed(state, "module.")},
        "official": {**_prefixed(state, "model."), **loss},
        "dataparallel-official": {"state_dict": {**_prefixed(state, "module.model."), **_prefixed(loss, "module.")}},
    }
    x = _x(1)
    with torch.no_grad():
        expected = source(x)
    for name, blob in layouts.items():
        path = tmp_path / f"{name}.pt"
        torch.save(blob, path)
        for weights in (path, str(path), blob):
            model = models.ddrnet23_slim(aux=True, width=4, weights=weights).eval()
            with torch.no_grad():
                assert torch.equal(model(x), expected), name
    target = _small(aux=True, width=4, seed=9).eval()
    assert load_weights(target, layouts["official"]) is target
    with torch.no_grad():
        assert torch.equal(target(x), expected)


def _message(build, weights) -> str:
    with pytest.raises(ValueError) as info:
        build(weights=weights)
    return str(info.value)


def test_weight_mismatches_say_what_was_built_and_how_to_fix_it():
    with_aux = _small(aux=True, width=4).state_dict()
    without_aux = _small(aux=False, width=4).state_dict()
    msg = _message(lambda weights: models.ddrnet23_slim(width=4, weights=weights), with_aux)
    assert "unexpected keys (13): seghead_extra.bn1.weight" in msg and "build with aux=True" in msg
    assert "DDRNet-23-slim (planes=4, spp_planes=16, head_planes=8, num_classes=19, aux=False)" in msg
    msg = _message(lambda weights: models.ddrnet23_slim(width=4, aux=True, weights=weights), without_aux)
    assert "missing keys (13)" in msg and "build with aux=False" in msg
    msg = _message(lambda weights: models.ddrnet23_slim(width=4, num_classes=7, weights=weights), without_aux)
    assert "final_layer.conv2.weight [19, 8, 1, 1] vs [7, 8, 1, 1] here" in msg
    assert "num_classes=19" in msg and "aux=" not in msg.split("\n", 1)[1]
    msg = _message(lambda weights: models.ddrnet23(weights=weights), models.ddrnet23_slim().state_dict())
    assert "planes=32: build ddrnet23_slim()" in msg and "(+" in msg  # long lists are cut
    msg = _message(lambda weights: models.ddrnet23_slim(width=4, weights=weights),
                   {**without_aux, "criterion.weight": torch.ones(19)})  # only loss.* keys are dropped
    assert "unexpected keys (1): criterion.weight" in msg
    msg = _message(lambda weights: models.ddrnet23_slim(width=4, weights=weights), {"epoch": 3, "lr": 0.01})
    assert "holds no state dict" in msg


def test_describe_build_round_trip():
    for variant, aux in (("23-slim", False), ("23-slim", True), ("23", True)):
        model = _small(variant, aux=aux, width=6, num_classes=5)
        spec = models.describe(model)
        assert spec == {"family": "ddrnet", "variant": variant, "num_classes": 5, "aux": aux, "planes": 6,
                        "spp_planes": model.spp_planes, "head_planes": model.head_planes}
        assert json.loads(json.dumps(spec)) == spec
        rebuilt = models.build(spec)
        assert isinstance(rebuilt, DualResNet) and repr(rebuilt) == repr(model)
        assert models.shapes_of(rebuilt) == models.shapes_of(model)
    assert models.describe(models.ddrnet23()) == {"family": "ddrnet", "variant": "23", "num_classes": 19,
                                                  "aux": False, "planes": 64, "spp_planes": 128, "head_planes": 128}
    assert "ddrnet" in models.FAMILIES
    with pytest.raises(ValueError, match="unknown key"):
        models.build({"family": "ddrnet", "variant": "23", "depth": 39})
    with pytest.raises(ValueError, match="variant must be one of"):
        models.build({"family": "ddrnet", "variant": "39"})
    swapped = _small()
    swapped.final_layer.relu = torch.nn.GELU()
    with pytest.raises(ValueError, match="describe: this DualResNet"):
        models.describe(swapped)


# Unit layers of DDRNet-23-slim at the published width (planes 32). Internal layers by anchor
# name; coupled ones by their producers (Torch-Pruning picks which producer anchors a group).
INTERNAL_SLIM = {
    "conv1.0": 32, "layer1.0.conv1": 32, "layer1.1.conv1": 32, "layer2.0.conv1": 64, "layer2.1.conv1": 64,
    "layer3.0.conv1": 128, "layer3.1.conv1": 128, "layer3_.0.conv1": 64, "layer3_.1.conv1": 64,
    "layer4.0.conv1": 256, "layer4.1.conv1": 256, "layer4_.0.conv1": 64, "layer4_.1.conv1": 64, "down4.0": 128,
    "layer5_.0.conv1": 64, "layer5_.0.conv2": 64, "layer5.0.conv1": 256, "layer5.0.conv2": 256,
    "spp.process4.2": 128, "final_layer.conv1": 64,
}
COUPLED_SLIM = {
    # stem output + layer1's residual stream
    ("conv1.3", "layer1.0.conv2", "layer1.1.conv2"): 32,
    # the high-resolution trunk: layer2's stream, layer3_, layer4_ and both fusions into it
    ("compression3.0", "compression4.0", "layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2",
     "layer3_.0.conv2", "layer3_.1.conv2", "layer4_.0.conv2", "layer4_.1.conv2"): 64,
    # the low-resolution trunk, stage by stage, with the fusions into it
    ("down3.0", "layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv2"): 128,
    ("down4.3", "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv2"): 256,
    ("layer5.0.conv3", "layer5.0.downsample.0"): 512,
    # DAPPM's hierarchical sums: each pooled branch + the previous branch's output
    ("spp.scale0.2", "spp.scale1.3"): 128, ("spp.process1.2", "spp.scale2.3"): 128,
    ("spp.process2.2", "spp.scale3.3"): 128, ("spp.process3.2", "spp.scale4.3"): 128,
    # the final fusion: high-resolution layer5_ + upsampled DAPPM output
    ("layer5_.0.conv3", "layer5_.0.downsample.0", "spp.compression.2", "spp.shortcut.2"): 128,
}


def test_unit_layers_of_the_published_slim_width():
    model = models.ddrnet23_slim(aux=True).eval()
    x = torch.randn(1, 3, 64, 64)
    internal = find_unit_layers(model, x, scope="internal")
    assert {layer.name: layer.size for layer in internal} == INTERNAL_SLIM
    assert all(layer.kind == "internal" for layer in internal)
    assert sum(layer.size for layer in internal) == 2208
    every = find_unit_layers(model, x, scope="all")
    coupled = {tuple(sorted(layer.producers)): layer.size for layer in every if layer.kind == "coupled"}
    assert coupled == COUPLED_SLIM
    assert sum(layer.size for layer in every) == 2208 + 1632
    touched = {name for layer in every for name in [layer.name, *layer.producers, *layer.points]}
    assert "final_layer.conv2" not in touched  # the 19 classes are never units
    # the aux head is never a unit; its input BN is masked with the high-resolution stream it reads
    assert not any(n.startswith("seghead_extra") for layer in every for n in [layer.name, *layer.producers])
    assert {n for n in touched if n.startswith("seghead_extra")} <= {"seghead_extra.bn1"}
    # DAPPM's concatenation: each branch is masked at its own slice of the compression BN
    cat = {tuple(sorted(layer.producers)): layer.points["spp.compression.0"] for layer in every
           if "spp.compression.0" in layer.points}
    assert cat[("spp.scale0.2", "spp.scale1.3")] == list(range(128))
    assert cat[("spp.process4.2",)] == list(range(512, 640))




@pytest.mark.parametrize("scope", ["internal", "all"])
@pytest.mark.parametrize("variant", ["23-slim", "23"])
def test_masked_equals_pruned(variant, scope, randomize_bn):
    model = randomize_bn(_small(variant, aux=True), seed=11)
    params_before = count_params(model)
    layers, dense, masked, pruned, _ = mask_and_remove(model, _x(), scope)
    assert len(layers) == (20 if scope == "internal" else 30)
    assert (masked - dense).abs().max() > 1e-2, "masking 40% of the units changed nothing"
    assert float((pruned - masked).abs().max()) <= TOL
    assert count_params(model) < params_before


def test_aux_head_is_resized_with_the_trunk_and_never_a_unit(randomize_bn):
    model = _small(aux=True)
    mask_and_remove(model, _x(), "internal")
    assert len(model.train()(_x())) == 2  # internal units never touch the aux head's input
    model = randomize_bn(_small(aux=True), seed=4).eval()
    reference = [o.detach() for o in model.forward_all(_x())]
    layers = find_unit_layers(model, _x(), scope="all")
    assert not any(layer.name.startswith("seghead_extra") for layer in layers)
    masker = Masker(model, layers)
    trunk = next(layer for layer in layers if "layer3_.0.conv2" in layer.producers)  # the high-resolution stream
    masker.set(trunk.name, list(range(0, trunk.size, 2)), True)
    with torch.no_grad():
        masked = [o.detach() for o in model.forward_all(_x())]
    masker.remove()
    remove_units(model, _x(), masker.pruned())
    assert model.seghead_extra.conv1.in_channels == trunk.size - len(range(0, trunk.size, 2))
    with torch.no_grad():
        pruned = model.forward_all(_x())
    assert (masked[1] - reference[1]).abs().max() > 1e-3  # the aux head reads the pruned stream
    for a, b in zip(masked, pruned):
        assert float((a - b).abs().max()) <= TOL
    out = model.train()(_x())
    assert len(out) == 2 and out[1].shape[1] == 19
    stripped = strip_aux(_small(aux=True))
    assert not stripped.aux and not hasattr(stripped, "seghead_extra")
    assert models.describe(stripped)["aux"] is False


@pytest.mark.parametrize("scope", ["internal", "all"])
def test_pruned_model_reloads_from_spec_and_shapes(scope, randomize_bn, tmp_path):
    model = randomize_bn(_small("23-slim", aux=(scope == "internal")), seed=5)
    spec = models.describe(model)
    x = _x()
    mask_and_remove(model, x, scope)
    assert models.describe(model) == spec  # a pruned DualResNet keeps its spec
    rebuilt = models.reshape_to(models.build(spec), models.shapes_of(model))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))
    # the file format of PruneResult.save / cs.load_pruned
    path = tmp_path / "pruned.pt"
    torch.save({"format": cs.pruning.api.PRUNED_FORMAT, "spec": spec, "shapes": models.shapes_of(model),
                "state_dict": model.state_dict(), "summary": {}}, path)
    reloaded = cs.load_pruned(path)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))
    assert count_params(reloaded) == count_params(model)
