"""Interactive α exploration (ipywidgets).

:func:`alpha_explorer` builds an :class:`AlphaExplorer`: an α slider (log scale), the
options of the causal test, a model dropdown over the shipped checkpoints, a run button
with a live, interruptible progress bar, and outputs updated in place (units per layer by
label, parameters/MACs removed, accuracy before/after — on the validation split where the
data has one, since α is a setting being chosen — and accuracy vs % removed with every
earlier run kept for comparison).

Re-running at another α is cheap: the interventional scores are cached by (network state,
tested unit), so the progressive descent replays every step up to the first decision that
differs without a single forward pass (see :class:`ScoreCache`). The explorer is scriptable:
``explorer.controls[name].value = ...``, ``explorer.run()``, ``explorer.last_result``.
"""
from __future__ import annotations

import threading
import time

from torch import Tensor, nn

from . import zoo
from .api import PruneResult, prune
from .causal import INFERENCES, TESTS
from .descent import UNIT_ORDERS
from .engine import FullEngine


DEFAULT_MODEL = "resnet18-fashion"


def evaluation_split(data):
    """Where the explorer measures accuracy: the validation split when the data has one (α is a
    setting to choose, and settings are chosen on validation data), else the test split."""
    val = getattr(data, "val", None)
    return ("validation", val) if val is not None else ("test", data.test)


class ScoreCache:
    """Calibration scores keyed by (network state, layer, tested units).

    The state is the set of units already removed when a unit is tested. With the same
    model, calibration set and visiting order, two runs at different α pass through the
    same states until their first differing decision, so everything up to it is reused.
    """

    def __init__(self):
        self.store: dict[tuple, Tensor] = {}
        self.hits = 0
        self.misses = 0

    def wrap(self, engine: FullEngine) -> FullEngine:
        cache, masker, inner = self, engine.masker, engine.scores

        def scores(x: Tensor, y: Tensor, score: str, layer=None) -> Tensor:
            state = tuple((name, tuple(mask.nonzero().flatten().tolist())) for name, mask in masker.removed.items())
            key = (score, layer.name if layer is not None else None, state)
            if key in cache.store:
                cache.hits += 1
                return cache.store[key]
            cache.misses += 1
            value = inner(x, y, score, layer)
            cache.store[key] = value
            return value

        engine.scores = scores
        return engine


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
            "alpha": W.FloatLogSlider(value=0.05, base=10, min=-6, max=-0.1, step=0.1, description="α",
                                      continuous_update=False, readout_format=".3g"),
            "inference": W.ToggleButtons(options=list(INFERENCES), value="per-class", description="inference"),
            "order": W.ToggleButtons(options=list(UNIT_ORDERS), value="magnitude", description="order"),
            "test": W.Dropdown(options=list(TESTS), value="welch", description="test"),
            "samples_per_class": W.IntSlider(value=20, min=2, max=60, step=1, description="k / class",
                                             continuous_update=False),
        }
        self.run_button = W.Button(description="run C-SWAP", button_style="primary", icon="play")
        self.stop_button = W.Button(description="stop", icon="stop", disabled=True)
        self.progress = W.IntProgress(value=0, min=0, max=1, description="units")
        self.status = W.HTML("")
        self.counts = W.HTML("")
        self.figure_out = W.Output()
        # options without a control: set them here (e.g. ``explorer.settings["scope"] = "all"``)
        self.settings: dict = {"score": "prob", "reference": "dense", "seed": 0, "scope": "internal",
                               "group_size": None}
        self.last_figure = None  # the matplotlib Figure shown last
        self.history: list[dict] = []
        self.last_result: PruneResult | None = None
        self._caches: dict[tuple, ScoreCache] = {}
        self._loaded: dict[str, tuple] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.run_button.on_click(lambda _: self.run_in_background())
        self.stop_button.on_click(lambda _: self._stop.set())
        self.controls["model"].observe(lambda change: self.history.clear(), names="value")
        box = W.VBox([
            W.HBox([self.controls["model"], self.controls["test"]]),
            self.controls["alpha"], self.controls["samples_per_class"],
            self.controls["inference"], self.controls["order"],
            W.HBox([self.run_button, self.stop_button, self.progress]),
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

    # every option that changes the calibration set or the interventional scores; a cache is shared
    # only by runs that agree on all of them (alpha and the test only change decisions, not scores)
    SCORE_OPTIONS = ("model", "samples_per_class", "order", "inference", "score", "reference", "seed", "scope",
                     "group_size")

    def cache(self) -> ScoreCache:
        """The score cache of the current :data:`SCORE_OPTIONS` values."""
        v = self.values()
        return self._caches.setdefault(tuple(v[k] for k in self.SCORE_OPTIONS), ScoreCache())

    # -- running --------------------------------------------------------------------------
    def run(self) -> PruneResult:
        """Run C-SWAP synchronously with the current control values and update the outputs."""
        model, data = self._model_and_data()
        v = self.values()
        cache = self.cache()
        hits0, misses0 = cache.hits, cache.misses
        self._stop.clear()
        self.progress.value = 0

        def on_step(record: dict) -> None:
            self.progress.value += 1
            if self._stop.is_set():
                raise Interrupted("stopped by the user")

        t0 = time.perf_counter()
        self.status.value = f"running at α = {v['alpha']:.3g} …"
        try:
            res = prune(model, data.calib, alpha=float(v["alpha"]), samples_per_class=int(v["samples_per_class"]),
                        inference=v["inference"], order=v["order"], test=v["test"], score=v["score"],
                        reference=v["reference"], seed=int(v["seed"]), scope=v["scope"], group_size=v["group_size"],
                        eval_data=evaluation_split(data)[1], progress=False, callback=on_step,
                        model_name=str(v["model"]),
                        engine_hook=cache.wrap, on_start=lambda total: setattr(self.progress, "max", max(1, total)))
        except Interrupted:
            self.status.value = "stopped: the model is unchanged; nothing was pruned"
            raise
        seconds = time.perf_counter() - t0
        self.last_result = res
        s = res.summary()
        metric = f"{evaluation_split(data)[0]} " + ("mIoU" if s["metric_name"] == "miou_pct" else "accuracy")
        self.history.append({**s, "budget": f"alpha={v['alpha']:.3g}", "settings": dict(v)})
        self.status.value = (f"<b>α = {v['alpha']:.3g}</b>: {s['params_removed_pct']:.1f}% of parameters and "
                             f"{s['macs_removed_pct']:.1f}% of MACs removed; {metric} {s['metric_before']:.2f}% → "
                             f"{s['metric_after']:.2f}% ({seconds:.1f} s; {cache.hits - hits0} cached tests reused, "
                             f"{cache.misses - misses0} computed)")
        self.counts.value = render_counts(s)
        self._draw(res)
        return res

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

    def _draw(self, res: PruneResult) -> None:
        """Draw on a Figure of its own (no pyplot state: runs happen in a worker thread) and hand the
        rendered PNG to the output widget explicitly (no ``with output:`` capture across threads)."""
        import base64
        import io

        from matplotlib.figure import Figure

        from .plots import plot_accuracy_vs_removed, plot_layer_labels

        fig = Figure(figsize=(13, 4.2), layout="constrained")
        axes = fig.subplots(1, 2)
        plot_layer_labels(res, ax=axes[0])
        records = [{**h, "method": "cswap"} for h in self.history]
        plot_accuracy_vs_removed(records, ax=axes[1])
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
