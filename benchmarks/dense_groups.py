"""What the default neuron groups of wide fully connected layers cost, against testing every unit alone.

    python benchmarks/dense_groups.py [--width 2048] [--draws 3] [--epochs 4] [--json PATH]

Since issue "any model", a fully connected unit layer wider than ``AUTO_DENSE_THRESHOLD`` (1,024) units
outside a transformer is tested in groups of ceil(width / 256) consecutive units of its visiting order
(:func:`cswap_nb.core.units.auto_group_size`), so that it costs at most 256 tests. This measures what that
changes on a network where both are affordable: an MLP 784-W-W-10 (two hidden layers of ``--width`` units)
trained on Fashion-MNIST's images (the Debian package's 60,000 / 10,000, or torchvision's download; Adam,
``--epochs``, seed 0, the last 5,000 training images held out). It is pruned with the default options
(``group_size=None``: groups of 8 at W = 2,048) and with ``group_size=1`` on the same ``--draws`` calibration
draws (k = 20 a class from the held-out images). Printed per option: tests, analysis seconds, the share of
the parameters removed and the test accuracy after, as mean +- sd over the draws, and the paired differences.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import cswap_nb as cs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from many_classes import accuracy, train  # noqa: E402 - the same training and accuracy as that benchmark


def mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    (x_all, y_all), (x_te, y_te) = cs.data.load_fashion_mnist("train"), cs.data.load_fashion_mnist("test")
    t0 = time.perf_counter()
    model = train(mlp(args.width), x_all[:-5000], y_all[:-5000], args.epochs)
    dense = accuracy(model, x_te, y_te)
    print(f"MLP 784-{args.width}-{args.width}-10: test accuracy {dense:.2f}% after {args.epochs} epochs "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    pool = (x_all[-5000:], y_all[-5000:])
    runs: dict[str, list[dict]] = {}
    for label, group in (("default (auto groups)", None), ("group_size=1", 1)):
        for seed in range(args.draws):
            res = cs.prune(model, pool, group_size=group, seed=seed, progress=False)
            runs.setdefault(label, []).append({
                "seed": seed, "tests": len(res.labels), "analysis_seconds": round(res.analysis_seconds, 1),
                "removed_pct": round(res.params_removed_pct, 2), "accuracy_after": round(accuracy(res.model, x_te, y_te), 2),
                "per_layer_removed": {n: len(u) for n, u in res.pruned_units.items()}})
            r = runs[label][-1]
            print(f"{label:22s} seed {seed}: {r['tests']:5d} tests, {r['analysis_seconds']:6.1f} s, removed "
                  f"{r['removed_pct']:5.2f}%, test accuracy {r['accuracy_after']:.2f}% {r['per_layer_removed']}", flush=True)
    print(f"\ndense test accuracy {dense:.2f}%; mean ± sd over {args.draws} calibration draws:")
    print(f"{'option':22s}{'tests':>8s}{'analysis s':>14s}{'removed %':>16s}{'accuracy after %':>20s}")
    for label, rs in runs.items():
        print(f"{label:22s}{statistics.mean(r['tests'] for r in rs):>8.0f}{spread([r['analysis_seconds'] for r in rs]):>14s}"
              f"{spread([r['removed_pct'] for r in rs]):>16s}{spread([r['accuracy_after'] for r in rs]):>20s}")
    a, b = runs["default (auto groups)"], runs["group_size=1"]
    d_removed = [x["removed_pct"] - y["removed_pct"] for x, y in zip(a, b)]
    d_acc = [x["accuracy_after"] - y["accuracy_after"] for x, y in zip(a, b)]
    print(f"default minus group_size=1, paired by draw: removed {spread(d_removed)} points, "
          f"accuracy {spread(d_acc)} points")
    report = {"width": args.width, "epochs": args.epochs, "dense_accuracy": dense, "runs": runs,
              "paired_removed_diff": d_removed, "paired_accuracy_diff": d_acc}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
