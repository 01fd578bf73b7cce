"""Variants of the causal test and the loop (issue "when does C-SWAP win"): the correction for
testing several classes, the log-probability score, and the ``max_drop`` guard on a validation split.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import cswap_nb as cs
from cswap_nb.core import causal
from cswap_nb.core.causal import CORRECTIONS, CRITICAL, NEUTRAL, adjust_pvalues
from cswap_nb.core.metrics import evaluate

from test_causal import CRIT, DEAD, DET, planted_data, planted_model

pytestmark = pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")


# ------------------------------------------------------------------ the correction


def test_adjust_pvalues_follow_their_definitions():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.random(10) ** 3
        assert np.array_equal(adjust_pvalues(p, "none"), p)
        holm = adjust_pvalues(p, "holm")
        # Holm, written from its definition: max over j <= rank(i) of (m - j + 1) p_(j), capped at 1
        order = np.sort(p)
        direct = np.array([min(1.0, max((10 - j) * order[j] for j in range(int(np.sum(order <= v))))) for v in p])
        np.testing.assert_allclose(holm, direct)
        np.testing.assert_allclose(adjust_pvalues(p, "bh"), stats.false_discovery_control(p))
        for name in ("holm", "bh"):
            adj = adjust_pvalues(p, name)
            assert np.all(adj >= p - 1e-15) and np.all(adj <= 1.0)
            assert adj[np.argmin(p)] == adj.min()  # the class with the smallest p-value stays the worst
        # the decision "some class rejects at alpha": Holm's is Bonferroni's, BH's is Simes'
        assert (holm.min() < 0.05) == (p.min() * 10 < 0.05)
        simes = np.min(np.sort(p) * 10 / np.arange(1, 11))
        assert (adjust_pvalues(p, "bh").min() < 0.05) == (simes < 0.05)
    assert np.array_equal(adjust_pvalues(np.array([0.2]), "holm"), [0.2])
    with pytest.raises(ValueError, match="correction must be one of"):
        adjust_pvalues(np.array([0.1, 0.2]), "sidak")


def _null_units(correction: str, units: int = 400, classes: int = 10, k: int = 20, alpha: float = 0.05) -> float:
    """Share of harmless units (scores with and without them drawn from one distribution) flagged critical."""
    rng = np.random.default_rng(1)
    y = torch.arange(classes).repeat_interleave(k)
    flagged = 0
    for _ in range(units):
        q_ref = torch.from_numpy(rng.normal(0.8, 0.05, classes * k))
        q_removed = torch.from_numpy(rng.normal(0.8, 0.05, classes * k))
        flagged += causal.decide_unit(q_removed, q_ref, y, alpha, correction=correction).label == CRITICAL
    return flagged / units


def test_without_correction_harmless_units_are_flagged_at_the_family_rate():
    """1 - (1 - 0.05)**10 = 40% of harmless units are critical without a correction; Holm and BH
    bring it back to about alpha."""
    none = _null_units("none")
    assert 0.30 < none < 0.50, none
    for name in ("holm", "bh"):
        rate = _null_units(name)
        assert rate < 0.09, (name, rate)
    assert _null_units("holm") <= none / 4


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_a_unit_that_hurts_one_class_only_is_still_caught(correction):
    x, y = planted_data()
    res = cs.prune(planted_model(), (x, y), samples_per_class=30, correction=correction, progress=False)
    labels = res.labels.set_index("unit")
    assert labels.loc[CRIT, "label"] == CRITICAL and labels.loc[CRIT, "worst_class"] == 1
    assert labels.loc[CRIT, "p_value"] < 1e-3
    assert labels.loc[DEAD, "label"] == NEUTRAL
    assert res.config["correction"] == correction


def test_correction_has_no_effect_on_general_inference():
    rng = np.random.default_rng(2)
    q_ref = torch.from_numpy(rng.normal(0.8, 0.05, 60))
    q_removed = q_ref - 0.01 + torch.from_numpy(rng.normal(0, 0.02, 60))
    y = torch.arange(3).repeat_interleave(20)
    verdicts = [causal.decide_unit(q_removed, q_ref, y, 0.05, inference="general", correction=c) for c in CORRECTIONS]
    assert len({(v.label, v.p_lower, v.p_raise) for v in verdicts}) == 1


# ------------------------------------------------------------------ log-probability score


def test_logprob_score_is_the_log_of_prob():
    logits = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    torch.testing.assert_close(causal.true_class_scores(logits, y, "logprob"),
                               causal.true_class_scores(logits, y, "prob").log())


def test_logprob_finds_the_planted_units():
    x, y = planted_data()
    labels = cs.prune(planted_model(), (x, y), samples_per_class=30, score="logprob",
                      progress=False).labels.set_index("unit").label
    assert (labels[DEAD], labels[CRIT], labels[DET]) == (NEUTRAL, CRITICAL, "detrimental")


# ------------------------------------------------------------------ the max_drop guard

M = 4  # redundant hidden units per class


def redundant_model() -> nn.Module:
    """3 classes; M hidden units per class c, each relu(x_c - 1.5) into logit c with weight 1.

    One unit is a small share of the evidence, so with 2 calibration samples per class no single
    test rejects and every unit but the last of the layer is removed: a cumulative loss that no
    test sees. Removing all M units of class 1 (or 2) ties its logit with the others at 0
    (argmax then says class 0): its samples are lost.
    """
    H = 3 * M
    lin1, lin2 = nn.Linear(4, H), nn.Linear(H, 3)
    with torch.no_grad():
        lin1.weight.zero_()
        lin2.weight.zero_()
        lin2.bias.zero_()
        for unit in range(H):
            c = unit // M
            lin1.weight[unit, c], lin1.bias[unit], lin2.weight[c, unit] = 1.0, -1.5, 1.0
    return nn.Sequential(lin1, nn.ReLU(), lin2).eval()


def _guarded(max_drop, **options):
    x, y = planted_data(seed=0)
    val = planted_data(seed=1)
    model = redundant_model()
    res = cs.prune(model, (x, y), samples_per_class=2, alpha=1e-6, max_drop=max_drop, guard_data=val,
                   progress=False, **options)
    return model, val, res


def test_without_the_guard_the_loop_removes_too_much():
    x, y = planted_data(seed=0)
    val = planted_data(seed=1)
    model = redundant_model()
    res = cs.prune(model, (x, y), samples_per_class=2, alpha=1e-6, progress=False)
    assert (res.labels.label != CRITICAL).all()
    assert evaluate(model, val) == 100.0
    assert evaluate(res.model, val) < 90.0  # a class was emptied
    assert res.guard is None and res.summary()["guard"] is None


def test_the_guard_stops_at_the_bound_with_the_longest_prefix():
    model, val, res = _guarded(10.0)
    g = res.guard
    assert g["stopped"] and g["stopped_in_layer"] == "0" and g["max_drop"] == 10.0
    assert g["metric_dense"] == 100.0
    after = evaluate(res.model, val)
    assert after >= 100.0 - 10.0 and after == pytest.approx(g["metric_last_check"])
    # the longest prefix of the layer's removals within the bound: units 0..6 (class 0's four do
    # not cost accuracy, ties go to class 0; removing unit 7, class 1's last, loses class 1)
    assert res.pruned_units == {"0": list(range(7))}
    restored = res.labels[res.labels.note.str.contains("restored by the guard")]
    assert restored.unit.tolist() == [7, 8, 9, 10] and not restored.pruned.any()
    assert g["restored_units"] == 4
    assert g["checks"] == 1 + int(np.ceil(np.log2(11)))  # one check after the layer, then a binary search
    # one more removal from the visiting order would break the bound
    one_more = cs.core.surgery.remove_units(redundant_model(), val[0][:1], {"0": list(range(8))})
    assert evaluate(one_more, val) < 90.0
    assert res.summary()["guard"] == g


def test_a_guard_within_bounds_changes_nothing():
    _, _, loose = _guarded(100.0)
    x, y = planted_data(seed=0)
    plain = cs.prune(redundant_model(), (x, y), samples_per_class=2, alpha=1e-6, progress=False)
    assert loose.pruned_units == plain.pruned_units
    assert not loose.guard["stopped"] and loose.guard["checks"] == 1 and loose.guard["unvisited_units"] == 0


def test_the_guard_keeps_every_unit_it_did_not_visit(zoo_model, digits):
    """On a ResNet the guard stops after a layer; the layers after it in the visiting order are kept whole."""
    val = (digits.test.x[:200], digits.test.y[:200])
    res = cs.prune(zoo_model, digits.calib, samples_per_class=2, alpha=1e-6, max_drop=2.0, guard_data=val,
                   progress=False)
    g = res.guard
    assert g["stopped"] and g["unvisited_units"] > 0
    dense = evaluate(zoo_model, val)
    assert evaluate(res.model, val) >= dense - 2.0
    visited = list(dict.fromkeys(res.labels.layer))
    assert visited[-1] == g["stopped_in_layer"]
    sizes = {layer["name"]: layer["size"] for layer in res.layers}
    assert g["unvisited_units"] == sum(sizes.values()) - sum(sizes[n] for n in visited)
    assert all(name in visited for name, units in res.pruned_units.items() if units)


def test_max_drop_needs_a_validation_split():
    x, y = planted_data()
    with pytest.raises(ValueError, match="max_drop=1.0 needs guard_data="):
        cs.prune(planted_model(), (x, y), max_drop=1.0, progress=False)
    # baselines ignore the guard (their size is a target)
    res = cs.prune(planted_model(), (x, y), "l1", ratio=0.2, max_drop=1.0, progress=False)
    assert res.guard is None


def test_cli_flags_for_the_new_options():
    import argparse

    from cswap_nb.ui.cli import add_arguments, from_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = from_arguments(parser.parse_args(["--correction", "holm", "--max-drop", "1.5", "--score", "logprob"]))
    assert (cfg.correction, cfg.max_drop, cfg.score) == ("holm", 1.5, "logprob")
    assert from_arguments(parser.parse_args(["--max-drop", "none"])).max_drop is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--correction", "sidak"])


# ------------------------------------------------------------------ variants, on a validation split


@pytest.fixture(scope="module")
def blobs():
    """4 Gaussian classes in 10-D, an MLP 10-24-16-4; train / val / test splits."""
    from cswap_nb.data import Dataset, Split
    from cswap_nb.zoo.training import Recipe, fit

    g = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(4, 10, generator=g)
    y = torch.arange(4).repeat(200)
    x = centres[y] + 1.2 * torch.randn(len(y), 10, generator=g)
    torch.manual_seed(0)
    model = cs.models.mlp(10, (24, 16), 4)
    data = Dataset("blobs", Split(x[:400], y[:400]), Split(x[600:], y[600:]), ["a", "b", "c", "d"],
                   val=Split(x[400:600], y[400:600]))
    fit(model, data.train, Recipe(epochs=30, lr=0.05, shift=0, batch_size=32), progress=False)
    return model, data


def test_compare_variants_measures_on_the_validation_split_and_pairs_the_draws(blobs):
    from cswap_nb.experiments.comparison import compare_variants, variant_summary, variant_table

    model, data = blobs
    rows = compare_variants(model, data, ["default", "correction=holm", "max_drop=1"], seeds=[0, 1],
                            samples_per_class=10, progress=False)
    assert len(rows) == 6 and set(rows.seed) == {0, 1}
    assert (rows.metric_before == cs.evaluate(model, data.val)).all()  # the validation split, not the test split
    for r in rows.itertuples():
        assert r.margin == pytest.approx(r.metric - r.baseline_metric)
        assert abs(r.baseline_removed - r.removed) < 10  # the baseline was cut to the run's size
    guarded = rows[rows.variant == "max_drop=1"]
    assert (guarded["drop"] <= 1.0 + 1e-9).all()
    # the same draw and options give the same run: the variants differ only by their change
    again = compare_variants(model, data, ["default"], seeds=[0], samples_per_class=10, progress=False)
    assert again.removed.iloc[0] == rows[(rows.variant == "default") & (rows.seed == 0)].removed.iloc[0]
    s = variant_summary(rows).set_index("variant")
    assert s.loc["default", "n"] == 2 and "margin_vs_reference" in s.columns
    assert "correction=holm" in variant_table(variant_summary(rows))
    with pytest.raises(ValueError, match="unknown variant"):
        compare_variants(model, data, ["k=7"], progress=False)
    from cswap_nb.data import Dataset

    no_val = Dataset("blobs", data.train, data.test, data.classes)
    with pytest.raises(ValueError, match="validation split"):
        compare_variants(model, no_val, ["default"], progress=False)
