"""The options of C-SWAP, defined once: name, default, allowed values and help (cswap_nb/METHOD.md §7).

:class:`CSwapConfig` is the single source. :func:`cswap_nb.prune` and :func:`cswap_nb.experiments.compare_methods`
take one (``config=``) or its fields as keyword arguments; the command line's flags
(:func:`cswap_nb.ui.cli.add_arguments`) and the α explorer's controls (:mod:`cswap_nb.ui.widgets`) are generated from
its fields, so a default written here is the default everywhere.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import textwrap
from dataclasses import dataclass, field
from typing import Any

# the allowed values of every option with a fixed set of them (the fields below name them)
TESTS = ("welch", "ztest", "wilcoxon", "paired-t")
SCORES = ("prob", "logit", "ratio", "logprob")
INFERENCES = ("per-class", "general")
CORRECTIONS = ("none", "holm", "bh")
LAYER_ORDERS = ("output-to-input", "input-to-output")
UNIT_ORDERS = ("magnitude", "random")
REFERENCES = ("dense", "current")
SCOPES = ("internal", "all")
ENGINES = ("fast", "naive", "parts")
EVALUATIONS = ("early", "full")
COMPACTIONS = ("on", "off")


def min_samples(test: str, alpha: float) -> int:
    """Smallest number of samples per tested group for which ``test`` can reject at ``alpha``."""
    if test == "wilcoxon":
        # the exact signed-rank test's smallest one-sided p-value with n pairs is 2**-n
        return max(2, math.floor(math.log2(1.0 / alpha)) + 1)
    return 2


def _option(default, help: str, choices: tuple[str, ...] | None = None, scores: bool = True, doc: str | None = None,
            **extra) -> Any:
    """A config field. ``help``: one line, for the command line, the explorer's controls and the README's
    table; ``doc``: the longer text of the class docstring (default: ``help``); ``scores``: whether the option
    changes the calibration set or the interventional scores (a cache of scores must not be shared across
    its values)."""
    return field(default=default, metadata={"help": help, "doc": doc or help, "choices": choices, "scores": scores,
                                            **extra})


@dataclass(frozen=True)
class CSwapConfig:
    """The options of C-SWAP's causal analysis with their defaults (cswap_nb/METHOD.md §7).

    Immutable; derive variants with ``dataclasses.replace(cfg, alpha=0.01)`` or
    :func:`make_config`. Invalid values raise when the config is made. Each option's name, default, allowed
    values and help are written once, in its field below; the Parameters section is generated from them,
    as are the command line's flags, the explorer's controls and the README's table.
    """

    alpha: float = _option(
        0.05, "level of the one-sided tests, in (0, 1); a larger alpha flags more units critical (keeps more)",
        scores=False, widget="log-slider", minimum=1e-6, maximum=0.8)
    samples_per_class: int | None = _option(
        20, "k correctly classified calibration samples per class (None: all)",
        doc="k correctly classified calibration samples per class (segmentation: images per class); None takes "
            "them all.", widget="int-slider", minimum=2, maximum=60, kind="int-or-none")
    inference: str = _option("per-class", "one test per class (critical if any class suffers) or one general test "
                                          "over all samples", INFERENCES, widget="toggle")
    test: str = _option("welch", "the one-sided test: welch, ztest (unpaired), wilcoxon, paired-t (paired tests flag "
                                 "far more units critical)", TESTS, scores=False, widget="dropdown")
    score: str = _option("prob", "what is compared: the true-class probability, its logit, its ratio to the "
                                 "reference's probability, or its logarithm", SCORES)
    reference: str = _option("dense", "compare with the original model's scores or the current pruned one's",
                             REFERENCES)
    order: str = _option("magnitude", "unit visiting order in a layer: weakest L1 filter norm first, or random "
                                      "(seeded)", UNIT_ORDERS, widget="toggle")
    layer_order: str = _option("output-to-input", "layer visiting order", LAYER_ORDERS)
    scope: str = _option("internal", "internal: channels with a single producer (inside residual blocks, hidden "
                                     "MLP units, heads); all: also residual streams and other coupled groups",
                         SCOPES)
    group_size: int | None = _option(
        None, "units tested together (None: auto, groups of 4 in transformer MLP layers wider than 256 units, at "
              "most 256 tests in other dense layers over 1,024 units)",
        doc="Neuron groups (cswap_nb/METHOD.md §3): in layers with more than ``group_threshold`` units, "
            "``group_size`` consecutive units of the visiting order are tested and pruned together. None (auto) "
            "uses each layer's :attr:`~cswap_nb.core.units.UnitLayer.auto_group`: groups of "
            ":data:`~cswap_nb.core.units.AUTO_GROUP_SIZE` in transformer MLP layers wider than "
            ":data:`~cswap_nb.core.units.AUTO_GROUP_THRESHOLD` units, groups that leave at most "
            ":data:`~cswap_nb.core.units.AUTO_DENSE_TESTS` tests in other fully connected layers wider than "
            ":data:`~cswap_nb.core.units.AUTO_DENSE_THRESHOLD` units, single units elsewhere; 1 tests every unit "
            "alone.", positive=True)
    group_threshold: int = _option(0, "layers with at most this many units are tested unit by unit")
    seed: int = _option(0, "the calibration draw and the random visiting order")
    correction: str = _option(
        "none", "adjust the per-class p-values for testing several classes: none, holm (family-wise) or bh "
                "(Benjamini-Hochberg, false discovery rate)", CORRECTIONS, scores=False, widget="dropdown",
        doc="Adjustment of the per-class p-values for testing C classes at once (cswap_nb/METHOD.md §2): none "
            "(default; for calibrated, independent tests a harmless unit would be flagged critical with probability "
            "up to 1 - (1 - α)^C, the default Welch test stays far below that), Holm (family-wise error rate α) or "
            "Benjamini–Hochberg (false discovery rate α).")
    max_drop: float | None = _option(
        None, "guard: stop pruning once the metric on the validation split (guard_data) falls more than this many "
              "points below the dense model's (None: off)", scores=False, kind="float-or-none",
        doc="A guard (cswap_nb/METHOD.md §3): after each layer, the metric of the partly pruned network is measured "
            "on a validation split (``guard_data=`` of :func:`cswap_nb.prune`); once it is more than ``max_drop`` "
            "points below the dense network's, the layer's removals are undone back to the longest prefix within "
            "the bound and every unit not yet visited is kept. None: no guard (the paper's loop).")
    engine: str = _option(
        "fast", "fast: recompute only what a removal changes (torch.fx graph, cached intermediates); naive: one "
                "full pass per unit on every sample; parts: cache before the analysed part of a known family "
                "(identical decisions)", ENGINES, scores=False,
        doc="How scores are computed (:mod:`cswap_nb.engines`); identical decisions. ``\"fast\"``: the traced graph "
            "(:class:`~cswap_nb.engines.graph.GraphEngine`), else the family's parts, else full passes; "
            "``\"naive\"``: one full pass per candidate on every sample, the reference; ``\"parts\"``: the earlier "
            "engine of the family's parts only, kept for benchmarks.")
    evaluation: str = _option(
        "early", "early: score a candidate on the two classes most likely to decide it first, and on the rest "
                 "only when they do not decide it critical (exact: the same labels); full: every class for every "
                 "candidate", EVALUATIONS, scores=False,
        doc="``\"early\"``: a candidate is scored first on the two classes it most likely hurts (by recent p-values "
            "and a first-order estimate of its harm), and "
            "on every class only when they do not decide it critical (exact: the labels equal a full evaluation's; "
            "cswap_nb/METHOD.md §10); ``\"full\"``: every class is evaluated for every candidate, so every record "
            "holds all the per-class evidence. Segmentation, ``inference=\"general\"``, the ``\"naive\"`` engine and "
            "the family's parts (``\"parts\"``, or ``\"fast\"`` on a model torch.fx cannot trace) always evaluate in "
            "full; where neither the graph nor the parts apply, full passes over the classes' samples do.")
    compaction: str = _option(
        "on", "on: score a layer's candidates on a copy with the other layers' removed units sliced out (fast "
              "engine; exact, same labels); off: masked to zero at full width", COMPACTIONS, scores=False,
        doc="``\"on\"``: with ``engine=\"fast\"``, a layer with many candidates is scored on a copy of the network "
            "from which the units already removed in other layers are sliced out (exact up to float "
            "reassociation: the same labels; :mod:`cswap_nb.engines.compact`, cswap_nb/METHOD.md §10); "
            "``\"off\"``: every candidate's pass runs at the dense width, with removed units masked to zero.")

    def __post_init__(self):
        if isinstance(self.samples_per_class, numbers.Integral) and not isinstance(self.samples_per_class, bool):
            object.__setattr__(self, "samples_per_class", int(self.samples_per_class))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first option with a value it does not accept."""
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, numbers.Real) or not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"alpha must be a number strictly between 0 and 1, got {self.alpha!r}")
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}")
        k = self.samples_per_class
        if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
            raise TypeError(f"samples_per_class must be an integer or None, got {k!r}")
        d = self.max_drop
        if d is not None and (isinstance(d, bool) or not isinstance(d, numbers.Real) or not float(d) >= 0.0):
            raise ValueError(f"max_drop must be a number of metric points >= 0, or None (no guard), got {d!r}")
        if self.group_size is not None and int(self.group_size) < 1:
            raise ValueError(f"group_size must be a positive integer or None (auto), got {self.group_size!r}")

    def check_samples(self) -> int:
        """The fewest calibration samples per class the test needs at ``alpha``; raise when
        ``samples_per_class`` is below it."""
        need = min_samples(self.test, self.alpha)
        if self.samples_per_class is not None and self.samples_per_class < need:
            raise ValueError(
                f"samples_per_class={self.samples_per_class!r} is too small for the {self.test!r} test at "
                f"alpha={self.alpha}: it needs at least {need} samples per class")
        return need

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(CSwapConfig))


def _kind(f: dataclasses.Field) -> str:
    """What an option takes, for its docs: its allowed values, else its type."""
    if f.metadata["choices"] is not None:
        return "{" + ", ".join(f'"{c}"' for c in f.metadata["choices"]) + "}"
    return str(f.type).replace(" | None", " or None")


def parameters_section() -> str:
    """The numpydoc Parameters section of :class:`CSwapConfig`, from its fields."""
    lines = ["Parameters", "----------"]
    for f in dataclasses.fields(CSwapConfig):
        lines.append(f"{f.name} : {_kind(f)}, default {f.default!r}")
        lines.extend("    " + line for line in textwrap.wrap(f.metadata["doc"], 100, break_on_hyphens=False))
    return "\n".join(lines)


def options_table() -> str:
    """The README's table of the options (``| option | default | meaning |``), from the fields."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(CSwapConfig):
        default = "None" if f.default is None else str(f.default)
        rows.append(f"| `{f.name}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(rows)


if CSwapConfig.__doc__:  # None under python -OO
    CSwapConfig.__doc__ = CSwapConfig.__doc__.rstrip() + "\n\n    " + parameters_section().replace("\n", "\n    ") + "\n"
SCORE_OPTIONS = tuple(f.name for f in dataclasses.fields(CSwapConfig) if f.metadata["scores"])
"""The options that change the calibration set or the scores (alpha, the test and the engine do not)."""


def options_in_brief() -> str:
    """Every option with its default, ``name`` (default), from :class:`CSwapConfig`'s fields: the one list
    that the docstrings of :func:`cswap_nb.prune` and :class:`~cswap_nb.pruning.session.PruneSession` show."""
    return ", ".join(f"``{f.name}`` ({f.default!r})" for f in dataclasses.fields(CSwapConfig))


def option(name: str) -> dataclasses.Field:
    """The field of option ``name`` (its default and metadata)."""
    for f in dataclasses.fields(CSwapConfig):
        if f.name == name:
            return f
    raise ValueError(f"unknown option {name!r}; options: {', '.join(OPTION_NAMES)}")


def make_config(config: CSwapConfig | None = None, **options) -> CSwapConfig:
    """``config`` (default: all defaults) with the given options replaced, validated.

    Raises ``TypeError`` for a name that is not an option, listing the options.
    """
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; the options of C-SWAP are: {', '.join(OPTION_NAMES)}")
    if config is not None and not isinstance(config, CSwapConfig):
        raise TypeError(f"config must be a CSwapConfig, got {type(config).__name__}")
    return dataclasses.replace(config or CSwapConfig(), **options)
