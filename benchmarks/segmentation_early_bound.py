"""How much could early decisions save on a segmentation model? A measurement, not a feature.

    python benchmarks/segmentation_early_bound.py [--k 10] [--scope all]

For classification, a unit is decided as soon as one class's test rejects, and a class's test needs only
that class's images (cswap_nb/METHOD.md §10). For segmentation a per-class test of class c uses every
calibration scene that holds c, and most classes are in most road scenes. This runs one C-SWAP analysis of
``ddrnet23slim-roads`` with every candidate scored on all scenes, records every candidate's scores, and
then works out, per candidate, the share of scenes an exact early decision would have needed:

* ``oracle``: for a critical unit, the fewest scenes of any single class whose test rejects (a lower
  bound for any class-by-class order: no policy can know beforehand which class will reject);
* ``previous m``: the m classes with the smallest p-values on the previous candidate first (the
  classification engine's rule), their scenes' union; all scenes when they do not decide.

Shares are weighted by each candidate's measured work (forward-equivalents) as well as counted per
candidate. The scores of a scene do not depend on which other scenes share its batch, so a second stage
scores only the remaining scenes: a share of 1.0 costs no more than the full evaluation.
"""
from __future__ import annotations

import argparse
import collections

import numpy as np

import cswap_nb as cs
from cswap_nb.pruning import descent
from cswap_nb.core.causal import CRITICAL, one_sided_pvalues
from cswap_nb.pruning.session import PruneSession


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--scope", default="all")
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    model, data = cs.zoo.load("ddrnet23slim-roads")
    steps = []
    decide = descent.decide_unit

    def recording(q, q_ref, y, *rest, **kw):
        verdict = decide(q, q_ref, y, *rest, **kw)
        steps.append((q.cpu().numpy().copy(), q_ref.cpu().numpy().copy(), y.cpu().numpy().copy(), verdict.label))
        return verdict

    descent.decide_unit = recording  # segmentation candidates are scored whole: every one passes here
    try:
        session = PruneSession(model, data.calib, alpha=args.alpha, samples_per_class=args.k, scope=args.scope,
                               progress=False)
        engine = session.engine
        work = []
        for _ in session.steps():
            work.append(engine.forward_equivalents)
    finally:
        descent.decide_unit = decide
    pairs = session.pairs.cpu().numpy()
    scenes = int(pairs[:, 0].max()) + 1
    classes = np.unique(pairs[:, 1])
    scenes_of = {int(c): set(pairs[pairs[:, 1] == c, 0].tolist()) for c in classes}
    cost = np.diff([0.0] + work)
    lows = np.array([[one_sided_pvalues(q[y == c], r[y == c], "welch")[0][0] for c in classes]
                     for q, r, y, _ in steps])
    critical = np.array([label == CRITICAL for *_, label in steps])

    def share(picked) -> float:
        return len(set().union(*(scenes_of[int(classes[i])] for i in picked))) / scenes

    def report(name: str, shares: np.ndarray) -> None:
        print(f"{name:>12}: time-weighted share {float((shares * cost).sum() / cost.sum()):.3f}, "
              f"per candidate {float(shares.mean()):.3f}")

    print(f"{len(steps)} candidates, {int(critical.sum())} critical; {scenes} calibration scenes; scenes per class: "
          + ", ".join(f"{int(c)}: {len(scenes_of[int(c)])}" for c in classes))
    oracle = np.array([min(share([j]) for j in np.flatnonzero(lows[i] < args.alpha)) if critical[i] else 1.0
                       for i in range(len(steps))])
    report("oracle", oracle)
    for m in (1, 2, 3):
        hint, shares = np.zeros(len(classes)), []
        for i in range(len(steps)):
            picked = np.argsort(hint, kind="stable")[:m].tolist()
            if critical[i] and (lows[i][picked] < args.alpha).any():
                shares.append(share(picked))
                hint[picked] = lows[i][picked]
            else:
                shares.append(1.0)
                hint[:] = lows[i]
        report(f"previous {m}", np.array(shares))
    deciding = collections.Counter(int(classes[np.argmin(lw)]) for lw, c in zip(lows, critical) if c)
    print("class with the smallest p-value on critical units (class: units):",
          ", ".join(f"{c}: {n}" for c, n in deciding.most_common(8)))


if __name__ == "__main__":
    main()
