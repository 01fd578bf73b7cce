"""Null units (harmless by construction) and how often the causal tests label them critical
(cswap_nb.experiments.effects.false_critical_rate, used by benchmarks/false_critical.py and notebook 02)."""
from __future__ import annotations

import numpy as np

from cswap_nb.core.causal import one_sided_pvalues
from cswap_nb.experiments.effects import false_critical_rate, null_scores

ALPHA = 0.05


def _tolerance(rate: float, trials: int) -> float:
    """Four binomial standard errors: a calibrated rate misses this band about once in 16,000 runs."""
    return 4 * np.sqrt(rate * (1 - rate) / trials)


def _pool() -> np.ndarray:
    """Scores that vary between images far more than a harmless unit moves them, like a confident network's."""
    return np.random.default_rng(0).beta(8, 1, 400)


def test_null_scores_are_paired_or_not_as_asked():
    rng = np.random.default_rng(1)
    q, qn = null_scores(_pool(), 200, 0.01, rng)
    assert np.abs(qn - q).max() < 0.06 and abs((qn - q).std() - 0.01) < 0.003   # the same images, plus noise
    q, qn = null_scores(_pool(), 200, 0.01, rng, paired=False)
    assert (qn - q).std() > 5 * 0.01                                              # other images: their spread
    lo, hi = one_sided_pvalues(q[None], q[None], "welch")    # why a unit of exactly no effect cannot serve
    assert lo[0] == hi[0] == 1.0


def test_paired_t_is_calibrated_and_welch_is_conservative_on_paired_nulls():
    """With Gaussian per-image noise the paired t-test is exact: its rate at C = 1 is α and at C = 10 the
    bound for independent tests, 1 - (1 - α)^10. Welch's test divides by the spread between images, which
    a paired null does not move, so it almost never rejects; on unpaired nulls it is near α again. An
    implementation that counted detrimental units, ignored the pairing or mixed up the classes fails here."""
    pool, trials = _pool(), 2000
    paired_t = false_critical_rate(pool, 1, 0.02, "paired-t", k=20, trials=trials, rng=2)["none"]
    assert abs(paired_t - ALPHA) < _tolerance(ALPHA, trials)
    welch = false_critical_rate(pool, 1, 0.02, "welch", k=20, trials=trials, rng=3)["none"]
    assert welch < paired_t - _tolerance(ALPHA, trials)
    unpaired = false_critical_rate(pool, 1, 0.02, "welch", k=20, trials=trials, paired=False, rng=4)["none"]
    assert abs(unpaired - ALPHA) < _tolerance(ALPHA, trials) + 0.01      # Welch is only approximately exact

    bound, trials = 1 - (1 - ALPHA) ** 10, 500
    rates = false_critical_rate(pool, 10, 0.02, "paired-t", k=20, trials=trials, corrections=("none", "holm"), rng=5)
    assert abs(rates["none"] - bound) < _tolerance(bound, trials)
    assert rates["holm"] <= ALPHA + _tolerance(ALPHA, trials)                     # Holm: at most α per unit


def test_a_generator_is_advanced_and_a_seed_reproduces():
    pool = _pool()
    assert false_critical_rate(pool, 3, 0.05, "paired-t", trials=50, rng=7) == \
        false_critical_rate(pool, 3, 0.05, "paired-t", trials=50, rng=7)
    rng = np.random.default_rng(7)
    first = false_critical_rate(pool, 3, 0.05, "paired-t", trials=50, rng=rng)
    assert rng.bit_generator.state != np.random.default_rng(7).bit_generator.state
    assert first == false_critical_rate(pool, 3, 0.05, "paired-t", trials=50, rng=7)
