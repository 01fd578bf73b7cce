"""The public API: ``cs.prune``, ``PruneResult`` (summary, save), ``cs.load_pruned``, errors."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
import torchvision
from torch import nn

import cswap_nb as cs
from cswap_nb.pruning.session import PruneSession
from cswap_nb.core.surgery import count_params
from cswap_nb.core.units import find_unit_layers, unit_coverage

pytestmark = pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")

SUMMARY_KEYS = {"model", "method", "alpha", "params_before", "params_after", "params_removed_pct",
                "macs_before", "macs_after", "metric_name", "metric_before", "metric_after", "seconds",
                "counts", "per_layer", "units_param_share_pct", "units_removable_pct", "units_excluded_pct"}


@pytest.fixture(scope="module")
def zoo_result(zoo_model, digits):
    """One quick C-SWAP run on the shipped checkpoint, shared by the read-only tests below."""
    return cs.prune(zoo_model, digits.calib, samples_per_class=5, progress=False,
                    eval_data=(digits.test.x[:120], digits.test.y[:120]), model_name="resnet18-digits")


# ------------------------------------------------------------------ determinism


@pytest.mark.slow
@pytest.mark.parametrize("order", ["magnitude", "random"])
def test_same_seed_same_result(zoo_model, digits, order):
    runs = [cs.prune(zoo_model, digits.calib, samples_per_class=5, order=order, seed=0, progress=False)
            for _ in range(2)]
    a, b = runs
    assert a.labels["label"].tolist() == b.labels["label"].tolist()
    assert a.labels["pruned"].tolist() == b.labels["pruned"].tolist()
    assert a.labels[["layer", "unit"]].astype(str).values.tolist() == b.labels[["layer", "unit"]].astype(str).values.tolist()
    assert a.labels["p_value"].tolist() == b.labels["p_value"].tolist()
    assert a.pruned_units == b.pruned_units
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert 0 < a.params_after < a.params_before


def test_random_order_depends_on_seed(tiny_resnet, own_label_data):
    model = tiny_resnet()
    x, y = own_label_data(model)
    units = []
    for seed in (0, 0, 1):
        res = cs.prune(model, (x, y), samples_per_class=3, order="random", seed=seed, progress=False)
        units.append(res.labels[["layer", "unit"]].astype(str).values.tolist())
    assert units[0] == units[1]
    assert units[0] != units[2]
    assert sorted(units[0]) == sorted(units[2])  # same units, visited in another order


def test_magnitude_order_visits_weakest_first_from_output_to_input(zoo_result):
    labels = zoo_result.labels
    layer_names = [layer["name"] for layer in zoo_result.layers]
    visited = list(dict.fromkeys(labels.layer))
    assert visited == layer_names[::-1]
    for name, sub in labels.groupby("layer", sort=False):
        assert sub.magnitude.is_monotonic_increasing, name
    assert labels.step.tolist() == list(range(len(labels)))


# ------------------------------------------------------------------ the caller's model is left alone


def test_caller_model_unchanged(zoo_model, digits, model_fingerprint, assert_same_fingerprint):
    before = model_fingerprint(zoo_model)
    res = cs.prune(zoo_model, digits.calib, samples_per_class=3, progress=False)
    assert res.model is not zoo_model
    assert_same_fingerprint(before, model_fingerprint(zoo_model))
    assert res.params_after < count_params(zoo_model)


def test_caller_model_in_training_mode_with_hooks_unchanged(tiny_resnet, own_label_data, model_fingerprint,
                                                             assert_same_fingerprint):
    model = tiny_resnet()
    x, y = own_label_data(model)
    model.train()  # BN would update its running stats if prune ran the caller's model in train mode
    calls = []
    model.layer1.register_forward_hook(lambda m, i, o: calls.append(1))
    model.fc.register_forward_pre_hook(lambda m, i: None)
    before = model_fingerprint(model)
    res = cs.prune(model, (x, y), samples_per_class=3, progress=False)
    assert_same_fingerprint(before, model_fingerprint(model))
    assert model.training
    assert not res.model.training


def test_interrupted_run_leaves_model_unchanged(zoo_model, digits, model_fingerprint, assert_same_fingerprint):
    before = model_fingerprint(zoo_model)
    session = PruneSession(zoo_model, digits.calib, samples_per_class=3, progress=False)
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for record in session.steps():
            seen.append(record)
            if len(seen) == 3:
                raise KeyboardInterrupt
    assert len(seen) == 3
    assert_same_fingerprint(before, model_fingerprint(zoo_model))


def test_session_steps_yield_every_record_and_finish_equals_prune(tiny_resnet, own_label_data):
    model = tiny_resnet()
    x, y = own_label_data(model)
    session = PruneSession(model, (x, y), samples_per_class=3, progress=False)
    seen = list(session.steps())
    res = session.finish()
    assert len(seen) == len(res.labels) == session.total_steps
    assert [r["label"] for r in seen] == res.labels.label.tolist()
    assert {"step", "layer", "unit", "label", "pruned", "p_value", "effect"} <= set(seen[0])
    one_call = cs.prune(model, (x, y), samples_per_class=3, progress=False)
    assert one_call.labels[["layer", "unit", "label", "pruned"]].equals(res.labels[["layer", "unit", "label", "pruned"]])
    assert one_call.params_after == res.params_after
    with pytest.raises(RuntimeError, match="already run"):
        session.steps()


def test_session_stopped_early_finishes_with_what_was_decided(tiny_resnet, own_label_data):
    model = tiny_resnet()
    x, y = own_label_data(model)
    session = PruneSession(model, (x, y), samples_per_class=3, alpha=0.2, progress=False)
    for i, record in enumerate(session.steps()):
        if i == 5:
            break
    res = session.finish()
    assert len(res.labels) == 6
    decided = {(r["layer"], r["unit"]) for r in session.records if r["pruned"]}
    assert sum(len(v) for v in res.pruned_units.values()) == len(decided)
    assert res.equivalence_max_abs_diff < 1e-4


def test_options_come_from_one_config(tiny_resnet, own_label_data):
    from cswap_nb.core.config import OPTION_NAMES, CSwapConfig

    model = tiny_resnet()
    x, y = own_label_data(model)
    cfg = CSwapConfig(alpha=0.2, samples_per_class=3)
    a = cs.prune(model, (x, y), config=cfg, progress=False)
    b = cs.prune(model, (x, y), alpha=0.2, samples_per_class=3, progress=False)
    assert a.config == b.config == cfg.as_dict() and set(a.config) == set(OPTION_NAMES)
    c = cs.prune(model, (x, y), config=cfg, alpha=0.01, progress=False)  # a keyword replaces the config's field
    assert c.config["alpha"] == 0.01 and c.config["samples_per_class"] == 3
    with pytest.raises(TypeError, match="unknown option.*'alpah'.*alpha, samples_per_class"):
        cs.prune(model, (x, y), alpah=0.1, progress=False)


# ------------------------------------------------------------------ clear errors for bad input


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, 0.0, 1.0, float("nan"), "0.05"])
def test_bad_alpha(zoo_model, digits, alpha):
    with pytest.raises(ValueError, match="alpha must be a number strictly between 0 and 1"):
        cs.prune(zoo_model, digits.calib, alpha=alpha, progress=False)


@pytest.mark.parametrize("test,k,need", [("welch", 1, 2), ("ztest", 1, 2), ("wilcoxon", 3, 5), ("wilcoxon", 4, 5)])
def test_too_few_samples_per_class(zoo_model, digits, test, k, need):
    with pytest.raises(ValueError, match=rf"samples_per_class={k} is too small .* at least {need} samples per class"):
        cs.prune(zoo_model, digits.calib, samples_per_class=k, test=test, progress=False)


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "magnitude"}, "method must be one of"),
    ({"test": "t-test"}, "test must be one of"),
    ({"inference": "global"}, "inference must be one of"),
    ({"score": "loss"}, "score must be one of"),
    ({"order": "l2"}, "order must be one of"),
    ({"reference": "pruned"}, "reference must be one of"),
    ({"layer_order": "random"}, "layer_order must be one of"),
    ({"group_size": 0}, "group_size must be a positive integer"),
    ({"scope": "residual"}, "scope must be"),
    ({"engine": "turbo"}, "engine must be"),
])
def test_bad_options(zoo_model, digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cs.prune(zoo_model, (digits.test.x[:100], digits.test.y[:100]), samples_per_class=3, progress=False, **kwargs)


def test_class_without_correct_sample(zoo_model, digits):
    x, y = digits.train
    x = x.clone()
    x[y == 3] = x[y == 0][0]  # every "3" is now a picture of a 0: the model misclassifies all of them
    with pytest.raises(ValueError, match="class 3 has no correctly classified calibration sample"):
        cs.prune(zoo_model, (x, y), samples_per_class=5, progress=False)


def test_class_with_too_few_correct_samples(zoo_model, digits):
    x, y = digits.train
    x = x.clone()
    threes = torch.nonzero(y == 3).flatten()
    x[threes[4:]] = x[y == 0][0]  # only four genuine 3s remain
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="class 3 has only 4 correctly classified calibration sample"):
            cs.prune(zoo_model, (x, y), samples_per_class=5, test="wilcoxon", progress=False)
    assert any("class 3: only 4 correctly classified samples" in str(w.message) for w in caught)


def test_wrong_input_shape(zoo_model, digits):
    x, y = digits.test
    with pytest.raises(ValueError, match="the model could not run on calibration inputs of shape"):
        cs.prune(zoo_model, (x[:, 0], y), samples_per_class=3, progress=False)


def test_nan_inputs(zoo_model, digits):
    x, y = digits.test
    x = x.clone()
    x[7, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 sample\(s\) \(first at index 7\)"):
        cs.prune(zoo_model, (x, y), samples_per_class=3, progress=False)


def test_length_mismatch(zoo_model, digits):
    x, y = digits.test
    with pytest.raises(ValueError, match="x has 360 samples but y has 359 labels"):
        cs.prune(zoo_model, (x, y[:-1]), samples_per_class=3, progress=False)


def test_labels_out_of_range(zoo_model, digits):
    x, y = digits.test
    y = y.clone()
    y[0] = 10
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        cs.prune(zoo_model, (x, y), samples_per_class=3, progress=False)


def test_calib_of_wrong_type(zoo_model):
    with pytest.raises(TypeError, match="data must be an"):
        cs.prune(zoo_model, [1, 2, 3], progress=False)


def test_not_a_module():
    x, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        cs.prune(lambda t: t, (x, y), samples_per_class=2, progress=False)


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)),
    lambda: nn.Linear(3 * 8 * 8, 4),
])
def test_model_without_prunable_unit(make, own_label_data):
    torch.manual_seed(0)
    model = make().eval()
    shape = (3, 8, 8) if isinstance(model, nn.Sequential) else (3 * 8 * 8,)
    x, y = own_label_data(model, n=64, shape=shape)
    with pytest.raises(ValueError, match="the model has no prunable unit"):
        cs.prune(model, (x, y), samples_per_class=2, progress=False)


def test_unknown_zoo_model():
    with pytest.raises(ValueError, match=r"unknown model 'resnet99'.*resnet18-digits"):
        cs.zoo.load("resnet99")


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x01 this is not a torch file" * 50)
    with pytest.raises(ValueError, match="is corrupt or not a torch file"):
        cs.zoo.load_checkpoint(path)
    with pytest.raises(ValueError, match="not a readable cswap_nb pruned-model file"):
        cs.load_pruned(path)


def test_checkpoint_sha256_mismatch():
    path = cs.zoo.data_dir() / "resnet18-digits.pt"
    with pytest.raises(ValueError, match="sha256 .* differs from the recorded 0000"):
        cs.zoo.load_checkpoint(path, expected_sha256="0" * 64)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cs.zoo.load_checkpoint(tmp_path / "nope.pt")


def _write_checkpoint(path, model, spec):
    torch.save({"format": cs.zoo.CHECKPOINT_FORMAT, "name": "test", "spec": spec,
                "state_dict": model.state_dict()}, path)


def test_mismatched_checkpoint(tmp_path, tiny_resnet):
    small = tiny_resnet(channels=(4, 8, 8, 8), num_classes=4)
    spec = cs.models.describe(small)
    path = tmp_path / "small.pt"
    _write_checkpoint(path, small, spec)
    loaded = cs.zoo.load_checkpoint(path)  # with its own spec it loads, identical
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))
    with pytest.raises(ValueError, match="does not match the architecture"):
        cs.zoo.load_checkpoint(path, spec=cs.zoo.entry("resnet18-digits").spec)


def test_checkpoint_of_wrong_format(tmp_path, tiny_resnet):
    path = tmp_path / "plain.pt"
    torch.save(tiny_resnet().state_dict(), path)
    with pytest.raises(ValueError, match="is not a cswap_nb checkpoint"):
        cs.zoo.load_checkpoint(path)
    with pytest.raises(ValueError, match="is not a cswap_nb pruned-model file"):
        cs.load_pruned(path)


# ------------------------------------------------------------------ results, summary, save / load


def test_summary_contract(zoo_result, zoo_model, digits):
    s = zoo_result.summary()
    assert SUMMARY_KEYS <= set(s)
    json.dumps(s)  # JSON-able
    assert s["model"] == "resnet18-digits" and s["method"] == "cswap" and s["alpha"] == 0.05
    assert s["metric_name"] == "top1_accuracy_pct"
    head = (digits.test.x[:120], digits.test.y[:120])
    assert s["metric_before"] == pytest.approx(cs.evaluate(zoo_model, head))
    assert s["metric_after"] == pytest.approx(cs.evaluate(zoo_result.model, head))
    assert s["params_before"] == cs.zoo.read_manifest()["resnet18-digits"]["params"]
    assert s["params_after"] == count_params(zoo_result.model) < s["params_before"]
    assert s["params_removed_pct"] == pytest.approx(100 * (1 - s["params_after"] / s["params_before"]), abs=1e-3)
    assert s["macs_after"] < s["macs_before"]
    assert s["seconds"] > 0
    assert set(s["counts"]) == {"critical", "neutral", "detrimental"}
    assert sum(s["counts"].values()) == len(zoo_result.labels)
    assert s["calib_samples"] == 50
    assert s["equivalence_max_abs_diff"] <= 1e-4
    assert s["units_param_share_pct"] == round(100 * unit_coverage(zoo_model, digits.test.x[:1]).share, 3)
    assert s["params_removed_pct"] <= s["units_removable_pct"] <= s["units_param_share_pct"]
    per_layer = s["per_layer"]
    assert [row["layer"] for row in per_layer] == [layer["name"] for layer in zoo_result.layers]
    for row in per_layer:
        assert row["critical"] + row["neutral"] + row["detrimental"] == row["units"]
        assert row["removed"] + row["kept"] == row["units"]
        assert row["kept"] >= 1


def test_labels_agree_with_pruned_model(zoo_result):
    labels = zoo_result.labels
    assert {"layer", "unit", "label", "pruned", "p_value", "effect"} <= set(labels.columns)
    assert set(labels.label) <= {"critical", "neutral", "detrimental"}
    assert not labels[labels.label == "critical"].pruned.any()
    modules = dict(zoo_result.model.named_modules())
    for layer in zoo_result.layers:
        sub = labels[labels.layer == layer["name"]]
        assert sorted(sub.unit) == list(range(layer["size"]))
        removed = sorted(sub[sub.pruned].unit)
        assert zoo_result.pruned_units[layer["name"]] == removed
        assert modules[layer["name"]].out_channels == layer["size"] - len(removed)


def test_save_and_load_pruned(zoo_result, tmp_path, digits):
    path = zoo_result.save(tmp_path / "sub" / "p.pt")
    assert path.exists()
    blob = torch.load(path, weights_only=True)
    assert blob["format"] == "cswap_nb.pruned/1"
    assert blob["spec"] == cs.zoo.entry("resnet18-digits").spec
    assert blob["summary"]["params_after"] == zoo_result.params_after
    model = cs.load_pruned(path)
    assert not model.training
    assert count_params(model) == zoo_result.params_after
    x = digits.test.x[:16]
    with torch.no_grad():
        assert torch.allclose(model(x), zoo_result.model(x), atol=1e-6)


def test_save_and_load_pruned_coupled_scope(tiny_resnet, own_label_data, randomize_bn, tmp_path):
    model = randomize_bn(tiny_resnet(channels=(8, 8, 16, 16)), seed=2)
    x, y = own_label_data(model)
    res = cs.prune(model, (x, y), samples_per_class=3, scope="all", alpha=0.01, progress=False)
    assert any(layer["kind"] == "coupled" and res.pruned_units[layer["name"]] for layer in res.layers)
    assert res.equivalence_max_abs_diff <= 1e-4
    loaded = cs.load_pruned(res.save(tmp_path / "p.pt"))
    assert cs.models.shapes_of(loaded) == cs.models.shapes_of(res.model)
    with torch.no_grad():
        assert torch.allclose(loaded(x), res.model(x), atol=1e-6)


class UserResidualCNN(nn.Module):
    """A user's own residual CNN: no known family, a residual add, BatchNorm, a linear head."""

    def __init__(self, width: int = 8, num_classes: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
                                  nn.Conv2d(12, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.body(h))
        return self.head(h.mean((2, 3)))


def _vgg_like(num_classes: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, num_classes))


def _small_vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=4,
                             mlp_ratio=2.0)


def _pruned_round_trip(make, own_label_data, randomize_bn, tmp_path, shape=(3, 16, 16)):
    torch.manual_seed(0)
    model = randomize_bn(make()).eval()
    x, y = own_label_data(model, n=160, shape=shape, min_per_class=4)
    # a large alpha keeps few units, a small one removes many: use the one that removes something
    res = cs.prune(model, (x, y), samples_per_class=4, alpha=1e-4, progress=False)
    assert res.params_after < res.params_before, "the test needs a model that C-SWAP actually shrinks"
    path = res.save(tmp_path / "user.pt")
    blob = torch.load(path, weights_only=True)  # plain tensors and dicts, no pickled modules
    assert set(blob) >= {"format", "shapes", "state_dict", "summary", "architecture"}
    return res, path, x


@pytest.mark.parametrize("make", [UserResidualCNN, _vgg_like, _small_vit], ids=["residual-cnn", "sequential-bn", "vit"])
def test_any_pruned_model_round_trips_with_a_fresh_instance(make, own_label_data, randomize_bn, tmp_path):
    res, path, x = _pruned_round_trip(make, own_label_data, randomize_bn, tmp_path)
    fresh = make()
    loaded = cs.load_pruned(path, model=fresh)
    assert loaded is fresh and not loaded.training
    assert cs.models.shapes_of(loaded) == cs.models.shapes_of(res.model)
    with torch.no_grad():
        assert torch.equal(loaded(x), res.model(x))


def test_custom_model_without_instance_says_how(own_label_data, randomize_bn, tmp_path):
    res, path, _ = _pruned_round_trip(UserResidualCNN, own_label_data, randomize_bn, tmp_path)
    assert res.spec is None
    with pytest.raises(ValueError, match=r"UserResidualCNN.*cs.load_pruned\(path, model=MyNet"):
        cs.load_pruned(path)


def test_load_into_another_architecture_names_the_first_offending_module(own_label_data, randomize_bn, tmp_path):
    _, path, _ = _pruned_round_trip(UserResidualCNN, own_label_data, randomize_bn, tmp_path)
    with pytest.raises(ValueError, match=r"differs at module '(stem\.0|body\.0|0)'"):
        cs.load_pruned(path, model=_vgg_like())

    class MissingLayer(UserResidualCNN):  # the body lost its last BatchNorm
        def __init__(self):
            super().__init__()
            self.body[4] = nn.Identity()

    with pytest.raises(ValueError, match=r"module 'body\.4'.*not in the model you passed"):
        cs.load_pruned(path, model=MissingLayer())

    class OtherKernel(UserResidualCNN):  # same names, a 5x5 kernel where 3x3 was saved
        def __init__(self):
            super().__init__()
            self.body[0] = nn.Conv2d(8, 12, 5, padding=2, bias=False)

    with pytest.raises(ValueError, match=r"module 'body\.0' \(Conv2d\).*another architecture"):
        cs.load_pruned(path, model=OtherKernel())
    with pytest.raises(TypeError, match="fresh nn.Module"):
        cs.load_pruned(path, model="UserResidualCNN")


def test_known_family_saved_without_instance_still_rebuilds(zoo_result, tmp_path, digits):
    path = zoo_result.save(tmp_path / "known.pt")
    fresh = cs.models.build(zoo_result.spec)  # the unpruned architecture, as a user would pass it
    a, b = cs.load_pruned(path), cs.load_pruned(path, model=fresh)
    with torch.no_grad():
        assert torch.equal(a(digits.test.x[:8]), b(digits.test.x[:8]))


# ------------------------------------------------------------------ user models


def test_user_model(tiny_resnet, own_label_data):
    model = tiny_resnet(channels=(4, 8, 8, 8), num_classes=4)
    x, y = own_label_data(model)
    res = cs.prune(model, (x, y), samples_per_class=3, progress=False, eval_data=(x, y))
    with torch.no_grad():
        out = res.model(x)
    assert out.shape == (len(x), 4) and torch.isfinite(out).all()
    assert res.params_after <= res.params_before
    assert res.params_before == count_params(model)
    s = res.summary()
    assert SUMMARY_KEYS <= set(s)
    assert set(s["counts"]) == {"critical", "neutral", "detrimental"}
    assert s["model"] == type(model).__name__  # no model_name given: the class names it in titles
    assert s["metric_before"] == 100.0
    assert s["calib_samples"] == 3 * len(y.unique())
    assert s["equivalence_max_abs_diff"] <= 1e-4
    assert len(s["per_layer"]) == len(res.layers) == len(find_unit_layers(model, x[:1]))


def test_user_model_dataset_and_dataloader_inputs(tiny_resnet, own_label_data):
    model = tiny_resnet()
    x, y = own_label_data(model)
    ds = torch.utils.data.TensorDataset(x, y)
    a = cs.prune(model, ds, samples_per_class=3, progress=False)
    b = cs.prune(model, torch.utils.data.DataLoader(ds, batch_size=7), samples_per_class=3, progress=False)
    c = cs.prune(model, (x, y), samples_per_class=3, progress=False)
    assert a.labels.label.tolist() == b.labels.label.tolist() == c.labels.label.tolist()
    assert a.pruned_units == b.pruned_units == c.pruned_units


def test_ignored_layers_are_not_tested(tiny_resnet, own_label_data):
    model = tiny_resnet()
    x, y = own_label_data(model)
    res = cs.prune(model, (x, y), samples_per_class=3, ignored_layers=[model.layer1[0].conv1], progress=False)
    assert "layer1.0.conv1" not in set(res.labels.layer)
    assert res.model.layer1[0].conv1.out_channels == model.layer1[0].conv1.out_channels
    with pytest.raises(ValueError, match="not part of the model"):
        cs.prune(model, (x, y), samples_per_class=3, ignored_layers=[nn.Conv2d(1, 1, 1)], progress=False)


def test_group_size_tests_units_together(tiny_resnet, own_label_data):
    model = tiny_resnet(channels=(8, 8, 8, 8))
    x, y = own_label_data(model)
    res = cs.prune(model, (x, y), samples_per_class=3, group_size=4, group_threshold=0, progress=False)
    assert all(isinstance(u, list) and len(u) == 4 for u in res.labels.unit)
    expected_steps = sum(-(-layer["size"] // 4) for layer in res.layers)
    assert len(res.labels) == expected_steps


def test_every_layer_keeps_a_unit():
    """Even if every unit is neutral, the last unit of a layer is kept."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[2].weight.zero_()  # the hidden layer has no effect at all
        model[2].bias.copy_(torch.tensor([1.0, 0.0]))
    x, y = torch.randn(10, 3), torch.zeros(10, dtype=torch.long)
    res = cs.prune(model, (x, y), samples_per_class=None, progress=False)
    assert (res.labels.label == "neutral").all()
    assert res.labels.pruned.tolist() == [True, True, True, False]
    assert "never removed" in res.labels.note.iloc[-1]
    assert res.model[0].out_features == 1


def test_torchvision_resnet_unit_counts():
    """Full-width torchvision ResNets: the unit layers a prune would test (no pruning here)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    r18 = torchvision.models.resnet18(num_classes=4).eval()
    assert sum(layer.size for layer in find_unit_layers(r18, x)) == 2 * (64 + 128 + 256 + 512)
    assert sum(layer.size for layer in find_unit_layers(r18, x, scope="all")) == 3 * (64 + 128 + 256 + 512)
    r50 = torchvision.models.resnet50(num_classes=4).eval()
    internal = find_unit_layers(r50, x)
    # the stem (followed by a downsample in layer1) plus conv1 and conv2 of all 16 bottlenecks
    assert len(internal) == 1 + 2 * 16
    widths = {1: 64, 2: 128, 3: 256, 4: 512}
    assert sum(layer.size for layer in internal) == 64 + sum(2 * widths[s] * n for s, n in zip(widths, (3, 4, 6, 3)))


def test_pruned_model_has_no_leftover_hooks(zoo_result):
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in zoo_result.model.modules())


def test_layer_order_input_to_output(tiny_resnet, own_label_data):
    model = tiny_resnet()
    x, y = own_label_data(model)
    res = cs.prune(model, (x, y), samples_per_class=3, layer_order="input-to-output", progress=False)
    assert list(dict.fromkeys(res.labels.layer)) == [layer["name"] for layer in res.layers]


def test_model_returning_a_tuple_gets_a_clear_error():
    class TupleOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.head = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x):
            return (self.head(torch.relu(self.hidden(x))),)

    x, y = torch.randn(20, 4), torch.zeros(20, dtype=torch.long)
    with pytest.raises(ValueError, match="expected \\(N, classes\\) logits"):
        cs.prune(TupleOut(), (x, y), samples_per_class=2, progress=False)


def _tf32_flags() -> tuple[bool, bool]:
    """Whether TF32 is on for CUDA convolutions and matmuls, read through the new API where PyTorch has it
    (reading the legacy flags while the new ones are set raises)."""
    if hasattr(torch.backends.cudnn, "conv"):
        return (torch.backends.cudnn.conv.fp32_precision == "tf32", torch.backends.cuda.matmul.fp32_precision == "tf32")
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"), reason="PyTorch < 2.9 has no fp32_precision")
def test_prune_accepts_tf32_set_through_the_new_api_and_restores_it(zoo_model, digits):
    # PyTorch >= 2.9 raises on reading the legacy allow_tf32 once fp32_precision was set: the session must not
    # read them
    conv, matmul = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        res = cs.prune(zoo_model, digits.calib, samples_per_class=3, progress=False, group_size=64)
        assert len(res.labels) > 0
        assert torch.backends.cudnn.conv.fp32_precision == torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul


def test_prune_runs_in_full_float32_and_restores_the_tf32_flags(zoo_model, digits):
    seen = []
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        session = PruneSession(zoo_model, digits.calib, samples_per_class=4, progress=False)
        inner = session.engine.scores

        def recording(*args, **kwargs):  # the flags while a score is computed
            seen.append(_tf32_flags())
            return inner(*args, **kwargs)

        session.engine.scores = recording
        for _ in session.steps():
            assert torch.backends.cudnn.allow_tf32  # restored between steps: the caller's code is not affected
        session.finish()
        assert seen and not any(a or b for a, b in seen)  # TF32 flipped GPU decisions (measured on an H200)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False


def test_shipped_model_is_named_without_model_name(zoo_model, digits):
    res = cs.prune(zoo_model, digits.calib, samples_per_class=3, progress=False, layer_order="output-to-input",
                   group_size=64)
    assert res.summary()["model"] == "resnet18-digits"
    ax = cs.ui.plots.plot_layer_labels(res)
    assert "resnet18-digits" in ax.get_title()
    widths = [0.0] * len(res.layers)  # each bar adds up to its layer's width: a tested group counts all its units
    for patch in ax.patches:
        widths[round(patch.get_y() + patch.get_height() / 2)] += patch.get_width()
    assert widths == [layer["size"] for layer in res.layers]
    assert any(isinstance(u, list) and len(u) > 1 for u in res.labels.unit)  # the case this checks


def test_an_error_in_the_loop_leaves_no_progress_bar(tiny_resnet, own_label_data):
    from tqdm.auto import tqdm

    model = tiny_resnet()
    x, y = own_label_data(model)
    session = PruneSession(model, (x, y), samples_per_class=3, progress=True)
    calls = []

    def interrupting(inner):
        def interrupted(*args, **kwargs):  # what a user's Ctrl-C does in the middle of a causal test
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt
            return inner(*args, **kwargs)
        return interrupted

    session.engine.scores = interrupting(session.engine.scores)
    session.engine.rows_scores = interrupting(session.engine.rows_scores)  # early decisions score some rows
    before = len(getattr(tqdm, "_instances", ()))
    with pytest.raises(KeyboardInterrupt):
        for _ in session.steps():
            pass
    assert len(getattr(tqdm, "_instances", ())) == before


def test_session_progress_picture_counts_the_records_so_far(tiny_resnet, own_label_data):
    """The watched loop's picture: after some steps its bars hold exactly the tested units, kept or removed,
    and the rest as not tested; at the end nothing is untested and the removed units are the result's."""
    from cswap_nb.ui import plots

    model = tiny_resnet()
    x, y = own_label_data(model, n=96)
    session = cs.PruneSession(model, (x, y), alpha=0.05, samples_per_class=4, progress=False)
    steps = session.steps()
    for _ in range(5):
        next(steps)

    def bars(ax):
        widths = {}
        for container in ax.containers:
            widths[container.get_label()] = [int(bar.get_width()) for bar in container]
        return widths

    ax = plots.plot_session_progress(session)
    w = bars(ax)
    removed = sum(r["pruned"] for r in session.records)
    assert sum(w["tested, kept"]) + sum(w["tested, removed"]) == 5 and sum(w["tested, removed"]) == removed
    assert [a + b + c for a, b, c in zip(w["tested, kept"], w["tested, removed"], w["not tested yet"])] == \
        [layer.size for layer in session.layers]
    for _ in steps:
        pass
    result = session.finish()
    w = bars(plots.plot_session_progress(session))
    assert sum(w["not tested yet"]) == 0
    assert dict(zip([layer.name for layer in session.layers], w["tested, removed"])) == \
        {layer.name: len(result.pruned_units.get(layer.name, [])) for layer in session.layers}
    assert plots.plot_session_progress(session).get_title().startswith(f"step {len(session.records)} of {session.total_steps}:")
