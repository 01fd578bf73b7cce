"""CSwapConfig: the one definition of every option (names, defaults, allowed values)."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from cswap_nb.core.config import OPTION_NAMES, SCORE_OPTIONS, CSwapConfig, make_config, option

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_immutability():
    cfg = CSwapConfig()
    assert (cfg.alpha, cfg.samples_per_class, cfg.inference, cfg.test) == (0.05, 20, "per-class", "welch")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.alpha = 0.1
    assert make_config(cfg, alpha=0.1).alpha == 0.1 and cfg.alpha == 0.05
    assert CSwapConfig(samples_per_class=np.int64(7)).samples_per_class == 7  # integer-like values accepted
    assert set(SCORE_OPTIONS) == set(OPTION_NAMES) - {"alpha", "test", "engine", "correction", "max_drop", "evaluation",
                                                              "compaction"}


@pytest.mark.parametrize("kwargs,error,match", [
    ({"alpha": 0}, ValueError, "alpha must be a number strictly between 0 and 1"),
    ({"alpha": True}, ValueError, "alpha must be"),
    ({"inference": "all"}, ValueError, r"inference must be one of \['per-class', 'general'\]"),
    ({"scope": "everything"}, ValueError, "scope must be one of"),
    ({"samples_per_class": 2.5}, TypeError, "samples_per_class must be an integer or None"),
    ({"samples_per_class": True}, TypeError, "samples_per_class must be an integer or None"),
    ({"group_size": 0}, ValueError, "group_size must be a positive integer"),
    ({"correction": "bonferroni"}, ValueError, r"correction must be one of \['none', 'holm', 'bh'\]"),
    ({"max_drop": -1.0}, ValueError, "max_drop must be a number of metric points >= 0"),
    ({"max_drop": "1"}, ValueError, "max_drop must be"),
])
def test_bad_values_are_refused_when_the_config_is_made(kwargs, error, match):
    with pytest.raises(error, match=match):
        CSwapConfig(**kwargs)


def test_unknown_option_lists_the_options():
    with pytest.raises(TypeError, match="unknown option.*'k'.*alpha, samples_per_class"):
        make_config(k=5)
    with pytest.raises(ValueError, match="unknown option 'k'"):
        option("k")


def test_readme_option_table_is_the_config():
    """The README's table lists every option with the config's default (so it cannot drift)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("### Method options"):]
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", table, flags=re.M))
    assert set(rows) == set(OPTION_NAMES)
    for name, shown in rows.items():
        assert shown == str(getattr(CSwapConfig(), name)), name


def test_prune_documents_every_option_with_its_default():
    """prune's docstring lists the options from CSwapConfig itself, so a new option cannot be left out."""
    import dataclasses

    import cswap_nb as cs
    from cswap_nb.core.config import CSwapConfig

    doc = " ".join(cs.prune.__doc__.split())
    for f in dataclasses.fields(CSwapConfig):
        assert f"``{f.name}`` ({f.default!r})" in doc, f.name
