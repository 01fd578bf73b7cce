"""Search strategies: greedy vs rank-and-prune, exact cost counters, parameter targets, compare."""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch

import cswap_nb as cs
from cswap_nb.ui.cli import main
from cswap_nb.experiments.comparison import SAME_COUNTS, SAME_PARAMS, compare_methods
from cswap_nb.data import Dataset, Split
from cswap_nb.zoo.training import Recipe, fit


@pytest.fixture(scope="module")
def toy():
    """4 Gaussian classes in 10-D, an MLP 10-24-16-4 trained in a second; train/test splits."""
    g = torch.Generator().manual_seed(0)
    centres = 2.0 * torch.randn(4, 10, generator=g)
    y = torch.arange(4).repeat(150)
    x = centres[y] + 1.2 * torch.randn(len(y), 10, generator=g)
    torch.manual_seed(0)
    model = cs.models.mlp(10, (24, 16), 4)
    data = Dataset("blobs", Split(x[:400], y[:400]), Split(x[400:], y[400:]), ["a", "b", "c", "d"])
    fit(model, data.train, Recipe(epochs=30, lr=0.05, shift=0, batch_size=32), progress=False)
    assert cs.evaluate(model, data.test) > 85
    return model, data


def test_greedy_is_never_worse_than_rank_and_prune(toy):
    model, data = toy
    for ratio in (0.25, 0.5, 0.75):
        kw = dict(ratio=ratio, samples_per_class=20, eval_data=data.train, progress=False)
        greedy = cs.prune(model, data.calib, "greedy", **kw)
        for crit in ("l1", "random", "taylor"):
            ranked = cs.prune(model, data.calib, crit, **kw)
            assert sum(map(len, ranked.pruned_units.values())) == sum(map(len, greedy.pruned_units.values()))
            assert greedy.metric_after >= ranked.metric_after - 1e-9, (ratio, crit)


def test_greedy_cost_counter_is_exact(toy):
    model, data = toy
    res = cs.prune(model, data.calib, "greedy", ratio=0.25, samples_per_class=5, engine="naive", progress=False)
    sizes = {layer["name"]: layer["size"] for layer in res.layers}
    removed = {name: 0 for name in sizes}
    expected = 1  # the dense reference
    for _, row in res.labels.iterrows():
        expected += sum(n - removed[name] for name, n in sizes.items() if n - removed[name] > 1)
        removed[row.layer] += 1
    assert res.engine["forward_passes"] == expected
    assert len(res.labels) == round(0.25 * sum(sizes.values()))


def test_cswap_cost_is_one_pass_per_unit_plus_reference(toy):
    model, data = toy
    res = cs.prune(model, data.calib, samples_per_class=5, engine="naive", progress=False)
    assert res.engine["forward_equivalents"] == len(res.labels) + 1


def test_params_target_is_met_within_one_unit(toy):
    model, data = toy
    dense = sum(p.numel() for p in model.parameters())
    per_unit_max = 10 + 1 + 24 + 16 + 1 + 4  # the largest parameter count one hidden unit owns
    for target in (int(dense * 0.8), int(dense * 0.5)):
        res = cs.prune(model, data.calib, "l1", params=target, samples_per_class=5, progress=False)
        assert abs(res.params_after - target) <= per_unit_max


def test_targets_are_validated(toy):
    model, data = toy
    with pytest.raises(ValueError, match="needs exactly one target"):
        cs.prune(model, data.calib, "l1", progress=False)
    with pytest.raises(ValueError, match="needs exactly one target"):
        cs.prune(model, data.calib, "l1", ratio=0.2, params=100, progress=False)
    with pytest.raises(ValueError, match="an outcome of alpha"):
        cs.prune(model, data.calib, "cswap", ratio=0.2, progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        cs.prune(model, data.calib, "magic", ratio=0.2, progress=False)


def test_compare_prunes_every_method_to_cswaps_parameter_count(toy):
    model, data = toy
    methods = ["cswap", "l1", "random", "taylor", "activation"]
    records = compare_methods(model, data, methods, samples_per_class=10, per_layer=True, ratios=[0.3], progress=False)
    ref = records[0]
    assert ref["method"] == "cswap" and ref["params_removed_pct"] > 0
    same = [r for r in records if r["budget"] == SAME_PARAMS]
    assert {r["method"] for r in same} == set(methods)
    for r in same:
        assert abs(r["params_after"] - ref["params_after"]) <= 60, r["method"]
    counts = [r for r in records if r["budget"] == SAME_COUNTS]
    assert {r["method"] for r in counts} == set(methods) - {"cswap"}
    for r in counts:
        assert [p["removed"] for p in r["per_layer"]] == [p["removed"] for p in ref["per_layer"]]
        assert r["params_after"] == ref["params_after"]
    assert {r["budget"] for r in records} == {SAME_PARAMS, SAME_COUNTS, "ratio=0.3"}


def test_compare_reuses_a_given_cswap_result_and_refuses_one_of_other_options(toy):
    model, data = toy
    res = cs.prune(model, data.calib, samples_per_class=10, eval_data=data.train, progress=False)
    before = res.metric_after
    fresh = compare_methods(model, data, ["cswap", "l1"], samples_per_class=10, per_layer=True, progress=False)
    reused = compare_methods(model, data, ["cswap", "l1"], samples_per_class=10, per_layer=True, progress=False, cswap=res)
    strip = ("seconds", "analysis_seconds", "engine")
    assert [{k: v for k, v in r.items() if k not in strip} for r in reused] == \
        [{k: v for k, v in r.items() if k not in strip} for r in fresh]
    assert res.metric_after == before  # measured on the test split in the records, the caller's copy untouched
    with pytest.raises(ValueError, match="alpha=0.05 \\(here 0.2\\)"):
        compare_methods(model, data, ["cswap", "l1"], samples_per_class=10, alpha=0.2, progress=False, cswap=res)
    import cswap_nb.experiments.comparison as comparison

    analysed = []  # the C-SWAP analyses compare_methods runs itself (a timing can repeat: count the calls)
    real_prune = comparison._prune

    def counting(model, calib, method="cswap", *args, **kwargs):
        analysed.append(method)
        return real_prune(model, calib, method, *args, **kwargs)

    comparison._prune = counting
    try:
        over_draws = compare_methods(model, data, ["cswap", "l1"], samples_per_class=10, seeds=[1, 0],
                                     progress=False, cswap=res)
    finally:
        comparison._prune = real_prune
    fresh_draws = compare_methods(model, data, ["cswap", "l1"], samples_per_class=10, seeds=[1, 0], progress=False)
    assert [{k: v for k, v in r.items() if k not in strip} for r in over_draws] == \
        [{k: v for k, v in r.items() if k not in strip} for r in fresh_draws]
    cswap_runs = {r["seed"]: r for r in over_draws if r["method"] == "cswap"}
    assert cswap_runs[0]["analysis_seconds"] == res.summary()["analysis_seconds"]  # seed 0 reused, seed 1 analysed
    assert analysed.count("cswap") == 1
    with pytest.raises(ValueError, match="seed 0, which is not among the seeds \\[1, 2\\]"):
        compare_methods(model, data, ["cswap", "l1"], samples_per_class=10, seeds=[1, 2], progress=False, cswap=res)
    with pytest.raises(ValueError, match="C-SWAP run"):
        l1 = cs.prune(model, data.calib, "l1", ratio=0.2, progress=False)
        compare_methods(model, data, ["cswap", "l1"], samples_per_class=10, progress=False, cswap=l1)


def test_compare_cli_with_cswap_alone_over_draws_reports_every_alpha(tmp_path, capsys):
    js = tmp_path / "a.json"
    assert main(["compare", "--model", "resnet18-digits", "--methods", "cswap", "--samples-per-class", "3",
                 "--seeds", "2", "--alphas", "0.2", "--json", str(js), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "alpha=0.2 (mean ± sd over 2 calibration draws)" in out and "no verdict" in out
    records = json.loads(js.read_text())
    assert sorted((r["budget"], r["seed"]) for r in records) == [("alpha=0.2", 0), ("alpha=0.2", 1),
                                                                  (SAME_PARAMS, 0), (SAME_PARAMS, 1)]


def test_compare_cli_over_draws_reports_ratio_points_without_pairing_them(capsys):
    assert main(["compare", "--model", "resnet18-digits", "--methods", "cswap,l1", "--samples-per-class", "3",
                 "--seeds", "2", "--grid", "0.5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ratio=0.5 (mean ± sd over 2 calibration draws)" in out
    assert re.search(r"cswap (beats|loses to|within the spread of) l1 \(", out)  # the same-params verdict


def test_compare_cli_writes_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "c.json", tmp_path / "c.png"
    assert main(["compare", "--model", "resnet18-digits", "--methods", "cswap,l1,random", "--samples-per-class",
                 "5", "--json", str(js), "--plot", str(png), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "dense model" in out
    records = json.loads(js.read_text())
    assert [r["method"] for r in records] == ["cswap", "l1", "random"]
    assert all(abs(r["params_after"] - records[0]["params_after"]) <= 2 * 128 * 9 * 2 for r in records)
    assert png.stat().st_size > 10_000
    assert main(["compare", "--model", "resnet18-digits", "--methods", "cswap,nope"]) == 2


def test_the_budget_search_finds_what_bisection_finds_with_fewer_counts_on_a_near_linear_count():
    import random

    from cswap_nb.pruning.descent import _first_at_most

    def bisect(count, target, n):
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if count(mid) > target else (lo, mid)
        return lo

    rng = random.Random(0)
    for _ in range(500):  # any non-increasing count: the same answer, including no or every cut reaching it
        n = rng.randint(1, 400)
        values = [10_000]
        for _ in range(n):
            values.append(values[-1] - rng.choice([0, 0, 1, 7, 60]))
        target = rng.randint(values[-1] - 5, values[0] + 5)
        assert _first_at_most(values.__getitem__, target, n) == bisect(values.__getitem__, target, n)
    calls = []
    params = [1_000_000 - 431 * k - (k * k) // 50 for k in range(1889)]  # a parameter count along a global cut

    def counted(k):
        calls.append(k)
        return params[k]

    assert _first_at_most(counted, 600_000, 1888) == bisect(params.__getitem__, 600_000, 1888)
    assert len(calls) <= 7  # bisection: 11 counts


def test_predicted_harm_ranks_units_and_classes_as_real_removals_do(zoo_model, zoo_load):
    """The first-order estimate that orders the classes scored first (core/foresight.py) must rank each
    (unit, class) pair as removing the unit really lowers that class's scores, in units of the class's spread:
    a flipped sign or a unit read from the wrong channel would fail. Where the network cannot be
    differentiated from its input, it gives no estimate (the p-values then order the classes alone)."""
    from scipy.stats import spearmanr

    from cswap_nb.core.causal import true_class_scores
    from cswap_nb.core.foresight import predicted_harm
    from cswap_nb.pruning.session import PruneSession

    s = PruneSession(zoo_model, zoo_load("resnet18-digits")[1].calib, samples_per_class=10, progress=False)
    classes = sorted(set(s.y.tolist()))
    harm = predicted_harm(s.work, s.layers, s.x, s.y, classes, "prob")
    with torch.inference_mode():
        q = true_class_scores(s.work(s.x), s.y, "prob")
    for layer in s.layers[1::3]:
        predicted = harm[layer.name]
        assert predicted.shape == (layer.size, len(classes))
        real = np.zeros(predicted.shape)
        for u in range(layer.size):
            s.masker.set(layer.name, [u], True)
            with torch.inference_mode():
                qn = true_class_scores(s.work(s.x), s.y, "prob")
            s.masker.set(layer.name, [u], False)
            for i, c in enumerate(classes):
                mine = s.y == c
                real[u, i] = float((q[mine] - qn[mine]).mean() / (q[mine].std() + 1e-6))
        assert spearmanr(predicted.ravel(), real.ravel()).statistic > 0.8, layer.name  # measured 0.95-0.99
        # within a unit, across classes: the class it is expected to hurt most is among the two it hurts most
        strong = np.argsort(-real.max(1))[: layer.size // 4]
        hits = [int(np.argmax(predicted[u])) in np.argsort(-real[u])[:2] for u in strong]
        assert np.mean(hits) >= 0.8, layer.name  # measured 1.0; chance 0.2

    tester = cs.pruning.descent.ClassByClass(s.build_engine(), s.x, s.y, s.config)
    assert tester.harm is not None  # asked of the engine as a run asks for it

    frozen = copy.deepcopy(s.work)
    forward = frozen.forward

    def without_grad(x):
        with torch.no_grad():
            return forward(x)

    frozen.forward = without_grad
    assert predicted_harm(frozen, s.layers, s.x, s.y, classes, "prob") is None
