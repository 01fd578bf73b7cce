"""How often is a harmless unit labelled critical when there are many classes? A measurement.

    python benchmarks/false_critical.py [--model resnet18-fashion] [--trials 400] [--seed 0] [--json FILE]

The table in METHOD.md §2 comes from ``--json benchmarks/false_critical.json`` (the stored run).

A unit is critical when any one of C per-class tests rejects. For C independent, calibrated tests the
rate for a unit with no effect is 1 - (1 - alpha)^C (40% at C = 10, 99.4% at C = 100). The real tests are
not independent of the scores' pairing: q(x) and q^n(x) are measured on the same images, and the default
(Welch's unpaired test) ignores that. This builds null units from real scores:

* the per-image reference scores q(x) of the shipped checkpoint's calibration images (k = 20 per class,
  its default analysis), drawn with replacement into C classes of k images each;
* a null unit's scores q^n(x) = q(x) + e(x), e zero-mean Gaussian noise with the spread of real neutral
  units' per-image changes (the median over the neutral units of sd(q^n - q), measured in one C-SWAP
  analysis of the same checkpoint; printed). A unit with exactly no change gives p = 1 and cannot serve.

For C = 10, 100 and 1,000 and every test and correction, it prints the share of null units labelled
critical (the decision of :func:`cswap_nb.core.causal.verdict_of`) next to 1 - (1 - alpha)^C. The null units and
their labels come from :func:`cswap_nb.experiments.effects.false_critical_rate` (notebook 02 uses it too).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd
import torch

import cswap_nb as cs
from cswap_nb.pruning import descent
from cswap_nb.core.causal import CORRECTIONS, NEUTRAL, TESTS
from cswap_nb.experiments.effects import false_critical_rate
from cswap_nb.pruning.session import PruneSession


def real_scores(name: str) -> tuple[np.ndarray, float, int]:
    """The reference scores of a default analysis' calibration set, the median sd of the per-image
    change of its neutral units, and their number."""
    model, data = cs.zoo.load(name)
    spreads = []
    evaluate = descent.ClassByClass.evaluate

    def recording(self, layer, q_ref, *args, **kw):
        verdict, q, classes, samples = evaluate(self, layer, q_ref, *args, **kw)
        if verdict.label == NEUTRAL and q is not None:
            spreads.append(float((q - q_ref).double().std()))
        return verdict, q, classes, samples

    descent.ClassByClass.evaluate = recording
    try:
        session = PruneSession(model, data.calib, progress=False)
        for _ in session.steps():
            pass
    finally:
        descent.ClassByClass.evaluate = evaluate
    with torch.inference_mode():
        q = session.engine.scores(session.x, session.y, session.config.score).double().cpu().numpy()
    return q, float(np.median(spreads)), len(spreads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18-fashion")
    ap.add_argument("--trials", type=int, default=400, help="null units per C (a quarter of them for wilcoxon)")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the settings and every rate to this file")
    args = ap.parse_args()
    start = time.perf_counter()
    pool, sd, neutral = real_scores(args.model)
    print(f"{args.model}: {len(pool)} calibration scores (mean {pool.mean():.3f}, sd {pool.std():.3f}); "
          f"null noise sd {sd:.4f} (median over {neutral} neutral units)")
    rng = np.random.default_rng(args.seed)
    rows = []
    for c in (10, 100, 1000):
        for test in TESTS:
            trials = max(20, args.trials // 4) if test == "wilcoxon" else args.trials
            rates = false_critical_rate(pool, c, sd, test, args.k, trials, args.alpha, CORRECTIONS, rng=rng)
            for corr in CORRECTIONS:
                rows.append({"C": c, "test": test, "correction": corr, "trials": trials,
                             "false critical %": 100.0 * rates[corr],
                             "independent tests %": 100.0 * (1 - (1 - args.alpha) ** c)})
        print(f"C = {c} done", flush=True)
    table = pd.DataFrame(rows).pivot_table(index=["test", "correction"], columns="C", values="false critical %")
    print(f"\nnull units labelled critical (%), alpha = {args.alpha}, k = {args.k}:")
    print(table.round(1).to_string())
    print("independent calibrated tests, 1 - (1 - alpha)^C (%): "
          + ", ".join(f"C = {c}: {100 * (1 - (1 - args.alpha) ** c):.1f}" for c in (10, 100, 1000)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "alpha": args.alpha, "k": args.k, "seed": args.seed,
                       "calibration_scores": len(pool), "null_noise_sd": sd, "neutral_units": neutral,
                       "seconds": round(time.perf_counter() - start, 1), "rows": rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
