"""Interactive α exploration (ipywidgets).

:func:`alpha_explorer` builds an :class:`AlphaExplorer`: an α slider (log scale), the
options of the causal test (k, inference, visiting order, test, the reference network and the
multiple-testing correction), a model dropdown over the shipped checkpoints, a run button
with a live, interruptible progress bar, a button that clears the runs drawn so far, and outputs updated in place (units per layer by
label, parameters/MACs removed, accuracy before/after — on the validation split where the
data has one, since α is a setting being chosen — and accuracy vs % removed with every
earlier run kept for comparison).

Re-running at another α is cheap: the interventional scores are cached by (network state,
tested unit), so the progressive descent replays every step up to the first decision that
differs without a single forward pass (see :class:`ScoreCache`). The explorer is scriptable:
``explorer.controls[name].value = ...``, ``explorer.run()``, ``explorer.last_result``.
"""
from __future__ import annotations

import math
import threading
import time

import torch
from torch import Tensor, nn

from .. import zoo
from ..pruning.api import PruneResult
from ..experiments.comparison import calibration_draws
from ..core.config import OPTION_NAMES, SCORE_OPTIONS, CSwapConfig, make_config, option
from ..pruning.descent import class_ranges
from ..experiments.effects import flips_between, label_from_pvalues, of_test
from ..engines.passes import FullEngine
from ..core.metrics import evaluate
from .plots import plot_accuracy_vs_removed, plot_layer_labels
from ..pruning.session import PruneSession

DEFAULT_MODEL = "resnet18-fashion"
CONTROLS = ("alpha", "samples_per_class", "inference", "order", "test", "reference", "correction")  # options with a control


def option_control(name: str):
    """An ipywidgets control for a :class:`~cswap_nb.core.config.CSwapConfig` option, generated from its
    field: default, allowed values (toggle buttons or a dropdown), range and help as the tooltip."""
    import ipywidgets as W

    f = option(name)
    meta, kind = f.metadata, f.metadata.get("widget")
    label = {"alpha": "α", "samples_per_class": "k / class"}.get(name, name.replace("_", " "))
    common = dict(value=f.default, description=label, tooltip=meta["help"])
    if kind == "log-slider":
        lo, hi = math.log10(meta["minimum"]), math.log10(meta["maximum"])
        return W.FloatLogSlider(base=10, min=lo, max=hi, step=0.1, continuous_update=False, readout_format=".3g",
                                **common)
    if kind == "int-slider":
        return W.IntSlider(min=meta["minimum"], max=meta["maximum"], step=1, continuous_update=False, **common)
    if kind == "toggle":
        return W.ToggleButtons(options=list(meta["choices"]), **common)
    if meta["choices"] is not None:
        return W.Dropdown(options=list(meta["choices"]), **common)
    raise ValueError(f"option {name!r} has no widget kind")


def evaluation_split(data):
    """Where the explorer measures accuracy: the validation split when the data has one (α is a
    setting to choose, and settings are chosen on validation data), else the test split."""
    val = getattr(data, "val", None)
    return ("validation", val) if val is not None else ("test", data.test)


class ScoreCache:
    """Calibration scores keyed by (network state, layer, tested units, calibration class).

    The state is the set of units already removed when a unit is tested. With the same
    model, calibration set and visiting order, two runs at different α pass through the
    same states until their first differing decision, so everything up to it is reused.
    Scores are kept class by class, so a candidate decided early (cswap_nb/METHOD.md §10) at one
    α reuses the classes it evaluated when another α needs more of them.
    """

    def __init__(self):
        self.store: dict[tuple, Tensor] = {}
        self.hits = 0
        self.misses = 0

    def wrap(self, engine: FullEngine) -> "CachedEngine":
        return CachedEngine(engine, self)


class CachedEngine:
    """A score engine whose results come from a :class:`ScoreCache` when they were computed before;
    every other attribute is the wrapped engine's."""

    def __init__(self, engine: FullEngine, cache: ScoreCache):
        self.inner, self.cache = engine, cache

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _cached(self, key: tuple, rows, compute) -> Tensor:
        """Scores of ``rows`` (sample ranges; None: every sample) from the store, else computed and
        stored range by range."""
        store = self.cache.store
        if all((*key, r) in store for r in rows):
            self.cache.hits += 1
            return torch.cat([store[(*key, r)] for r in rows])
        self.cache.misses += 1
        value = compute()
        start = 0
        for a, b in rows:
            store[(*key, (a, b))] = value[start : start + b - a]
            start += b - a
        return value

    def _key(self, score: str, layer) -> tuple:
        state = tuple((name, tuple(m.nonzero().flatten().tolist())) for name, m in self.inner.masker.removed.items())
        return (score, layer.name if layer is not None else None, state)

    def _class_rows(self, y: Tensor, rows) -> list[tuple[int, int]]:
        """``rows`` cut at class boundaries (classification), so that runs deciding at different α share
        their classes' scores."""
        out = []
        for a, b in rows:
            ranges = class_ranges(y[a:b]) if getattr(self.inner, "masks", None) is None else None
            out.extend([(a, b)] if ranges is None else sorted((a + s, a + e) for _, s, e in ranges))
        return out

    def scores(self, x: Tensor, y: Tensor, score: str, layer=None) -> Tensor:
        rows = self._class_rows(y, [(0, len(y))]) if layer is not None else [(0, len(y))]
        return self._cached(self._key(score, layer), rows, lambda: self.inner.scores(x, y, score, layer))

    def stack_rows(self, x: Tensor, y: Tensor, score: str, layer, others, rows) -> None:
        """Score ahead (the wrapped engine's :meth:`~cswap_nb.engines.graph.GraphEngine.stack_rows`) unless the
        present candidate's rows are stored: a re-run then finds the next candidates' rows stored too."""
        key = self._key(score, layer)
        if not all((*key, r) in self.cache.store for r in self._class_rows(y, rows)):
            self.inner.stack_rows(x, y, score, layer, others, rows)

    def rows_scores(self, x: Tensor, y: Tensor, score: str, layer, rows) -> Tensor:
        split = self._class_rows(y, rows)
        return self._cached(self._key(score, layer), split, lambda: self.inner.rows_scores(x, y, score, layer, rows))


class Interrupted(Exception):
    """Raised inside a run when the user presses Stop."""


class AlphaExplorer:
    """The α explorer; see the module docstring. ``display(explorer)`` shows it in a notebook."""

    def __init__(self, model: nn.Module | None = None, data=None, model_name: str | None = None):
        import ipywidgets as W

        self._given = (model, data) if model is not None else None
        names = zoo.names() if self._given is None else [model_name or "custom"]
        self.controls = {
            "model": W.Dropdown(options=names, value=DEFAULT_MODEL if DEFAULT_MODEL in names else names[0],
                                description="model", disabled=self._given is not None),
            **{name: option_control(name) for name in CONTROLS},
        }
        self.run_button = W.Button(description="run C-SWAP", button_style="primary", icon="play")
        self.stop_button = W.Button(description="stop", icon="stop", disabled=True)
        self.clear_button = W.Button(description="clear runs", icon="trash",
                                     tooltip="forget the runs drawn in the figure (the score cache stays)")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="units")
        self.status = W.HTML("")
        self.counts = W.HTML("")
        self.figure_out = W.Output()
        # options without a control, at their defaults: set them here (``explorer.settings["scope"] = "all"``)
        self.settings: dict = {k: v for k, v in CSwapConfig().as_dict().items() if k not in CONTROLS}
        self.last_figure = None  # the matplotlib Figure shown last
        self.history: list[dict] = []
        self.last_result: PruneResult | None = None
        self._caches: dict[tuple, ScoreCache] = {}
        self._loaded: dict[str, tuple] = {}
        # per model: the calibration pool predicted once (each run selects from it) and the dense metric
        self._draws: dict[str, object] = {}
        self._dense: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.run_button.on_click(lambda _: self.run_in_background())
        self.stop_button.on_click(lambda _: self._stop.set())
        self.clear_button.on_click(lambda _: self.clear_history())
        self.controls["model"].observe(lambda change: self.history.clear(), names="value")
        box = W.VBox([
            W.HBox([self.controls["model"], self.controls["test"]]),
            self.controls["alpha"], self.controls["samples_per_class"],
            self.controls["inference"], self.controls["order"],
            W.HBox([self.controls["reference"], self.controls["correction"]]),
            W.HBox([self.run_button, self.stop_button, self.clear_button, self.progress]),
            self.status, self.counts, self.figure_out,
        ])
        self.widget = box

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- state ----------------------------------------------------------------------------
    def _model_and_data(self):
        if self._given is not None:
            return self._given
        name = self.controls["model"].value
        if name not in self._loaded:
            self._loaded[name] = zoo.load(name)
        return self._loaded[name]

    def values(self) -> dict:
        """The controls' values and :attr:`settings`: every option a run uses."""
        return {**self.settings, **{name: control.value for name, control in self.controls.items()}}

    # the model and every option that changes the calibration set or the interventional scores; a cache
    # is shared only by runs that agree on all of them (alpha and the test only change decisions)
    SCORE_OPTIONS = ("model", *SCORE_OPTIONS)

    def cache(self) -> ScoreCache:
        """The score cache of the current :data:`SCORE_OPTIONS` values."""
        v = self.values()
        return self._caches.setdefault(tuple(v[k] for k in self.SCORE_OPTIONS), ScoreCache())

    # -- running --------------------------------------------------------------------------
    def run(self) -> PruneResult:
        """Run C-SWAP synchronously with the current control values and update the outputs.

        Drives a :class:`~cswap_nb.pruning.session.PruneSession` step by step: its engine is wrapped by the
        score cache, the progress bar follows the steps, and Stop ends the run between two steps.
        """
        model, data = self._model_and_data()
        v = self.values()
        cache = self.cache()
        hits0, misses0 = cache.hits, cache.misses
        self._stop.clear()
        self.progress.value = 0
        t0 = time.perf_counter()
        self.status.value = f"running at α = {v['alpha']:.3g} …"
        options = {k: v[k] for k in OPTION_NAMES}
        guard = {"guard_data": getattr(data, "val", None)} if options["max_drop"] is not None else {}
        name, (split, held_out) = str(v["model"]), evaluation_split(data)
        if name not in self._draws:  # the pool is predicted once per model, not on every run
            self._draws[name] = calibration_draws(model, data.calib)
        calib = self._draws[name](make_config(None, **options))
        session = PruneSession(model, calib, progress=False, model_name=name, **guard, **options)
        session.engine = cache.wrap(session.engine)
        self.progress.max = max(1, session.total_steps)
        for _ in session.steps():
            self.progress.value += 1
            if self._stop.is_set():
                self.status.value = "stopped: the model is unchanged; nothing was pruned"
                raise Interrupted("stopped by the user")
        res = session.finish()
        if name not in self._dense:  # the dense model's metric does not change between runs
            self._dense[name] = evaluate(model, held_out)
        res.metric_before, res.metric_after = self._dense[name], evaluate(res.model, held_out)
        seconds = time.perf_counter() - t0
        self.last_result = res
        s = res.summary()
        metric = f"{split} " + ("mIoU" if s["metric_name"] == "miou_pct" else "accuracy")
        self.history.append({**s, "budget": f"alpha={v['alpha']:.3g}", "settings": dict(v)})
        self.status.value = (f"<b>α = {v['alpha']:.3g}</b>: {s['params_removed_pct']:.1f}% of parameters and "
                             f"{s['macs_removed_pct']:.1f}% of MACs removed; {metric} {s['metric_before']:.2f}% → "
                             f"{s['metric_after']:.2f}% ({seconds:.1f} s; {cache.hits - hits0} cached tests reused, "
                             f"{cache.misses - misses0} computed)")
        self.counts.value = render_counts(s)
        self._draw(res, split)
        return res

    def clear_history(self) -> None:
        """Forget the runs drawn so far (the figure starts again with the next run); the score cache, the
        calibration pools and :attr:`last_result` stay."""
        self.history.clear()
        self.figure_out.clear_output()
        self.last_figure = None
        self.counts.value = ""
        self.status.value = "runs cleared: the next run starts a new figure"

    def run_in_background(self) -> None:
        """What the run button does: run in a thread so that Stop stays responsive."""
        if self._thread is not None and self._thread.is_alive():
            return

        def target():
            self.run_button.disabled, self.stop_button.disabled = True, False
            try:
                self.run()
            except Interrupted:
                pass
            except Exception as exc:  # shown to the user instead of lost in a thread
                self.status.value = f"<span style='color:#c53030'>error: {exc}</span>"
            finally:
                self.run_button.disabled, self.stop_button.disabled = False, True

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def _draw(self, res: PruneResult, split: str | None = None) -> None:
        """Draw on a Figure of its own (no pyplot state: runs happen in a worker thread) and hand the
        rendered PNG to the output widget explicitly (no ``with output:`` capture across threads).
        ``split`` names where the metric was measured (:func:`evaluation_split`) on the plot's axis."""
        import base64
        import io

        from matplotlib.figure import Figure

        fig = Figure(figsize=(13, 4.2), layout="constrained")
        axes = fig.subplots(1, 2)
        plot_layer_labels(res, ax=axes[0])
        records = [{**h, "method": "cswap"} for h in self.history]
        plot_accuracy_vs_removed(records, ax=axes[1], split=split)
        for h in self.history:
            axes[1].annotate(h["budget"].replace("alpha=", "α="), (h["params_removed_pct"], h["metric_after"]),
                             textcoords="offset points", xytext=(4, -12), fontsize=7)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        self.last_figure = fig
        self.figure_out.outputs = ({"output_type": "display_data", "metadata": {},
                                    "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
                                             "text/plain": f"<Figure: {res.model_name}, α runs: {len(self.history)}>"}},)


def render_counts(summary: dict) -> str:
    """The label counts as a small HTML table (also what the browser test reads)."""
    c = summary["counts"]
    rows = "".join(f"<tr><td>{r['layer']}</td><td>{r['critical']}</td><td>{r['neutral']}</td>"
                   f"<td>{r['detrimental']}</td><td>{r['removed']}</td></tr>" for r in summary["per_layer"])
    return (f"<div class='cswap-counts'>critical <b class='n-critical'>{c['critical']}</b> · neutral "
            f"<b class='n-neutral'>{c['neutral']}</b> · detrimental <b class='n-detrimental'>{c['detrimental']}</b>"
            f"</div><table><tr><th>layer</th><th>critical</th><th>neutral</th><th>detrimental</th><th>removed</th></tr>"
            f"{rows}</table>")


def alpha_explorer(model: nn.Module | None = None, data=None, model_name: str | None = None) -> AlphaExplorer:
    """An :class:`AlphaExplorer` over a shipped checkpoint (dropdown) or your own ``model`` and ``data``
    (an object with ``.calib`` and ``.test`` splits, e.g. :class:`cswap_nb.data.Dataset`)."""
    if (model is None) != (data is None):
        raise ValueError("give both model and data, or neither (then a shipped checkpoint is used)")
    return AlphaExplorer(model, data, model_name)


def relabel_slider(table, reference_alpha: float = 0.05, test: str = "welch", correction: str = "none"):
    """An α slider that re-labels precomputed tests at once (a :func:`cswap_nb.experiments.effects.pvalue_table`):
    the counts of each label at the slider's α and the units whose label differs from ``reference_alpha``.

    Nothing is re-run, so it answers instantly; it shows what the *level* of the same tests decides. The
    explorer (:func:`alpha_explorer`) re-runs C-SWAP instead, where α also changes which units are
    already removed when later ones are tested. Returns the ``ipywidgets.VBox`` (slider, output).
    """
    import ipywidgets as W
    from IPython.display import display

    sub = of_test(table, test)
    before = label_from_pvalues(sub, reference_alpha, correction)  # the reference, labelled once
    slider = W.FloatLogSlider(value=reference_alpha, base=10, min=-6, max=math.log10(0.5), step=0.1,
                              description="α", readout_format=".2g", continuous_update=True)
    out = W.Output()

    def show(alpha: float) -> None:
        after = label_from_pvalues(sub, alpha, correction)
        counts, flips = after.label.value_counts(), flips_between(before, after)
        out.clear_output(wait=True)
        with out:
            print(f"α = {alpha:.3g} ({test}, correction {correction}): "
                  + ", ".join(f"{int(counts.get(k, 0))} {k}" for k in ("critical", "neutral", "detrimental")))
            if flips.empty:
                print(f"no label differs from α = {reference_alpha:g}")
            else:
                print(f"{len(flips)} unit(s) change label from α = {reference_alpha:g}:")
                display(flips.head(20).round({"p_lower": 5}))

    slider.observe(lambda change: show(change["new"]), names="value")
    show(slider.value)
    return W.VBox([slider, out])

