"""What C-SWAP's default prunes when a model has many classes (issue "beyond a laptop", part 2), on real images.

    python benchmarks/many_classes.py [--fine 10] [--draws 3] [--epochs 8] [--json PATH]

Fashion-MNIST (the Debian package's 60,000 / 10,000 images, or torchvision's download) with two label sets:
its 10 classes, and 100 finer classes derived from the data: each class split into ``--fine`` clusters by
k-means on 14x14 thumbnails of its training images (scikit-learn, seed 0); a test image takes the nearest
centroid of its own class. The same MLP (784-512-256-C) is trained on each (Adam, ``--epochs``, seed 0, the
last 5,000 training images held out), then pruned by ``cs.prune`` with the default options (alpha 0.05,
Welch, k = 20 per class, per-class inference, no correction) and with ``correction="holm"``, on ``--draws``
calibration draws from the held-out images. Printed per model and option: the tests' labels, the share of
the parameters removed and the test accuracy before and after (the 100-class model also on the 10 coarse
classes, through the fine -> coarse map), as mean +- sd over the draws.

With C per-class tests, a unit is critical when any one class's test rejects: for independent tests at level
alpha a harmless unit is labelled critical with probability 1 - (1 - alpha)^C (40% at C = 10, 99.4% at
C = 100). This measures what that does to a real network's pruning.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import cswap_nb as cs


def mlp(classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                         nn.Linear(256, classes))


def train(model: nn.Module, x, y, epochs: int) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(256):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model, x, y, to_coarse=None) -> float:
    with torch.inference_mode():
        pred = torch.cat([model(x[i : i + 2048]).argmax(1) for i in range(0, len(x), 2048)])
    if to_coarse is not None:
        pred, y = to_coarse[pred], to_coarse[y]
    return 100.0 * float((pred == y).float().mean())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fine", type=int, default=10, help="clusters per class (100 classes at 10)")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    train_split, test_split = cs.data.load_fashion_mnist("train"), cs.data.load_fashion_mnist("test")
    x_all, y_all = train_split
    x_te, y_te = test_split
    x_tr, x_ho = x_all[:-5000], x_all[-5000:]
    t0 = time.perf_counter()
    fine_all, fine_te = cs.data.fine_labels(x_all, y_all, x_te, y_te, args.fine)
    print(f"fine labels: {int(fine_all.max()) + 1} classes, {time.perf_counter() - t0:.1f} s", flush=True)
    to_coarse = torch.arange(int(fine_all.max()) + 1) // args.fine
    report = {}
    for name, (y_train, y_test) in {"10 classes": (y_all, y_te), f"{10 * args.fine} classes": (fine_all, fine_te)}.items():
        classes = int(y_train.max()) + 1
        t0 = time.perf_counter()
        model = train(mlp(classes), x_tr, y_train[:-5000], args.epochs)
        dense = accuracy(model, x_te, y_test)
        dense_coarse = accuracy(model, x_te, y_test, to_coarse) if classes > 10 else dense
        print(f"\n{name}: trained in {time.perf_counter() - t0:.0f} s, test accuracy {dense:.2f}% "
              f"(coarse {dense_coarse:.2f}%)", flush=True)
        calib = (x_ho, y_train[-5000:])
        for label, options in {"default": {}, "holm": {"correction": "holm"}}.items():
            runs = []
            for seed in range(args.draws):
                res = cs.prune(model, calib, seed=seed, progress=False, **options)
                counts = res.summary()["counts"]
                runs.append({"critical": counts.get("critical", 0), "tests": sum(counts.values()),
                             "removed_pct": res.params_removed_pct,
                             "accuracy": accuracy(res.model, x_te, y_test),
                             "coarse_accuracy": accuracy(res.model, x_te, y_test, to_coarse if classes > 10 else None),
                             "analysis_s": res.analysis_seconds})
            agg = {k: (statistics.mean(r[k] for r in runs), statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0)
                   for k in runs[0]}
            report[f"{name} / {label}"] = {"dense_accuracy": dense, "dense_coarse_accuracy": dense_coarse,
                                          "runs": runs, "mean_sd": agg}
            print(f"  {label:8s} critical {agg['critical'][0]:.0f} of {agg['tests'][0]:.0f} tests, removed "
                  f"{agg['removed_pct'][0]:.1f} +- {agg['removed_pct'][1]:.1f}% of the parameters, accuracy "
                  f"{dense:.2f} -> {agg['accuracy'][0]:.2f} +- {agg['accuracy'][1]:.2f}% (coarse "
                  f"{dense_coarse:.2f} -> {agg['coarse_accuracy'][0]:.2f} +- {agg['coarse_accuracy'][1]:.2f}%), "
                  f"analysis {agg['analysis_s'][0]:.1f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
