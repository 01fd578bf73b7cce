"""Comparisons over calibration draws: spread, and paired verdicts that only call a win beyond the spread."""
from __future__ import annotations

import math

import pytest

from cswap_nb.experiments.comparison import SAME_COUNTS, SAME_PARAMS, spread, spread_table, verdict_lines, verdicts


def _records(table: dict[str, list[float]], budget: str = SAME_PARAMS) -> list[dict]:
    out = []
    for method, metrics in table.items():
        for seed, m in enumerate(metrics):
            out.append({"method": method, "budget": SAME_PARAMS if method == "cswap" else budget, "seed": seed,
                        "metric_after": m, "metric_before": 92.0, "params_removed_pct": 40.0 + seed,
                        "macs_removed_pct": 20.0, "metric_name": "top1_accuracy_pct", "model": "m"})
    return out


def test_verdicts_pair_the_draws_and_need_a_difference_beyond_the_spread():
    recs = _records({"cswap": [90.0, 88.0, 91.0],
                     "clear": [85.0, 83.1, 86.2],   # 5 points below on every draw: beaten
                     "noisy": [91.0, 86.0, 90.5],   # above on one draw, below on two: within the spread
                     "better": [90.5, 88.6, 91.4],  # slightly above on every draw, consistently: C-SWAP loses
                     "close": [89.9, 88.2, 90.9]})  # tiny differences of both signs: within
    v = verdicts(recs).set_index("method")
    assert v.loc["clear", "verdict"] == "beats" and v.loc["better", "verdict"] == "loses to"
    assert v.loc["noisy", "verdict"] == v.loc["close", "verdict"] == "within the spread of"
    assert v.loc["clear", "mean_diff"] == pytest.approx(4.9, abs=1e-9)
    assert v.loc["clear", "n"] == 3 and "cswap beats clear" in v.loc["clear", "sentence"]


def test_one_draw_gives_no_verdict_and_no_sd():
    recs = _records({"cswap": [90.0], "l1": [80.0]})
    assert verdicts(recs).verdict.tolist() == [None]
    s = spread(recs)
    assert math.isnan(s[s.method == "l1"].metric_sd.iloc[0])
    assert "80.00" in spread_table(recs)


def test_per_layer_counts_compare_with_cswaps_own_runs():
    recs = _records({"cswap": [90.0, 89.0], "l1": [70.0, 71.0]}, budget=SAME_COUNTS)
    v = verdicts(recs, SAME_COUNTS)
    assert v.method.tolist() == ["l1"] and v.verdict.tolist() == ["beats"]
    assert "cswap" in spread_table(recs, SAME_COUNTS)
    with pytest.raises(ValueError, match="no 'cswap' records at budget 'ratio=0.5'"):
        verdicts(recs, "ratio=0.5")


def test_cswap_alone_has_no_verdict_and_no_error():
    recs = _records({"cswap": [90.0, 89.0, 91.0]})
    v = verdicts(recs)
    assert v.empty and "sentence" in v.columns
    assert verdict_lines(recs) == "(no other method at this budget: no verdict)"
