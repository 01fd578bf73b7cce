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


def test_readme_option_table_is_generated_from_the_config():
    """The README's table of the options is the one the config's fields give (name, default, help), so a
    changed default or help text cannot leave the README behind."""
    from cswap_nb.core.config import options_table

    text = (ROOT / "README.md").read_text()
    assert options_table() in text, "README.md's option table differs from core.config.options_table()"


def test_method_md_table_gives_the_config_defaults_and_every_option():
    """METHOD.md §7's rationale table names every option with the config's default."""
    text = (ROOT / "cswap_nb" / "METHOD.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)`", text, flags=re.M))
    for f in dataclasses.fields(CSwapConfig):
        assert f.name in rows, f"METHOD.md §7 has no row for {f.name}"
        shown = rows[f.name].strip('"')
        assert shown == ("None" if f.default is None else str(f.default)), (f.name, shown)


def test_the_docs_of_prune_the_session_and_the_config_come_from_one_place():
    """prune and PruneSession show the same Parameters section; the config's docstring documents every field
    with its allowed values and default; the evaluation option's help names the number of classes the loop
    really scores first."""
    import cswap_nb as cs
    from cswap_nb.pruning.descent import ClassByClass
    from cswap_nb.pruning.session import SESSION_PARAMETERS, PruneSession

    flat = " ".join(SESSION_PARAMETERS.split())
    assert flat in " ".join(cs.prune.__doc__.split()) and flat in " ".join(PruneSession.__doc__.split())
    for f in dataclasses.fields(CSwapConfig):
        assert f"``{f.name}`` ({f.default!r})" in flat, f.name
        choices = f.metadata["choices"]
        head = f"{f.name} : " + ("{" + ", ".join(f'"{c}"' for c in choices) + "}" if choices else "")
        assert head in CSwapConfig.__doc__ and f"default {f.default!r}" in CSwapConfig.__doc__, f.name
    words = {1: "one", 2: "two", 3: "three", 4: "four"}
    assert f"on the {words[ClassByClass.first]} classes" in option("evaluation").metadata["help"]
