"""Where a comparison's time goes: per criterion, the seconds of one run to C-SWAP's parameter count
(scoring, cutting) and of its evaluation, on one calibration draw.

    python benchmarks/compare_costs.py [--model resnet18-fashion] [--methods l1,taylor,...] [--test N]
"""
from __future__ import annotations

import argparse
import time

import cswap_nb as cs
from cswap_nb.criteria import CRITERIA
from cswap_nb.core.metrics import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet18-fashion")
    ap.add_argument("--methods", default=",".join(CRITERIA))
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--test", type=int, default=None, help="evaluate on the first N test images (default: all)")
    args = ap.parse_args()
    model, data = cs.zoo.load(args.model)
    test = data.test if args.test is None else data.test.head(args.test)
    t = time.perf_counter()
    ref = cs.prune(model, data.calib, samples_per_class=args.k, progress=False)
    print(f"cswap analysis: {time.perf_counter() - t:7.2f} s  ({ref.params_after:,} parameters)")
    t = time.perf_counter()
    evaluate(ref.model, test)
    print(f"one evaluation on {len(test.y):,} test images: {time.perf_counter() - t:7.2f} s")
    for m in args.methods.split(","):
        t = time.perf_counter()
        res = cs.prune(model, data.calib, m, params=ref.params_after, samples_per_class=args.k, progress=False)
        whole = time.perf_counter() - t
        t = time.perf_counter()
        cs.prune(model, data.calib, m, params=ref.params_after, samples_per_class=args.k, progress=False,
                 scores=res.scores)
        again = time.perf_counter() - t
        print(f"{m:12s} first run {whole:7.2f} s   with its scores given {again:6.2f} s   "
              f"(scoring ~{whole - again:6.2f} s)")


if __name__ == "__main__":
    main()
