"""The α explorer: driven programmatically (no browser), outputs follow the controls, cache == fresh run."""
from __future__ import annotations

import math
import time

import pytest

import cswap_nb as cs
from cswap_nb.ui.widgets import Interrupted, alpha_explorer

COLS = ["layer", "unit", "label", "pruned"]


@pytest.fixture(scope="module")
def explorer():
    ex = alpha_explorer()
    assert ex.controls["model"].value == "resnet18-fashion"  # the real-image checkpoint by default
    ex.controls["model"].value = "resnet18-digits"  # the tiny one keeps these tests quick
    ex.controls["samples_per_class"].value = 6
    return ex


def test_controls_are_scriptable(explorer):
    assert set(explorer.controls) == {"alpha", "inference", "order", "test", "samples_per_class", "model", "reference",
                                      "correction"}
    assert explorer.controls["reference"].options == ("dense", "current")
    assert explorer.controls["correction"].value == "none" and "holm" in explorer.controls["correction"].options
    assert explorer.controls["alpha"].continuous_update is False
    assert "resnet18-digits" in explorer.controls["model"].options


def test_outputs_follow_alpha_and_cache_equals_fresh_run(explorer, zoo_load):
    model, data = zoo_load("resnet18-digits")
    explorer.controls["alpha"].value = 0.05
    runs_before = len(explorer.history)  # the module's explorer may have run before this test
    first = explorer.run()
    html_first = explorer.counts.value
    explorer.controls["alpha"].value = 0.5
    second = explorer.run()
    assert explorer.last_result is second
    # a larger alpha flags at least as many units critical; on this model many more
    assert second.summary()["counts"]["critical"] > first.summary()["counts"]["critical"]
    assert second.params_removed_pct < first.params_removed_pct
    assert explorer.counts.value != html_first
    assert f"{second.summary()['counts']['critical']}</b>" in explorer.counts.value
    assert len(explorer.history) == runs_before + 2 and "α = 0.5" in explorer.status.value
    # the cached re-run gives exactly the decisions of a fresh, uncached run
    explorer.controls["alpha"].value = 0.05
    explorer._results.clear()  # forget the finished runs: the re-run replays the score cache
    misses_before = explorer.cache().misses
    again = explorer.run()
    assert explorer.cache().misses == misses_before  # nothing recomputed
    fresh = cs.prune(model, data.calib, alpha=0.05, samples_per_class=6, progress=False)
    assert again.labels[COLS].equals(fresh.labels[COLS])
    assert again.labels[COLS].equals(first.labels[COLS])


def test_other_controls_change_the_result(explorer):
    explorer.controls["alpha"].value = 0.05
    per_class = explorer.run()  # its own reference run: no state left by another test is read
    explorer.controls["inference"].value = "general"
    general = explorer.run()
    explorer.controls["inference"].value = "per-class"
    assert general.config["inference"] == "general" and per_class.config["inference"] == "per-class"
    assert general.summary()["counts"]["critical"] <= per_class.summary()["counts"]["critical"]


def test_reference_and_correction_controls_run_what_prune_runs_and_runs_can_be_cleared(explorer, zoo_load):
    """The reference and correction controls reach the run: its labels are those of cs.prune with the same
    options on the same calibration draw. Clearing the runs empties the figure's history, not the cache."""
    from cswap_nb.ui.widgets import evaluation_split

    model, data = zoo_load("resnet18-digits")
    explorer.controls["alpha"].value = 0.05
    explorer.controls["reference"].value = "current"
    explorer.controls["correction"].value = "holm"
    try:
        res = explorer.run()
    finally:
        explorer.controls["reference"].value = "dense"
        explorer.controls["correction"].value = "none"
    assert res.config["reference"] == "current" and res.config["correction"] == "holm"
    options = {k: v for k, v in res.config.items()}
    fresh = cs.prune(model, data.calib, progress=False, eval_data=evaluation_split(data)[1], **options)
    assert res.labels[["layer", "unit", "label", "pruned"]].equals(fresh.labels[["layer", "unit", "label", "pruned"]])
    cache = explorer.cache()
    assert explorer.history
    explorer.clear_history()
    assert explorer.history == [] and explorer.last_figure is None and "cleared" in explorer.status.value
    assert explorer.cache() is cache and explorer.last_result is res


def test_stop_interrupts_and_leaves_no_result(explorer):
    explorer.controls["samples_per_class"].value = 7  # a new cache: real work to interrupt
    last = explorer.last_result
    explorer._stop.set()

    def stop_at_once(*_):
        explorer._stop.set()

    explorer.progress.observe(stop_at_once, names="value")
    with pytest.raises(Interrupted):
        explorer.run()
    explorer.progress.unobserve(stop_at_once, names="value")
    assert explorer.last_result is last
    assert "stopped" in explorer.status.value


def test_own_model_needs_both_model_and_data():
    with pytest.raises(ValueError, match="give both model and data"):
        alpha_explorer(model=cs.models.resnet_digits())


def test_every_score_option_has_its_own_cache(explorer):
    base = explorer.cache()
    changes = {"samples_per_class": 9, "order": "random", "inference": "general", "reference": "current"}
    for name, value in changes.items():
        old = explorer.controls[name].value
        explorer.controls[name].value = value
        assert explorer.cache() is not base, f"changing {name} must not reuse the scores"
        explorer.controls[name].value = old
    for name, value in {"score": "logit", "seed": 1, "scope": "all", "group_size": 2}.items():
        old = explorer.settings[name]
        explorer.settings[name] = value
        assert explorer.cache() is not base, f"changing {name} must not reuse the scores"
        explorer.settings[name] = old
    assert explorer.cache() is base
    assert set(explorer.SCORE_OPTIONS) <= set(explorer.values())
    # the level, the test and the correction only change decisions: the same scores serve them
    explorer.controls["alpha"].value = 0.2
    explorer.controls["test"].value = "ztest"
    explorer.controls["correction"].value = "holm"
    assert explorer.cache() is base
    explorer.controls["test"].value = "welch"
    explorer.controls["correction"].value = "none"


def test_figures_are_drawn_without_pyplot_and_handed_to_the_output(explorer):
    import matplotlib.pyplot as plt

    plt.close("all")
    explorer.controls["alpha"].value = 0.05
    explorer.run()
    assert plt.get_fignums() == []  # no global pyplot figure was made
    fig = explorer.last_figure
    assert fig is not None and len(fig.axes) >= 2
    (out,) = explorer.figure_out.outputs
    assert out["output_type"] == "display_data" and out["data"]["image/png"]
    assert "resnet18-digits" in fig.axes[0].get_title()


def test_controls_are_generated_from_the_config(explorer):
    from cswap_nb.core.config import CSwapConfig, option
    from cswap_nb.ui.widgets import CONTROLS

    defaults = CSwapConfig()
    for name in CONTROLS:
        control, f = explorer.controls[name], option(name)
        assert f.default == getattr(defaults, name)
        if f.metadata["choices"] is not None:
            assert tuple(control.options) == tuple(f.metadata["choices"])
    fresh = alpha_explorer()
    assert {n: fresh.controls[n].value for n in CONTROLS} == {n: getattr(defaults, n) for n in CONTROLS}
    assert set(fresh.values()) >= set(defaults.as_dict())


def test_the_pool_and_the_dense_metric_are_computed_once_and_match_a_fresh_run(explorer, zoo_load):
    """The explorer predicts the calibration pool once per model and keeps the dense model's metric; a run
    still gets exactly prune's calibration set, and its metrics are those of its own models."""
    from cswap_nb.ui.widgets import evaluation_split

    model, data = zoo_load("resnet18-digits")
    explorer.controls["alpha"].value = 0.01
    res = explorer.run()
    assert "resnet18-digits" in explorer._draws and "resnet18-digits" in explorer._dense
    from cswap_nb.core.config import OPTION_NAMES

    options = {k: explorer.values()[k] for k in OPTION_NAMES}  # whatever the controls hold now
    fresh = cs.prune(model, data.calib, progress=False, **options)
    assert res.calib_samples == fresh.calib_samples
    assert res.labels[COLS].equals(fresh.labels[COLS])
    _, held_out = evaluation_split(data)
    assert res.metric_before == cs.evaluate(model, held_out)
    assert res.metric_after == cs.evaluate(res.model, held_out)


def test_a_run_whose_scores_are_all_cached_builds_no_engine_and_decides_the_same(explorer, monkeypatch):
    from cswap_nb.pruning.session import PruneSession

    explorer.controls["alpha"].value = 0.05
    first = explorer.run()
    explorer._results.clear()  # forget the finished runs: the next one replays the score cache
    cache = explorer.cache()
    misses = cache.misses

    def no_engine(self):
        raise AssertionError("a run whose scores are all cached built an engine")

    monkeypatch.setattr(PruneSession, "build_engine", no_engine)
    again = explorer.run()
    assert cache.misses == misses and again is not first
    assert again.engine["forward_passes"] == 0  # no engine was built: every score came from the cache
    assert again.engine["path"] == first.engine["path"] and again.engine["name"] == first.engine["name"]
    assert again.labels[COLS].equals(first.labels[COLS])
    assert again.metric_after == first.metric_after and again.params_after == first.params_after


def test_precomputed_alphas_answer_with_the_run_prune_gives(explorer, zoo_load):
    from cswap_nb.ui.widgets import evaluation_split

    model, data = zoo_load("resnet18-digits")
    explorer.controls["alpha"].value = 0.05
    explorer.run()
    explorer.prefetch([0.3, 0.005], wait=True)
    assert "precomputed 2 of 2" in explorer.prefetch_status.value
    cache = explorer.cache()
    for alpha in (0.3, 0.005):
        explorer.controls["alpha"].value = alpha
        misses = cache.misses
        res = explorer.run()
        assert cache.misses == misses and "done before" in explorer.status.value
        assert res.config["alpha"] == alpha
        fresh = cs.prune(model, data.calib, alpha=alpha, progress=False, eval_data=evaluation_split(data)[1],
                         samples_per_class=explorer.controls["samples_per_class"].value)
        assert res.labels[COLS].equals(fresh.labels[COLS])
        assert res.metric_after == pytest.approx(fresh.metric_after)
    explorer.controls["alpha"].value = 0.05


def test_a_run_stops_the_precomputation_and_keeps_what_it_computed(explorer):
    explorer.controls["alpha"].value = 0.05
    explorer.run()
    cache = explorer.cache()
    stored = len(cache.store)
    alphas = [0.41, 0.0007, 0.0009]
    v = explorer.values()
    thread = explorer.prefetch(alphas)
    while len(cache.store) == stored:  # the precomputation has begun scoring
        time.sleep(0.01)
    explorer.controls["alpha"].value = 0.03
    res = explorer.run()  # the precomputation stops at its next test; the run starts once it has
    assert not thread.is_alive()
    assert res.config["alpha"] == 0.03
    done = [a for a in alphas if explorer._result_key({**v, "alpha": a}) in explorer._results]
    assert done == [] and explorer.prefetch_log == []  # it stopped inside its first run: nothing finished
    explorer.controls["alpha"].value = 0.05


def test_prefetch_alphas_are_slider_stops_coarse_to_fine(explorer):
    c = explorer.controls["alpha"]
    stops = explorer.prefetch_alphas(around=0.05, lowest=1e-3)
    exps = [math.log10(a) for a in stops]
    assert all(abs(e / c.step - round(e / c.step)) < 1e-6 for e in exps)  # on the slider's grid
    assert min(stops) == pytest.approx(1e-3) and max(stops) <= c.base ** c.max * (1 + 1e-9)
    assert len(stops) == len(set(round(e, 6) for e in exps))
    assert [round(e, 6) for e in exps[:4]] == [-1.0, -2.0, -0.3, -3.0]  # powers of ten and ~0.5, near 0.05 first
    assert all(abs(2 * e - round(2 * e)) < 1e-6 for e in exps[4:7])  # then the half-decades
    assert all(abs(e - math.log10(0.05)) > 1e-3 for e in exps)


def test_the_run_button_in_a_kernel_runs_on_its_event_loop_and_handles_stop_between_tests(explorer):
    """In a Jupyter kernel (a running event loop) the button's run goes on the loop, in the calling thread, one
    test at a time: a Stop click delivered on the loop between two tests stops it; the precomputation that
    follows a run is a task on the same loop, which the next click stops at its next test. (From a worker
    thread, PyTorch's OpenMP workers sleep between small operations: the analyses took about 1.5x as long.)"""
    import asyncio
    import threading

    explorer.controls["alpha"].value = 0.05
    k_before = explorer.controls["samples_per_class"].value
    explorer.controls["samples_per_class"].value = 5  # a new cache: real work
    threads, main = set(), threading.current_thread()

    def seen(_):
        threads.add(threading.current_thread())

    explorer.progress.observe(seen, names="value")
    loop = asyncio.new_event_loop()
    try:
        async def click_then_stop():
            explorer.run_in_background()
            for _ in range(20):  # let a few tests run, then click Stop as the kernel would deliver it
                await asyncio.sleep(0)
            assert not explorer._task.done()
            explorer.stop_button.click()
            await explorer._task

        last = explorer.last_result
        loop.run_until_complete(click_then_stop())
        assert "stopped" in explorer.status.value and explorer.last_result is last
        stopped_at = explorer.progress.value
        assert 0 < stopped_at < explorer.progress.max
        assert explorer._thread is None or not explorer._thread.is_alive()
        assert threads == {main}  # every step of the run ran in the loop's (the kernel's main) thread

        async def click():
            explorer.run_in_background()
            await explorer._task

        explorer.controls_prefetch.value = True
        loop.run_until_complete(click())
        res = explorer.last_result
        assert res is not last and res.config["alpha"] == 0.05 and res.config["samples_per_class"] == 5
        pre = explorer._prefetch_task
        assert pre is not None and not pre.done()  # the precomputation waits on the loop
        explorer.controls["alpha"].value = 0.5
        loop.run_until_complete(click())  # it ends at once, between two of its tests
        assert pre.done() and explorer.last_result.config["alpha"] == 0.5
        assert explorer.prefetch_log == []  # ended inside its first stop: nothing finished
        fresh = cs.prune(explorer._model_and_data()[0], explorer._draws["resnet18-digits"](
            cs.CSwapConfig(samples_per_class=5)), alpha=0.5, samples_per_class=5, progress=False)
        assert explorer.last_result.labels[COLS].equals(fresh.labels[COLS])
    finally:
        explorer.progress.unobserve(seen, names="value")
        explorer.stop_prefetch()  # a task of this loop ends at once
        loop.run_until_complete(asyncio.sleep(0))  # let a cancelled task finish
        loop.close()
        explorer.controls["samples_per_class"].value = k_before
        explorer.controls["alpha"].value = 0.05
