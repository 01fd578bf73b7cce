"""Forward-pass time of each shipped checkpoint in the default (NCHW) and the channels-last layout, side
by side in one run, and the largest difference of their logits (cswap_nb/core/layout.py).

    python benchmarks/layout_speed.py [--images 500] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import cswap_nb as cs


def _median_seconds(model, x, repeats: int) -> float:
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="resnet18-fashion,mobilenetv2-fashion,resnet50-fashion,vit-fashion")
    args = ap.parse_args()
    print(f"{'checkpoint':22s} {'NCHW s':>8s} {'NHWC s':>8s} {'speed-up':>9s} {'max |diff|':>11s}")
    for name in args.models.split(","):
        model, data = cs.zoo.load(name)
        model.eval()
        x = data.calib.x[: args.images]
        fast = cs.core.layout.channels_last_copy(model)
        a, b = [], []
        for _ in range(args.repeats):  # alternate the two layouts, so that drift hits both
            a.append(_median_seconds(model, x, 1))
            b.append(_median_seconds(fast, x, 1))
        with torch.inference_mode():
            diff = float((model(x) - fast(x)).abs().max())
        ta, tb = statistics.median(a), statistics.median(b)
        print(f"{name:22s} {ta:8.3f} {tb:8.3f} {ta / tb:8.2f}x {diff:11.2g}")


if __name__ == "__main__":
    main()
