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

The oracle's time is estimated from run 2, optimistically, so that the speed-up printed for it is an upper
bound on any class order's at the fast engine's present cost per image:

* each candidate's seconds are scaled by the oracle's images over the images it scored (a critical unit's
  pass scaled down to one class's 20 images: the least efficient batch here, and a pass's fixed costs do not
  shrink with its rows);
* the guesses' first-order estimate (``predicted_harm``), which an oracle needs no more than any guess, is
  left out;
* a stacked pass (the first classes of the next candidates scored with the present one's) is split over its
  states by their rows: each share is counted with the candidate that takes that result (and scaled with
  it), and the shares never taken (speculation that a removal made void) are left out;
* the rest of the analysis (reference scores, and what runs inside a candidate such as a compact copy's
  build, scaled with it) is kept.

Labels of the three runs must agree (checked). Default options only: ``correction="none"`` (one class with
p < α decides) and per-class inference.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import cswap_nb as cs
from cswap_nb.core.causal import CRITICAL, as_compared, group_pvalues
from cswap_nb.engines.graph import _Speculation
from cswap_nb.engines.passes import row_count
from cswap_nb.pruning import descent


def analyse(name: str, alpha: float, lows: bool = False, **options) -> tuple[list[dict], float]:
    """Each candidate's label, seconds (without the estimate's; with the shares of stacked passes whose results
    it took, wherever they ran), images scored and, with ``lows``, its per-class p-values; and the analysis
    seconds."""
    seen = []
    evaluate, harm = descent.ClassByClass.evaluate, descent.ClassByClass.harm
    stack, take = _Speculation.stack, _Speculation.take
    spent = {"harm": 0.0, "stack": 0.0, "taken": 0.0}
    pending: dict = {}  # per speculation: (token, rows) of a stacked result -> its share of the pass's seconds

    def timed_harm(self):
        t0 = time.perf_counter()
        try:
            return harm.fget(self)
        finally:
            spent["harm"] += time.perf_counter() - t0

    def timed_stack(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return stack(self, *args, **kwargs)
        finally:
            seconds = time.perf_counter() - t0
            spent["stack"] += seconds
            rows = {key: row_count(key[1]) for key in self.results}
            pending[id(self)] = {key: seconds * n / max(1, sum(rows.values())) for key, n in rows.items()}

    def timed_take(self, token, rows):
        q = take(self, token, rows)
        if q is not None:
            spent["taken"] += pending.get(id(self), {}).pop((token, rows), 0.0)
        return q

    def recording(self, layer, q_ref, units=(), upcoming=()):
        before = dict(spent)
        t0 = time.perf_counter()
        verdict, q, classes, samples = out = evaluate(self, layer, q_ref, units, upcoming)
        seconds = time.perf_counter() - t0
        d = {k: spent[k] - before[k] for k in spent}
        record = {"label": verdict.label, "seconds": seconds - d["harm"] - d["stack"] + d["taken"],
                  "harm": d["harm"], "stack": d["stack"], "taken": d["taken"], "samples": samples}
        if lows:
            a, b = as_compared(q, q_ref, self.cfg.score)
            y = self.y.cpu().numpy()
            groups = [np.flatnonzero(y == c) for c in np.unique(y)]
            record["lows"] = group_pvalues(a, b, groups, self.cfg.test)[0]
            record["sizes"] = np.array([len(g) for g in groups])
        seen.append(record)
        return out

    _Speculation.stack, _Speculation.take = timed_stack, timed_take
    descent.ClassByClass.evaluate, descent.ClassByClass.harm = recording, property(timed_harm)
    try:
        model, data = cs.zoo.load(name)
        result = cs.prune(model, data.calib, progress=False, alpha=alpha, **options)
    finally:
        descent.ClassByClass.evaluate, descent.ClassByClass.harm = evaluate, harm
        _Speculation.stack, _Speculation.take = stack, take
    return seen, result.analysis_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", default="resnet18-fashion")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--naive-seconds", type=float, help="the naive engine's analysis seconds (skips its run)")
    args = ap.parse_args()
    defaults = cs.CSwapConfig()
    if defaults.correction != "none" or defaults.inference != "per-class":
        raise SystemExit("the oracle below assumes correction='none' and per-class inference")
    full, _ = analyse(args.name, args.alpha, lows=True, evaluation="full")
    early, early_seconds = analyse(args.name, args.alpha)
    if args.naive_seconds is None:
        naive, naive_seconds = analyse(args.name, args.alpha, engine="naive")
        assert [c["label"] for c in naive] == [c["label"] for c in full], "naive labels differ"
    else:
        naive_seconds = args.naive_seconds
    assert [c["label"] for c in early] == [c["label"] for c in full], "early labels differ from full"
    assert all(np.isfinite(c["lows"]).all() and c["samples"] == full[0]["samples"] for c in full)
    total = full[0]["samples"]
    scaled, oracle_images, actual_images = 0.0, 0, 0
    for f, e in zip(full, early):
        deciding = f["lows"] < args.alpha  # correction none: any of these classes alone decides
        assert deciding.any() == (f["label"] == CRITICAL)
        images = int(f["sizes"][deciding].min()) if deciding.any() else total
        oracle_images += images
        actual_images += e["samples"]
        scaled += e["seconds"] * images / e["samples"]
    kept = sum(e["seconds"] for e in early)
    harm = sum(e["harm"] for e in early)
    wasted = sum(e["stack"] for e in early) - sum(e["taken"] for e in early)
    outside = early_seconds - kept - harm - wasted
    oracle = outside + scaled
    print(f"{args.name}, alpha = {args.alpha}: {len(full)} candidates, "
          f"{sum(c['label'] == CRITICAL for c in full)} critical")
    print(f"images scored: early {actual_images:,}, oracle {oracle_images:,} ({oracle_images / actual_images:.0%})")
    print(f"analysis seconds, early: {early_seconds:.2f} (candidates {kept:.2f}, the estimate {harm:.2f}, "
          f"stacked results never taken {wasted:.2f}, the rest {outside:.2f})")
    print(f"analysis seconds, oracle at best: {oracle:.2f}; the oracle over the early decisions: "
          f"at most {early_seconds / oracle:.2f}x")
    print(f"speed-up over naive ({naive_seconds:.2f} s): early {naive_seconds / early_seconds:.2f}x, "
          f"oracle at most {naive_seconds / oracle:.2f}x")


if __name__ == "__main__":
    main()
