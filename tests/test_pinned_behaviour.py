"""Pinned behaviour: labels, pruned units and summary numbers of a few fixed runs, recorded before the
pruning session / config / family-adapter restructuring and required to stay identical after it
(p-values up to float reassociation, below 1e-4).

Regenerate (only when a change of behaviour is intended, and say so in the commit):
``python tests/test_pinned_behaviour.py --write``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

PINS = Path(__file__).parent / "data" / "pinned_behaviour.json"
SUMMARY_KEYS = ("params_before", "params_after", "macs_before", "macs_after", "metric_before", "metric_after",
                "counts", "calib_samples", "per_layer")


def _digest(res) -> dict:
    s = res.summary()
    labels = res.labels
    cols = [c for c in ("layer", "unit", "label", "pruned") if c in labels]
    return {"labels": json.loads(labels[cols].to_json(orient="values")),
            "pruned_units": {k: sorted(v) for k, v in sorted(res.pruned_units.items())},
            "summary": {k: s[k] for k in SUMMARY_KEYS},
            "p_values": [None if p != p else float(f"{p:.6g}") for p in labels.get("p_value", [])]}


def capture() -> dict:
    import cswap_nb as cs

    torch.manual_seed(0)
    out = {}
    model, data = cs.zoo.load("resnet18-digits")
    out["resnet18-digits demo"] = _digest(cs.prune(model, data.calib, alpha=0.05, samples_per_class=20,
                                                   eval_data=data.test, progress=False))
    out["resnet18-digits l1 same params"] = _digest(cs.prune(model, data.calib, "l1", samples_per_class=20,
                                                             params=out["resnet18-digits demo"]["summary"]["params_after"],
                                                             eval_data=data.test, progress=False))
    out["resnet18-digits general random all"] = _digest(cs.prune(
        model, data.calib, alpha=0.01, samples_per_class=8, inference="general", order="random", scope="all", seed=3,
        reference="current", score="logit", eval_data=data.test, progress=False))
    vit, vdata = cs.zoo.load("vit-digits")
    out["vit-digits"] = _digest(cs.prune(vit, vdata.calib, alpha=0.05, samples_per_class=5,
                                         eval_data=vdata.test, progress=False))
    entry = cs.zoo.entry("ddrnet23slim-roads")
    ddr = cs.zoo.load_checkpoint(cs.zoo.data_dir() / entry.file, cs.zoo.read_manifest()[entry.name]["sha256"], entry.spec)
    x, y = cs.data.scenes.road_scenes(24, start=5000)
    out["ddrnet23slim-roads"] = _digest(cs.prune(ddr, (x, y), alpha=0.05, samples_per_class=2, eval_data=(x[:8], y[:8]),
                                                 progress=False))
    mlp, digits8 = cs.zoo.training.train_digits_mlp(hidden=(12, 12), epochs=5)
    out["mlp greedy"] = _digest(cs.prune(mlp, digits8.calib, "greedy", ratio=0.2, samples_per_class=5,
                                         eval_data=digits8.test, progress=False))
    return json.loads(json.dumps(out))


@pytest.mark.slow
def test_behaviour_is_pinned():
    if not PINS.exists():
        pytest.fail(f"{PINS} is missing: run python tests/test_pinned_behaviour.py --write on the reference code")
    expected = json.loads(PINS.read_text())
    actual = capture()
    for run in expected:
        for key in ("labels", "pruned_units", "summary"):
            assert actual[run][key] == expected[run][key], f"{run}: {key} changed"
        # p-values to float reassociation: the graph engine's linear correction subtracts a channel's
        # contribution instead of recomputing the layer (cswap_nb/METHOD.md §10)
        got, want = actual[run]["p_values"], expected[run]["p_values"]
        assert len(got) == len(want) and [g is None for g in got] == [w is None for w in want], f"{run}: p_values"
        worst = max((abs(g - w) for g, w in zip(got, want) if g is not None), default=0.0)
        assert worst < 1e-4, f"{run}: p_values changed by up to {worst:.3g}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        torch.set_num_threads(1)
        PINS.write_text(json.dumps(capture(), indent=1) + "\n")
        print(f"wrote {PINS}")
