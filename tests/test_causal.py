"""The causal test of a unit: p-values, labels, minimum sample sizes, and a network with
planted critical / neutral / detrimental units, found end to end through ``cs.prune``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import cswap_nb as cs
from cswap_nb.core import causal
from cswap_nb.core.causal import CRITICAL, DETRIMENTAL, NEUTRAL, TESTS

# scipy warns about precision loss when both groups are (nearly) identical; that is expected here
pytestmark = pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")

N = 20


def _ref(seed=0, n=N):
    rng = np.random.default_rng(seed)
    return 0.6 + 0.1 * rng.random(n)


def _jitter(seed=1, n=N):
    return 0.01 * np.random.default_rng(seed).standard_normal(n)


# ------------------------------------------------------------------ one_sided_pvalues


def pvals(q_removed, q_ref, test):
    """``one_sided_pvalues`` for one group, as two floats."""
    lo, hi = causal.one_sided_pvalues(q_removed, q_ref, test)
    return float(np.squeeze(lo)), float(np.squeeze(hi))


@pytest.mark.parametrize("test", TESTS)
def test_lowered_scores_give_small_lower_pvalue(test):
    q = _ref()
    lo, hi = pvals(q - 0.2 + _jitter(), q, test)
    assert lo < 1e-3
    assert hi > 0.9


@pytest.mark.parametrize("test", TESTS)
def test_raised_scores_give_small_raise_pvalue(test):
    q = _ref()
    lo, hi = pvals(q + 0.2 + _jitter(), q, test)
    assert hi < 1e-3
    assert lo > 0.9


@pytest.mark.parametrize("test", TESTS)
def test_identical_scores_give_p_one(test):
    q = _ref()
    assert pvals(q.copy(), q, test) == (1.0, 1.0)


@pytest.mark.parametrize("test", TESTS)
def test_pvalues_are_probabilities_and_swap_under_reversal(test):
    q = _ref()
    qn = q + 0.01 * np.random.default_rng(3).standard_normal(N)
    lo, hi = pvals(qn, q, test)
    assert 0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0
    lo2, hi2 = pvals(q, qn, test)
    if test == "ztest" or test == "welch":
        assert lo == pytest.approx(hi2) and hi == pytest.approx(lo2)
    else:  # paired tests: the signed differences flip sign
        assert lo == pytest.approx(hi2, abs=1e-9) and hi == pytest.approx(lo2, abs=1e-9)


@pytest.mark.parametrize("test", TESTS)
def test_constant_shift_is_decided(test):
    """Degenerate zero-variance inputs must not give NaN: a constant drop is a drop."""
    q = np.full(N, 0.7)
    lo, hi = pvals(q - 0.1, q, test)
    assert np.isfinite(lo) and np.isfinite(hi)
    assert lo < 0.05 <= hi


@pytest.mark.parametrize("shift", [-0.02, 0.0, 0.015])
def test_pvalues_agree_with_scipy(shift):
    from scipy import stats

    rng = np.random.default_rng(7)
    q = 0.5 + 0.1 * rng.random(N)
    qn = q + shift + 0.02 * rng.standard_normal(N)
    for test, lo_ref, hi_ref in [
        ("welch", stats.ttest_ind(qn, q, equal_var=False, alternative="less").pvalue,
         stats.ttest_ind(qn, q, equal_var=False, alternative="greater").pvalue),
        ("paired-t", stats.ttest_rel(qn, q, alternative="less").pvalue,
         stats.ttest_rel(qn, q, alternative="greater").pvalue),
        ("wilcoxon", stats.wilcoxon(qn - q, alternative="less").pvalue,
         stats.wilcoxon(qn - q, alternative="greater").pvalue),
    ]:
        lo, hi = pvals(qn, q, test)
        assert lo == pytest.approx(lo_ref, rel=1e-9, abs=1e-12), test
        assert hi == pytest.approx(hi_ref, rel=1e-9, abs=1e-12), test
    z = (qn.mean() - q.mean()) / np.sqrt(qn.var(ddof=1) / N + q.var(ddof=1) / N)
    lo, hi = pvals(qn, q, "ztest")
    assert lo == pytest.approx(stats.norm.cdf(z)) and hi == pytest.approx(stats.norm.sf(z))


@pytest.mark.parametrize("test", TESTS)
def test_rows_are_tested_independently(test):
    """A (groups, n) array gives, row by row, the p-values of each group on its own."""
    rng = np.random.default_rng(11)
    q = 0.5 + 0.1 * rng.random((3, N))
    qn = q + np.array([[-0.1], [0.0], [0.1]]) + 0.01 * rng.standard_normal((3, N))
    qn[1] = q[1]  # an unchanged group
    lo, hi = causal.one_sided_pvalues(qn, q, test)
    assert np.shape(lo) == np.shape(hi) == (3,)
    for r in range(3):
        assert (lo[r], hi[r]) == pytest.approx(pvals(qn[r], q[r], test))
    assert lo[1] == hi[1] == 1.0


def test_unknown_test_raises():
    with pytest.raises(ValueError, match="test must be one of"):
        causal.one_sided_pvalues(np.array([1.0, 2.0]), np.array([2.0, 3.0]), "t-test")


# ------------------------------------------------------------------ decide_unit


def _three_classes(effect_class: int, delta: float, seed: int = 0):
    y = torch.arange(3).repeat_interleave(N)
    q = torch.as_tensor(np.concatenate([_ref(seed + c) for c in range(3)]))
    qn = q.clone()
    idx = y == effect_class
    qn[idx] = qn[idx] + delta + torch.as_tensor(_jitter(seed + 10))
    return qn, q, y


@pytest.mark.parametrize("test", TESTS)
def test_unit_lowered_in_one_class_is_critical(test):
    qn, q, y = _three_classes(2, -0.2)
    v = causal.decide_unit(qn, q, y, alpha=0.05, test=test)
    assert v.label == CRITICAL
    assert v.worst_class == 2
    assert v.p_value == v.p_lower < 0.05
    assert v.effect == pytest.approx(float((qn - q).mean()))
    assert v.effect < 0


@pytest.mark.parametrize("test", TESTS)
def test_unit_raised_in_one_class_is_detrimental(test):
    qn, q, y = _three_classes(1, +0.2)
    v = causal.decide_unit(qn, q, y, alpha=0.05, test=test)
    assert v.label == DETRIMENTAL
    assert v.p_value == v.p_raise < 0.05
    assert v.p_lower >= 0.05
    assert v.effect > 0


@pytest.mark.parametrize("test", TESTS)
def test_unit_identical_is_neutral_with_p_one(test):
    _, q, y = _three_classes(0, 0.0)
    v = causal.decide_unit(q.clone(), q, y, alpha=0.05, test=test)
    assert v.label == NEUTRAL
    assert v.p_value == 1.0 and v.p_lower == 1.0 and v.p_raise == 1.0
    assert v.effect == 0.0


@pytest.mark.parametrize("test", TESTS)
def test_unit_with_unequal_class_sizes(test):
    qn, q, y = _three_classes(2, -0.2)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[:3] = False  # class 0 now has fewer samples than the others
    v = causal.decide_unit(qn[keep], q[keep], y[keep], alpha=0.05, test=test)
    assert v.label == CRITICAL and v.worst_class == 2
    expected = min(pvals(qn[keep][y[keep] == c].numpy(), q[keep][y[keep] == c].numpy(), test)[0] for c in range(3))
    assert v.p_lower == pytest.approx(expected)


def test_wilcoxon_label_does_not_depend_on_an_unaffected_class():
    n = 15
    d = np.array([(1 if r in (2, 14, 15) else -1) * r * 1e-3 for r in range(1, n + 1)])  # T+ = 31
    q0 = np.full(n, 0.5)
    q_ref = torch.tensor(np.concatenate([q0, q0]))
    q_rem = torch.tensor(np.concatenate([q0 + d, q0]))  # class 1: the removal changes nothing
    y = torch.tensor([0] * n + [1] * n)
    both = causal.decide_unit(q_rem, q_ref, y, alpha=0.05, test="wilcoxon")
    alone = causal.decide_unit(q_rem[:n], q_ref[:n], y[:n], alpha=0.05, test="wilcoxon")
    assert alone.p_lower == pytest.approx(0.053497314453125)  # exact signed-rank p-value
    assert both.p_lower == pytest.approx(alone.p_lower)
    assert both.label == alone.label


def test_critical_takes_precedence_over_detrimental():
    qn, q, y = _three_classes(0, -0.2)
    qn[y == 1] += 0.3  # helps class 1 while hurting class 0
    v = causal.decide_unit(qn, q, y, alpha=0.05)
    assert v.p_raise < 0.05 and v.p_lower < 0.05
    assert v.label == CRITICAL and v.worst_class == 0


def test_per_class_inference_finds_an_effect_that_general_inference_dilutes():
    # a modest drop confined to one of three classes, hidden in the pooled spread
    y = torch.arange(3).repeat_interleave(N)
    q = torch.as_tensor(np.concatenate([np.full(N, 0.2), np.full(N, 0.5), np.full(N, 0.8)])
                        + 0.01 * np.random.default_rng(0).standard_normal(3 * N))
    qn = q.clone()
    qn[y == 1] -= 0.03
    assert causal.decide_unit(qn, q, y, alpha=0.05, inference="per-class").label == CRITICAL
    general = causal.decide_unit(qn, q, y, alpha=0.05, inference="general")
    assert general.label == NEUTRAL
    assert general.worst_class == -1


def test_ratio_score_tests_relative_change():
    qn, q, y = _three_classes(0, -0.2)
    assert causal.decide_unit(qn, q, y, alpha=0.05, score="ratio").label == CRITICAL
    qn, q, y = _three_classes(0, +0.2)
    assert causal.decide_unit(qn, q, y, alpha=0.05, score="ratio").label == DETRIMENTAL


def test_label_flips_with_alpha_at_the_p_value():
    qn, q, y = _three_classes(1, -0.01, seed=5)
    p = causal.decide_unit(qn, q, y, alpha=0.5).p_lower
    assert 1e-6 < p < 0.5
    assert causal.decide_unit(qn, q, y, alpha=p * 1.01).label == CRITICAL
    assert causal.decide_unit(qn, q, y, alpha=p * 0.99).label != CRITICAL


# ------------------------------------------------------------------ true_class_scores


def test_true_class_scores():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 2])
    probs = logits.softmax(1)
    assert torch.allclose(causal.true_class_scores(logits, y), probs[[0, 1], [0, 2]])
    assert torch.allclose(causal.true_class_scores(logits, y, "ratio"), probs[[0, 1], [0, 2]])
    assert torch.equal(causal.true_class_scores(logits, y, "logit"), torch.tensor([2.0, 3.0]))


# ------------------------------------------------------------------ min_samples


def test_min_samples_values():
    assert causal.min_samples("wilcoxon", 0.05) == 5
    assert causal.min_samples("welch", 0.05) == 2
    assert causal.min_samples("ztest", 0.05) == 2
    assert causal.min_samples("paired-t", 0.05) == 2
    assert causal.min_samples("wilcoxon", 0.01) == 7
    assert causal.min_samples("wilcoxon", 0.5) == 2


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.125, 0.2, 0.3])
def test_min_samples_is_the_smallest_n_that_can_reject_for_wilcoxon(alpha):
    n = causal.min_samples("wilcoxon", alpha)
    ref = np.linspace(0.5, 0.9, n)
    lo, _ = pvals(ref - 0.1, ref, "wilcoxon")  # every pair lowered: the strongest evidence
    assert lo < alpha
    if n > 2:
        lo_fewer, _ = pvals(ref[1:] - 0.1, ref[1:], "wilcoxon")
        assert lo_fewer >= alpha


# ------------------------------------------------------------------ planted network, end to end

A, CRIT, B, DEAD, DET = range(5)  # hidden units of the planted MLP


def planted_data(n: int = 60, seed: int = 0):
    """3 classes; class c has feature c near 3, the other class features near 0 (|x| <= 0.9);
    feature 3 is pure noise in [-2, 2]."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(3):
        x = (0.3 * torch.randn(n, 4, generator=g)).clamp(-0.9, 0.9)
        x[:, c] = (3.0 + 0.3 * torch.randn(n, generator=g)).clamp(2.0, 4.0)
        x[:, 3] = torch.randn(n, generator=g).clamp(-2.0, 2.0)
        xs.append(x)
        ys.append(torch.full((n,), c))
    return torch.cat(xs), torch.cat(ys)


def planted_model(weak: tuple[float, ...] = ()) -> nn.Module:
    """Linear(4 -> H) -> ReLU -> Linear(H -> 3), hand-set weights.

    * A, CRIT, B = relu(x_c - 1.5): active only on class c (x_c >= 2 there, <= 0.9 elsewhere),
      +3 into logit c. CRIT is the *only* evidence for class 1.
    * DEAD: zero weights and bias -1: always 0.
    * DET = relu(x_2 + x_3 / 4 - 1.5): zero outside class 2 (<= 0.9 + 0.5 - 1.5 < 0), >= 0 on it;
      -1 into logit 2, so it only ever hurts class 2 (with noise from x_3).
    * ``weak``: extra units like A with small weights into logit 0 (graded weak evidence).

    On every sample the true logit is >= 0.5 and the others are 0: all correctly classified.
    """
    H = 5 + len(weak)
    W1, b1, W2 = torch.zeros(H, 4), torch.zeros(H), torch.zeros(3, H)
    for unit, c in [(A, 0), (CRIT, 1), (B, 2)]:
        W1[unit, c], b1[unit], W2[c, unit] = 1.0, -1.5, 3.0
    b1[DEAD] = -1.0
    W2[:, DEAD] = torch.tensor([1.0, -1.0, 1.0])
    W1[DET, 2], W1[DET, 3], b1[DET], W2[2, DET] = 1.0, 0.25, -1.5, -1.0
    for i, eps in enumerate(weak):
        W1[5 + i, 0], W1[5 + i, 3], b1[5 + i], W2[0, 5 + i] = 1.0, 0.25, -1.5, eps
    model = nn.Sequential(nn.Linear(4, H), nn.ReLU(), nn.Linear(H, 3))
    with torch.no_grad():
        model[0].weight.copy_(W1)
        model[0].bias.copy_(b1)
        model[2].weight.copy_(W2)
        model[2].bias.zero_()
    return model.eval()


def test_planted_network_properties_hold_by_construction():
    x, y = planted_data()
    model = planted_model()
    with torch.no_grad():
        logits = model(x)
        h = torch.relu(model[0](x))
    assert torch.equal(logits.argmax(1), y)
    assert torch.all(h[:, DEAD] == 0)
    assert torch.all(h[y != 2, DET] == 0)
    assert torch.all(h[y != 1, CRIT] == 0) and torch.all(h[y == 1, CRIT] > 0)
    # removing CRIT leaves class 1 at chance; removing DET strictly raises every class-2 logit it touches
    q = logits.softmax(1)[y == 1, 1]
    assert q.min() > 0.6
    assert (h[y == 2, DET] > 0).float().mean() > 0.9


@pytest.mark.parametrize("test", TESTS)
def test_planted_units_are_found(test):
    x, y = planted_data()
    model = planted_model()
    res = cs.prune(model, (x, y), samples_per_class=30, alpha=0.05, test=test, progress=False)
    labels = res.labels.set_index("unit")
    assert set(labels.layer) == {"0"}  # only the hidden layer; the classifier is never a unit
    assert sorted(labels.index) == list(range(5))

    assert labels.loc[DEAD, "label"] == NEUTRAL
    assert labels.loc[DEAD, "p_value"] == 1.0 and labels.loc[DEAD, "effect"] == 0.0
    assert labels.loc[CRIT, "label"] == CRITICAL
    assert labels.loc[CRIT, "p_value"] < 1e-3 and labels.loc[CRIT, "effect"] < 0
    assert labels.loc[CRIT, "worst_class"] == 1
    assert labels.loc[DET, "label"] == DETRIMENTAL
    assert labels.loc[DET, "p_raise"] < 1e-3 and labels.loc[DET, "effect"] > 0
    assert labels.loc[A, "label"] == labels.loc[B, "label"] == CRITICAL

    assert not labels.loc[CRIT, "pruned"]
    assert labels.loc[DEAD, "pruned"] and labels.loc[DET, "pruned"]
    assert res.pruned_units == {"0": sorted([DEAD, DET])}
    # physically: 3 hidden units left, the classifier kept its 3 outputs
    assert res.model[0].weight.shape == (3, 4) and res.model[2].weight.shape == (3, 3)
    assert res.params_after == res.params_before - 2 * (4 + 1 + 3)
    assert res.summary()["counts"] == {CRITICAL: 3, NEUTRAL: 1, DETRIMENTAL: 1}
    # removing the detrimental unit helped class 2 and left the other classes alone
    with torch.no_grad():
        p_before = model(x).softmax(1)
        p_after = res.model(x).softmax(1)
    assert torch.all(p_after[y == 2, 2] >= p_before[y == 2, 2] - 1e-6)
    assert (p_after[y == 2, 2] - p_before[y == 2, 2]).mean() > 0.02
    assert torch.allclose(p_after[y != 2], p_before[y != 2], atol=1e-6)


@pytest.mark.parametrize("score", ["logit", "ratio"])
def test_planted_units_with_other_scores(score):
    x, y = planted_data()
    res = cs.prune(planted_model(), (x, y), samples_per_class=30, score=score, progress=False)
    labels = res.labels.set_index("unit").label
    assert (labels[DEAD], labels[CRIT], labels[DET]) == (NEUTRAL, CRITICAL, DETRIMENTAL)


def test_prune_uses_only_correctly_classified_samples():
    x, y = planted_data()
    y = y.clone()
    y[:5] = 1  # five class-0 samples mislabelled as class 1: the model "misclassifies" them
    res = cs.prune(planted_model(), (x, y), samples_per_class=None, progress=False)
    assert res.calib_samples == len(y) - 5
    labels = res.labels.set_index("unit").label
    assert (labels[DEAD], labels[CRIT], labels[DET]) == (NEUTRAL, CRITICAL, DETRIMENTAL)


def test_alpha_monotonicity():
    """A larger alpha never labels fewer units critical (graded weak units make it non-trivial)."""
    x, y = planted_data()
    model = planted_model(weak=(0.1,) * 6)
    counts = []
    for alpha in [0.01, 0.05, 0.2, 0.5]:
        res = cs.prune(model, (x, y), samples_per_class=30, alpha=alpha, progress=False)
        labels = res.labels.set_index("unit").label
        assert labels[CRIT] == CRITICAL and labels[DEAD] == NEUTRAL
        counts.append(int((res.labels.label == CRITICAL).sum()))
        assert int((~res.labels.pruned).sum()) == counts[-1]  # exactly the critical units are kept
    assert counts == sorted(counts), counts
    assert counts[-1] > counts[0], counts


def test_reference_current_judges_a_unit_against_the_already_pruned_network():
    """A live unit with no outgoing weight, tested right after DET was removed, changes nothing."""
    x, y = planted_data()
    idle = 5
    res = cs.prune(planted_model(weak=(0.0,)), (x, y), samples_per_class=30, reference="current", progress=False)
    labels = res.labels.set_index("unit")
    assert labels.index.tolist().index(DET) < labels.index.tolist().index(idle)  # DET is visited first
    assert labels.loc[DET, "label"] == DETRIMENTAL
    assert labels.loc[idle, "label"] == NEUTRAL and labels.loc[idle, "p_value"] == 1.0
    assert labels.loc[idle, "effect"] == 0.0
    assert labels.loc[CRIT, "label"] == CRITICAL


def test_reference_dense_compares_the_pruned_network_with_the_dense_one():
    """With the dense reference the idle unit's test sees DET's removal too (cumulative effect)."""
    x, y = planted_data()
    idle = 5
    res = cs.prune(planted_model(weak=(0.0,)), (x, y), samples_per_class=30, reference="dense", progress=False)
    labels = res.labels.set_index("unit")
    assert labels.loc[DET, "label"] == DETRIMENTAL
    assert labels.loc[idle, "effect"] == pytest.approx(labels.loc[DET, "effect"], rel=1e-6)
    assert labels.loc[idle, "label"] == DETRIMENTAL
    assert labels.loc[idle, "pruned"]


def _pvalue_rows(unit: int, lows: list[float], test: str = "welch") -> list[dict]:
    return [{"unit": unit, "test": test, "class": c, "mean_q": 0.9, "mean_q_removed": 0.8, "p_lower": p, "p_raise": 1.0}
            for c, p in enumerate(lows)]


def test_label_flips_lists_exactly_the_units_whose_label_changes_between_two_levels():
    import pandas as pd

    from cswap_nb.experiments.effects import label_flips

    table = pd.DataFrame(_pvalue_rows(0, [0.03, 0.6]) + _pvalue_rows(1, [0.001, 0.5]) + _pvalue_rows(2, [0.2, 0.3])
                         + _pvalue_rows(0, [0.9, 0.9], test="paired-t"))
    flips = label_flips(table, 0.01, 0.05)
    assert flips.unit.tolist() == [0]  # 0.03 rejects at 0.05, not at 0.01; 0.001 rejects at both; 0.2 at neither
    assert flips.iloc[0].label_before == CRITICAL and flips.iloc[0].label_after == NEUTRAL
    up = label_flips(table, 0.5, 0.05)
    assert up.unit.tolist() == [2] and up.iloc[0].label_after == CRITICAL
    assert label_flips(table, 0.05, 0.05).empty
    # Holm's correction over the 2 classes doubles the smallest p-value: 0.03 no longer rejects at 0.05
    assert label_flips(table, 0.05, 0.1, correction="holm").unit.tolist() == [0]
    with pytest.raises(ValueError, match="no p-values of test 'wilcoxon'"):
        label_flips(table, 0.01, 0.05, test="wilcoxon")


def test_relabel_slider_answers_from_the_table_alone():
    import pandas as pd

    from cswap_nb.ui.widgets import relabel_slider

    table = pd.DataFrame(_pvalue_rows(0, [0.03, 0.6]) + _pvalue_rows(1, [0.001, 0.5]))
    box = relabel_slider(table, reference_alpha=0.05)
    slider = box.children[0]
    assert slider.value == pytest.approx(0.05)
    slider.value = 0.01  # re-labels without any model: the table is all it has
    with pytest.raises(ValueError, match="no p-values of test"):
        relabel_slider(table, test="ztest")


@pytest.mark.parametrize("test", ["welch", "ztest", "paired-t"])
def test_groups_of_several_sizes_are_tested_in_one_call_as_one_by_one(test):
    """Segmentation's classes hold different numbers of samples; their tests run padded in one call and give
    each group's own p-values (as testing the groups one by one), including constant and identical groups."""
    rng = np.random.default_rng(0)
    sizes = [2, 5, 9, 9, 30, 4]
    q = rng.normal(0.6, 0.1, sum(sizes))
    qn = q + rng.normal(-0.02, 0.05, len(q))
    groups = np.split(np.arange(len(q)), np.cumsum(sizes)[:-1])
    qn[groups[2]] = q[groups[2]]  # no difference at all: p = 1 both ways
    q[groups[3]], qn[groups[3]] = 0.5, 0.4  # each side constant: an exact effect
    lo, hi = causal.group_pvalues(qn, q, groups, test)
    for i, g in enumerate(groups):
        want_lo, want_hi = causal.one_sided_pvalues(qn[g], q[g], test)
        assert lo[i] == pytest.approx(want_lo[0], abs=1e-12) and hi[i] == pytest.approx(want_hi[0], abs=1e-12)
    assert lo[2] == hi[2] == 1.0 and lo[3] == 0.0
