"""The command line: the demo's outputs and the JSON contract of its ``--json`` files (README, "Command line")."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import cswap_nb as cs
from cswap_nb.ui.cli import main

JSON_KEYS = {"model", "method", "alpha", "params_before", "params_after", "params_removed_pct", "macs_before",
             "macs_after", "metric_name", "metric_before", "metric_after", "seconds", "counts", "per_layer"}


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out, js = tmp_path / "out", tmp_path / "demo.json"
    proc = subprocess.run([sys.executable, "-m", "cswap_nb", "demo", "--no-progress", "--out", str(out),
                           "--json", str(js)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "masked model == physically pruned model" in proc.stdout and "(ok)" in proc.stdout
    s = json.loads(js.read_text())
    assert JSON_KEYS <= set(s)
    assert s["model"] == "resnet18-fashion" and s["method"] == "cswap" and s["alpha"] == 0.05  # real images
    assert "Fashion-MNIST" in proc.stdout and "data: fashion" in proc.stdout  # says which data it used
    assert set(s["counts"]) == {"critical", "neutral", "detrimental"}
    assert sum(s["counts"].values()) == sum(r["units"] for r in s["per_layer"])
    assert s["params_after"] < s["params_before"] and s["macs_after"] <= s["macs_before"]
    assert abs(s["params_removed_pct"] - 100 * (1 - s["params_after"] / s["params_before"])) < 1e-2
    assert s["equivalence_max_abs_diff"] <= 1e-4
    # the saved model: weights_only loading, same size, and the accuracy the summary reports
    blob = torch.load(out / "pruned.pt", weights_only=True)
    assert blob["format"] == "cswap_nb.pruned/1"
    model = cs.load_pruned(out / "pruned.pt")
    assert sum(p.numel() for p in model.parameters()) == s["params_after"]
    _, data = cs.zoo.load("resnet18-fashion")
    assert abs(cs.evaluate(model, data.test) - s["metric_after"]) < 1e-9
    assert (out / "layers.png").stat().st_size > 10_000


def test_prune_unknown_model_lists_known_ones(capsys):
    assert main(["prune", "--model", "resnet1000-nothing"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet1000-nothing'" in err and "resnet18-digits" in err


def test_prune_bad_alpha_is_a_clear_error(capsys):
    assert main(["prune", "--model", "resnet18-digits", "--alpha", "1.5", "--no-progress"]) == 2
    assert "alpha must be a number strictly between 0 and 1" in capsys.readouterr().err


def test_bench_device_is_checked_before_any_work(capsys, monkeypatch):
    ran = []
    monkeypatch.setattr("cswap_nb.ui.cli.run_bench", lambda *a, **k: ran.append(k))
    assert main(["bench", "--model", "resnet18-digits", "--device", "tpu"]) == 2
    assert "--device must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--model", "resnet18-digits", "--device", "cuda"]) == 2
        assert "sees no CUDA device" in capsys.readouterr().err
    assert not ran
    monkeypatch.setattr("cswap_nb.ui.cli.format_report", lambda r: "report")
    assert main(["bench", "--model", "resnet18-digits", "--device", "cpu"]) == 0
    assert ran and ran[0]["device"] == torch.device("cpu")


def test_the_command_line_starts_without_the_notebook_machinery():
    """nbformat and nbclient are loaded by the one command that runs notebooks (gallery --notebooks), not at
    start-up: a machine without them (a bare GPU image) runs prune and bench."""
    code = "import sys, cswap_nb.ui.cli; print(sorted(m for m in ('nbformat', 'nbclient') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "resnet18-digits" in out and "test accuracy 99.722%" in out
    assert "ddrnet23slim-roads   test mIoU 42.056%" in out  # segmentation entries report mIoU


def test_group_size_option(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--model", "vit-digits", "--group-size", "0"])
    assert "must be a positive integer" in capsys.readouterr().err


def test_flags_are_generated_from_the_config():
    """Every option of CSwapConfig is a flag of prune and compare, with the config's default."""
    import argparse
    import dataclasses

    from cswap_nb.core.config import CSwapConfig
    from cswap_nb.ui.cli import add_arguments, from_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    defaults = p.parse_args([])
    assert from_arguments(defaults) == CSwapConfig()
    args = p.parse_args(["--alpha", "0.01", "--samples-per-class", "7", "--score", "logit", "--layer-order",
                         "input-to-output", "--engine", "naive", "--group-size", "3", "--reference", "current"])
    cfg = from_arguments(args)
    assert (cfg.alpha, cfg.samples_per_class, cfg.score, cfg.layer_order, cfg.engine, cfg.group_size, cfg.reference) == \
        (0.01, 7, "logit", "input-to-output", "naive", 3, "current")
    assert dataclasses.replace(cfg, alpha=0.05) != CSwapConfig()
    with pytest.raises(SystemExit):
        p.parse_args(["--inference", "everything"])


def test_variants_needs_a_validation_split_and_known_names(capsys):
    assert main(["variants", "--model", "resnet18-digits", "--no-progress"]) == 2
    assert "has no validation split" in capsys.readouterr().err
    assert main(["variants", "--model", "resnet18-fashion", "--variants", "default,k=7", "--no-progress"]) == 2
    assert "unknown variant(s) ['k=7']" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess run of C-SWAP with its guard: ~26 s
def test_prune_with_max_drop_uses_the_validation_split(tmp_path, capsys):
    """The guard runs on the checkpoint's validation split and is reported in the JSON."""
    out = tmp_path / "s.json"
    assert main(["prune", "--model", "resnet18-fashion", "--max-drop", "0.5", "--samples-per-class", "5",
                 "--no-progress", "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    g = s["guard"]
    assert g["max_drop"] == 0.5 and g["checks"] >= 1
    assert g["metric_dense"] - g["metric_last_check"] <= 0.5 + 1e-9
    assert s["config"]["max_drop"] == 0.5
    # the units' coverage is said before the work, and kept in the JSON
    printed = capsys.readouterr().out
    line = f"units cover {s['units_param_share_pct']:.1f}% of the {s['params_before']:,} parameters"
    assert line in printed and printed.index(line) < printed.index("MACs / image")
    assert s["units_param_share_pct"] > 90 and s["units_removable_pct"] >= s["params_removed_pct"]


# ------------------------------------------------------------------ your own model and images (--arch)

@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """A random torchvision resnet18 with 3 classes saved as a state dict, and a folder of 48 px PNG images
    filed under the class the model predicts for them (so that each is correctly classified)."""
    import shutil

    import numpy as np
    import torchvision
    from PIL import Image

    root = tmp_path_factory.mktemp("own")
    (root / "stage" / "0").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(60):
        img = np.clip(rng.uniform(0, 255, 3) + rng.normal(0, 40, (48, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "stage" / "0" / f"{i:03d}.png")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    staged = cs.data.image_folder(root / "stage", 32)
    x = torch.stack([staged[i][0] for i in range(len(staged))])
    with torch.no_grad():
        model.fc.bias -= model(x).mean(0)  # centred logits: each class predicted for some images
        pred = model(x).argmax(1)
    assert int(torch.bincount(pred, minlength=3).min()) >= 3
    for (path, _), c in zip(staged.samples, pred.tolist()):
        (root / "images" / str(c)).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "images" / str(c))
    torch.save(model.state_dict(), root / "weights.pt")
    return root


def test_prune_own_arch_weights_and_image_folder(own_model, tmp_path, capsys):
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    assert main(["prune", "--arch", "torchvision:resnet18", "--weights", str(own_model / "weights.pt"),
                 "--data-dir", str(own_model / "images"), "--image-size", "32", "--samples-per-class", "3",
                 "--group-size", "64", "--no-progress", "--out", str(out), "--json", str(summary)]) == 0
    s = json.loads(summary.read_text())
    assert s["calib_samples"] == 9 and s["model"] == "torchvision:resnet18"
    assert s["params_after"] < s["params_before"] and s["metric_before"] is None
    printed = capsys.readouterr().out
    assert "60 images in 3 class folders (class indices)" in printed
    assert ("transform (torchvision's resnet18 default weights): resize 37 (bilinear), centre crop 32, "
            "mean 0.485,0.456,0.406, std 0.229,0.224,0.225") in printed
    assert s["transform"]["image_size"] == 32 and s["transform"]["resize"] == 37
    assert "device: cpu" in printed
    pruned = cs.load_pruned(out / "pruned.pt")
    assert pruned(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_prune_own_arch_with_a_validation_folder_and_the_guard(own_model, tmp_path, capsys):
    """--val-dir gives the metric before and after on held-out images and is the guard's split."""
    summary = tmp_path / "summary.json"
    assert main(["prune", "--arch", "torchvision:resnet18", "--weights", str(own_model / "weights.pt"),
                 "--data-dir", str(own_model / "images"), "--val-dir", str(own_model / "images"), "--image-size", "32",
                 "--samples-per-class", "3", "--group-size", "64", "--max-drop", "50", "--device", "cpu",
                 "--no-progress", "--json", str(summary)]) == 0
    s = json.loads(summary.read_text())
    assert s["metric_before"] == 100.0  # the folder holds the images under the class the model predicts
    assert s["metric_after"] is not None and s["guard"] is not None and s["guard"]["checks"] >= 1
    assert "validation: " in capsys.readouterr().out


def test_prune_arch_errors(own_model, tmp_path, capsys):
    import torchvision

    args = ["prune", "--arch", "torchvision:resnet18", "--data-dir", str(own_model / "images"), "--image-size", "32"]
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), tmp_path / "five.pt")
    assert main([*args, "--weights", str(tmp_path / "five.pt")]) == 2
    assert "key 'fc.weight' has shape (5, 512) in the file, (3, 512) in the model" in capsys.readouterr().err
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=3).state_dict(), tmp_path / "mobilenet.pt")
    assert main([*args, "--weights", str(tmp_path / "mobilenet.pt")]) == 2
    assert "key 'conv1.weight' (64, 3, 7, 7) is missing from the file" in capsys.readouterr().err
    assert main(args) == 2
    assert "--arch needs --weights FILE" in capsys.readouterr().err
    assert main([*args, "--model", "resnet18-digits", "--weights", str(own_model / "weights.pt")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["prune", "--model", "resnet18-digits", "--data-dir", str(own_model / "images")]) == 2
    assert "--weights, --data-dir, --val-dir, --image-size, --mean, --std and --num-classes go with --arch" in capsys.readouterr().err
    assert main(["prune", "--model", "resnet18-digits", "--mean", "0.5,0.5,0.5"]) == 2
    assert "go with --arch, not with --model" in capsys.readouterr().err
    assert main(["prune", "--model", "resnet18-digits", "--val-dir", str(own_model / "images")]) == 2
    assert "go with --arch, not with --model" in capsys.readouterr().err
    assert main([*args, "--weights", str(own_model / "weights.pt"), "--max-drop", "1"]) == 2
    assert "--max-drop needs --val-dir DIR with --arch" in capsys.readouterr().err
    assert main([*args, "--weights", str(own_model / "weights.pt"), "--device", "tpu"]) == 2
    assert "--device must be auto, cpu, cuda or cuda:N, got 'tpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*args, "--weights", str(own_model / "weights.pt"), "--device", "cuda"]) == 2
        assert "this PyTorch sees no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--weights", str(own_model / "weights.pt"), "--mean", "0.5,0.5"])
    assert "expected three comma-separated numbers (R,G,B), got '0.5,0.5'" in capsys.readouterr().err
    assert main([*args, "--arch", "keras:resnet18", "--weights", str(own_model / "weights.pt")]) == 2
    assert "--arch must be SOURCE:NAME" in capsys.readouterr().err
    assert main([*args, "--weights", str(own_model / "weights.pt"), "--num-classes", "2"]) == 2
    err = capsys.readouterr().err
    assert "key 'fc.weight' has shape (3, 512) in the file, (2, 512) in the model" in err
    named = tmp_path / "named"
    named.mkdir()
    for c, name in enumerate(["cat", "dog"]):
        (named / name).symlink_to(own_model / "images" / str(c))
    assert main([*args[:-4], "--data-dir", str(named), "--image-size", "32", "--weights", str(own_model / "weights.pt"),
                 "--num-classes", "3"]) == 2
    assert "the dataset has 2 classes (cat, dog) but the model has 3 outputs" in capsys.readouterr().err


def test_eval_transform_reads_the_architectures_own_settings(own_model):
    """--arch's images get the transform the library records for the architecture's weights (read offline),
    and --mean/--std change only the normalisation."""
    from torchvision.transforms import Normalize, Resize

    def settings(arch, size=None, **kw):
        transform, how = cs.data.eval_transform(arch, size, **kw)
        resize = next(t for t in transform.transforms if isinstance(t, Resize))
        norm = next(t for t in transform.transforms if isinstance(t, Normalize))
        assert (resize.size, resize.interpolation.value) == (how["resize"], how["interpolation"])
        assert tuple(norm.mean) == how["mean"] and tuple(norm.std) == how["std"]
        return how["image_size"], how["resize"], how["interpolation"], how["mean"], how["std"]

    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert settings("torchvision:resnet18") == (224, 256, "bilinear", *imagenet)
    assert settings("torchvision:efficientnet_b3") == (300, 320, "bicubic", *imagenet)
    assert settings("torchvision:inception_v3")[:3] == (299, 342, "bilinear")
    assert settings("timm:vit_base_patch16_224") == (224, 249, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert settings("timm:resnet50", 64) == (64, 67, "bicubic", *imagenet)  # timm's crop_pct 0.95
    assert settings(None, 32) == (32, 37, "bilinear", *imagenet)
    assert settings("torchvision:resnet18", 32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))[3:] == ((0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ValueError, match="three numbers each, std > 0"):
        cs.data.eval_transform(None, 32, std=(0.2, 0.0, 0.2))
    # the same pixels either way: only the normalisation differs
    plain = cs.data.image_folder(own_model / "images", transform=cs.data.eval_transform("torchvision:resnet18", 32)[0])
    given = cs.data.image_folder(own_model / "images", transform=cs.data.eval_transform(
        "torchvision:resnet18", 32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))[0])
    a, b = plain[0][0], given[0][0]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in imagenet)
    assert a.shape == (3, 32, 32) and torch.allclose(a * std + mean, b * 0.25 + 0.5, atol=1e-6)


def test_from_state_dict_reads_timm_and_wrapped_files(tmp_path):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=4).eval()
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "w.pt")
    model = cs.models.from_state_dict("timm:resnet18", tmp_path / "w.pt", 4)
    x = torch.randn(2, 3, 32, 32)
    assert not model.training and torch.equal(model(x), ref(x))


@pytest.mark.slow  # ~25 s: five figures from four analyses of the digits checkpoint
def test_gallery_draws_every_figure_from_its_own_run(tmp_path, zoo_load):
    out = tmp_path / "gallery"
    assert main(["gallery", "--model", "resnet18-digits", "--fast", "--out", str(out), "--no-progress"]) == 0
    index = (out / "index.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(["images.png", "layer_labels.png", "accuracy_vs_removed.png", "alpha.png", "stages.png"])
    for name in pngs:
        assert f"]({name})" in index and (out / name).read_bytes()[:4] == b"\x89PNG"
    model, data = zoo_load("resnet18-digits")
    res = cs.prune(model, data.calib, alpha=0.05, samples_per_class=10, progress=False)
    assert f"{res.params_removed_pct:.1f}% of the parameters" in index  # the caption's number is the run's
