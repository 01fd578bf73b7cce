"""The α explorer: driven programmatically (no browser), outputs follow the controls, cache == fresh run."""
from __future__ import annotations

import pytest

import cswap_nb as cs
from cswap_nb.widgets import Interrupted, alpha_explorer

COLS = ["layer", "unit", "label", "pruned"]


@pytest.fixture(scope="module")
def explorer():
    ex = alpha_explorer()
    ex.controls["samples_per_class"].value = 6
    return ex


def test_controls_are_scriptable(explorer):
    assert set(explorer.controls) == {"alpha", "inference", "order", "test", "samples_per_class", "model"}
    assert explorer.controls["alpha"].continuous_update is False
    assert "resnet18-digits" in explorer.controls["model"].options


def test_outputs_follow_alpha_and_cache_equals_fresh_run(explorer):
    model, data = cs.zoo.load("resnet18-digits")
    explorer.controls["alpha"].value = 0.05
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
    assert len(explorer.history) == 2 and "α = 0.5" in explorer.status.value
    # the cached re-run gives exactly the decisions of a fresh, uncached run
    explorer.controls["alpha"].value = 0.05
    misses_before = explorer.cache().misses
    again = explorer.run()
    assert explorer.cache().misses == misses_before  # nothing recomputed
    fresh = cs.prune(model, data.calib, alpha=0.05, samples_per_class=6, progress=False)
    assert again.labels[COLS].equals(fresh.labels[COLS])
    assert again.labels[COLS].equals(first.labels[COLS])


def test_other_controls_change_the_result(explorer):
    explorer.controls["alpha"].value = 0.05
    explorer.controls["inference"].value = "general"
    general = explorer.run()
    explorer.controls["inference"].value = "per-class"
    assert general.config["inference"] == "general"
    assert general.summary()["counts"]["critical"] <= explorer.history[0]["counts"]["critical"]


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
