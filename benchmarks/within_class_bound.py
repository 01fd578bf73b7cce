"""Could a critical unit be decided on part of one class's images? A measurement, not a feature.

    python benchmarks/within_class_bound.py [NAME] [--parts 5,10,15] [--alpha 0.05]

Early decisions (cswap_nb/METHOD.md §10) decide a unit at the granularity of a class: a class's test needs
all its k calibration images. Scoring only m < k images of a class could decide a unit exactly only if no
value of the k - m missing scores could raise the class's p-value to α or above. With ``score="prob"`` (the
default) every score lies in [0, 1], which gives such a bound for Welch's test of "removal lowers q"
(the default test; t = (mean_removed - mean_ref) / sqrt(var_removed / k + var_ref / k), the reference scores
all known):

* ``sufficient``: the p-value is at most Student's t distribution function at t_max with k - 1 degrees of
  freedom, where t_max takes the largest mean the missing scores allow (all 1) and the largest sample
  variance they allow (a convex function of the missing scores, so its maximum over the box [0, 1]^(k-m)
  lies at a vertex: some missing scores at 1, the others at 0), and Welch's degrees of freedom are at least
  k - 1 (a smaller df gives a larger lower tail for t < 0). Where this bound is below α, m images decide.
* ``necessary``: the largest p-value over those vertices alone. The true largest p-value is at least this,
  so where it reaches α no rule that knows only that the missing scores lie in [0, 1] can decide the unit
  exactly on these m images.

The two counts bracket what such an exact rule could decide on the first m images of a class (in calibration
order). This runs one C-SWAP analysis at ``--alpha`` with every candidate scored on every class
(``evaluation="full"``), records each candidate's scores, and counts, per m, the critical units that some
class decides on its first m images.
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

import cswap_nb as cs
from cswap_nb.core.causal import CRITICAL, one_sided_pvalues
from cswap_nb.pruning import descent


def record_scores(name: str, alpha: float) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(label, removed scores, reference scores, labels) of every candidate of a full-evaluation analysis."""
    seen = []
    evaluate = descent.ClassByClass.evaluate

    def recording(self, layer, q_ref, units=(), upcoming=()):
        out = evaluate(self, layer, q_ref, units, upcoming)
        seen.append((out[0].label, out[1].double().cpu().numpy(), q_ref.double().cpu().numpy(),
                     self.y.cpu().numpy()))
        return out

    descent.ClassByClass.evaluate = recording
    try:
        model, data = cs.zoo.load(name)
        cs.prune(model, data.calib, progress=False, evaluation="full", alpha=alpha)
    finally:
        descent.ClassByClass.evaluate = evaluate
    return seen


def vertices(known: np.ndarray, k: int) -> list[np.ndarray]:
    """The removed scores with the k - m missing ones at a vertex of [0, 1]^(k-m) (j ones, the rest zeros)."""
    free = k - len(known)
    return [np.concatenate([known, np.ones(j), np.zeros(free - j)]) for j in range(free + 1)]


def bounds(known: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(sufficient, necessary): an upper bound on the class's p-value of "removal lowers q" over every value
    of the missing scores, and the largest p-value at the vertices (a lower bound on that maximum)."""
    k = len(ref)
    filled = vertices(known, k)
    mean_max = (known.sum() + (k - len(known))) / k
    var_max = max(float(np.var(v, ddof=1)) for v in filled)
    num = mean_max - ref.mean()
    upper = 1.0 if num >= 0 else float(stats.t.cdf(num / np.sqrt(var_max / k + ref.var(ddof=1) / k), k - 1))
    at_vertices = max(float(one_sided_pvalues(v, ref, "welch")[0][0]) for v in filled)
    return upper, at_vertices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", default="resnet18-fashion")
    ap.add_argument("--parts", default="5,10,15", help="images of a class scored (m), comma-separated")
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    seen = record_scores(args.name, args.alpha)
    critical = [s for s in seen if s[0] == CRITICAL]
    print(f"{args.name}: {len(seen)} candidates, {len(critical)} critical (evaluation='full', Welch, prob)")
    for m in (int(v) for v in args.parts.split(",")):
        sufficient = necessary = 0
        for _, q, q_ref, y in critical:
            best = (1.0, 1.0)
            for c in np.unique(y):
                idx = np.flatnonzero(y == c)
                if m < len(idx):
                    b = bounds(q[idx[:m]], q_ref[idx])
                    best = (min(best[0], b[0]), min(best[1], b[1]))
            sufficient += best[0] < args.alpha
            necessary += best[1] < args.alpha
        print(f"m = {m}: decided by the bound {sufficient}, at most {necessary} by any exact rule on scores in [0, 1], "
              f"of {len(critical)} critical units")


if __name__ == "__main__":
    main()
