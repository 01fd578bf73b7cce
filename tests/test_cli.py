"""The command line: the demo's outputs and the JSON contract of DESIGN.md."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import cswap_nb as cs
from cswap_nb.cli import main

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

    from cswap_nb.config import CSwapConfig, add_arguments, from_arguments

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
