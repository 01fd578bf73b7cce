"""What would early decisions give with a perfect order? An upper bound on any class order, measured.

    python benchmarks/oracle_order.py [NAME] [--alpha 0.05] [--naive-seconds S]

Early decisions (cswap_nb/METHOD.md §10) score a candidate on two classes first, picked by two guesses, and on
the other classes when those do not decide it critical. An *oracle* that knew each critical unit's deciding
class would score it on that class alone (its k images) and every other unit on every image; no order can
score fewer images, since a class's test needs all its images (``benchmarks/within_class_bound.py``). This
runs three analyses of one checkpoint with the default options (at ``--alpha``):

1. ``evaluation="full"``: every candidate's per-class p-values, hence whether some class decides it;
2. the default (early decisions, compaction), each candidate's seconds and images scored;
3. the naive engine (skipped with ``--naive-seconds``, its analysis time from another run).

The oracle's time is estimated from run 2: each candidate's seconds scaled by the oracle's images over the
images it scored, plus the analysis time spent outside the candidates (compact copies, the reference scores).
A pass over fewer images costs more per image on this CPU, and a candidate's fixed costs (p-values, masks) do
not shrink with its images, so the estimate is below the oracle's real time, and the speed-up printed for it
is above what the oracle would reach: an upper bound on the speed-up of any class order at the fast
engine's present cost per image. Labels of the three runs must agree (checked).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import cswap_nb as cs
from cswap_nb.core.causal import CRITICAL, as_compared, group_pvalues
from cswap_nb.pruning import descent


def analyse(name: str, alpha: float, **options) -> tuple[list[dict], float]:
    """Each candidate's label, seconds, images scored and smallest class p-value, and the analysis seconds."""
    seen = []
    evaluate = descent.ClassByClass.evaluate

    def recording(self, layer, q_ref, units=(), upcoming=()):
        t0 = time.perf_counter()
        verdict, q, classes, samples = out = evaluate(self, layer, q_ref, units, upcoming)
        seconds = time.perf_counter() - t0
        low, size = np.nan, np.nan
        if q is not None and samples == len(self.y):
            a, b = as_compared(q, q_ref, self.cfg.score)
            y = self.y.cpu().numpy()
            groups = [np.flatnonzero(y == c) for c in np.unique(y)]
            lows, _ = group_pvalues(a, b, groups, self.cfg.test)
            low, size = float(lows.min()), len(groups[int(np.argmin(lows))])
        seen.append({"label": verdict.label, "seconds": seconds, "samples": samples, "low": low,
                     "deciding_images": size})
        return out

    descent.ClassByClass.evaluate = recording
    try:
        model, data = cs.zoo.load(name)
        result = cs.prune(model, data.calib, progress=False, alpha=alpha, **options)
    finally:
        descent.ClassByClass.evaluate = evaluate
    return seen, result.analysis_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", default="resnet18-fashion")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--naive-seconds", type=float, help="the naive engine's analysis seconds (skips its run)")
    args = ap.parse_args()
    if cs.CSwapConfig().correction != "none":
        raise SystemExit("the oracle below assumes correction='none' (one class with p < alpha decides)")
    full, _ = analyse(args.name, args.alpha, evaluation="full")
    early, early_seconds = analyse(args.name, args.alpha)
    if args.naive_seconds is None:
        naive, naive_seconds = analyse(args.name, args.alpha, engine="naive")
        assert [c["label"] for c in naive] == [c["label"] for c in full], "naive labels differ"
    else:
        naive_seconds = args.naive_seconds
    assert [c["label"] for c in early] == [c["label"] for c in full], "early labels differ from full"
    total = len(full) and full[0]["samples"]
    steps = sum(c["seconds"] for c in early)
    scaled = 0.0
    oracle_images = actual_images = 0
    for f, e in zip(full, early):
        critical = f["label"] == CRITICAL and f["low"] < args.alpha
        images = f["deciding_images"] if critical else total
        oracle_images += images
        actual_images += e["samples"]
        scaled += e["seconds"] * images / max(1, e["samples"])
    oracle = early_seconds - steps + scaled
    print(f"{args.name}, alpha = {args.alpha}: {len(full)} candidates, "
          f"{sum(c['label'] == CRITICAL for c in full)} critical")
    print(f"images scored: early {actual_images:,}, oracle {oracle_images:,} ({oracle_images / actual_images:.0%})")
    print(f"analysis seconds: naive {naive_seconds:.2f}, early {early_seconds:.2f} "
          f"(of which candidates {steps:.2f}), oracle at most-optimistic {oracle:.2f}")
    print(f"the oracle over the early decisions: at most {early_seconds / oracle:.2f}x")
    print(f"speed-up over naive: early {naive_seconds / early_seconds:.2f}x, "
          f"oracle at most {naive_seconds / oracle:.2f}x")


if __name__ == "__main__":
    main()
