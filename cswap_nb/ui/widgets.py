"""Interactive α exploration (ipywidgets).

:func:`alpha_explorer` builds an :class:`AlphaExplorer`: an α slider (log scale), the
options of the causal test (k, inference, visiting order, test, the reference network and the
multiple-testing correction), a model dropdown over the shipped checkpoints, a run button
with a live, interruptible progress bar, a button that clears the runs drawn so far, and outputs updated in place (units per layer by
label, parameters/MACs removed, accuracy before/after — on the validation split where the
data has one, since α is a setting being chosen — and accuracy vs % removed with every
earlier run kept for comparison).

A change of α answers as fast as three things allow. A run with options already run is shown again
(every finished run is kept). The interventional scores are cached by (network state, tested unit), so
the progressive descent replays every step up to the first decision that differs without a single
forward pass (see :class:`ScoreCache`), and a run whose scores are all cached builds no engine. After
each run started with the button, the slider's other stops are computed in the background
(:meth:`AlphaExplorer.prefetch`, the *precompute other α* box), which gives way to any run. In a Jupyter
kernel the button's run and that precomputation go on the kernel's event loop in the main thread, one test
at a time (a Stop click is handled between two tests), where PyTorch runs them about 1.5x as fast as in a
worker thread; elsewhere they run in a thread. The
explorer is scriptable: ``explorer.controls[name].value = ...``, ``explorer.run()``,
``explorer.prefetch(alphas, wait=True)``, ``explorer.last_result``.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time

from torch import nn

from .. import zoo
from ..pruning.api import PruneResult
from ..experiments.comparison import calibration_draws
from ..core.config import OPTION_NAMES, SCORE_OPTIONS, CSwapConfig, make_config, option
from ..experiments.effects import flips_between, label_from_pvalues, of_test
from ..engines.cached import ScoreCache, CachedEngine  # noqa: F401 (re-exported)
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
        self.controls_prefetch = W.Checkbox(value=True, description="precompute other α", indent=False,
                                            tooltip="after each run, compute the runs at the slider's other stops "
                                                    "in the background, so that moving α answers at once")
        self.prefetch_status = W.HTML("")
        self.status = W.HTML("")
        self.counts = W.HTML("")
        self.figure_out = W.Output()
        # options without a control, at their defaults: set them here (``explorer.settings["scope"] = "all"``)
        self.settings: dict = {k: v for k, v in CSwapConfig().as_dict().items() if k not in CONTROLS}
        self.last_figure = None  # the matplotlib Figure shown last
        self._places: dict[str, list] = {}  # model -> its figure's axes positions (the layout solved once)
        self.history: list[dict] = []
        self.last_result: PruneResult | None = None
        self._caches: dict[tuple, ScoreCache] = {}
        self._loaded: dict[str, tuple] = {}
        # per model: the calibration pool predicted once (each run selects from it) and the dense metric
        self._draws: dict[str, object] = {}
        self._dense: dict[str, float] = {}
        self._metrics: dict[tuple, float] = {}  # (model, split, removed units) -> metric of that pruned network
        self._stop = threading.Event()
        self._lock = threading.Lock()  # reading the options and bumping the generation happen together
        self._generation = 0  # bumped by every run and option change: a precomputation of older options stops
        self._prefetcher: threading.Thread | None = None
        self.prefetch_log: list[tuple[float, float]] = []  # the last precomputation: (alpha, seconds) per stop ready
        self._results: dict[tuple, PruneResult] = {}  # every option (α to 10 digits) -> its run
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task | None = None  # the run button's run on a kernel's event loop
        self._prefetch_task: asyncio.Task | None = None  # a precomputation on that loop ...
        self._prefetch_steps = None  # ... and the generator of its steps (closed to end it at once)
        self.run_button.on_click(lambda _: self.run_in_background())
        self.stop_button.on_click(lambda _: self._stop.set())
        self.clear_button.on_click(lambda _: self.clear_history())
        self.controls["model"].observe(lambda change: self._model_changed(), names="value")
        for name in CONTROLS:  # another setting: what is being precomputed is no longer what the next run needs
            if name != "alpha":
                self.controls[name].observe(lambda change: self._bump(), names="value")
        box = W.VBox([
            W.HBox([self.controls["model"], self.controls["test"]]),
            self.controls["alpha"], self.controls["samples_per_class"],
            self.controls["inference"], self.controls["order"],
            W.HBox([self.controls["reference"], self.controls["correction"]]),
            W.HBox([self.run_button, self.stop_button, self.clear_button, self.progress]),
            W.HBox([self.controls_prefetch, self.prefetch_status]),
            self.status, self.counts, self.figure_out,
        ])
        self.widget = box

    def _bump(self) -> int:
        """A new generation: a precomputation of an older one stops at its next test."""
        with self._lock:
            self._generation += 1
            return self._generation

    def _model_changed(self) -> None:
        self._bump()  # a precomputation for the other model stops
        self.history.clear()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- state ----------------------------------------------------------------------------
    def _model_and_data(self, name: str | None = None):
        """The model and data of the dropdown's checkpoint (or of ``name``), loaded once; your own if given."""
        if self._given is not None:
            return self._given
        name = self.controls["model"].value if name is None else name
        if name not in self._loaded:
            self._loaded[name] = zoo.load(name)
        return self._loaded[name]

    def values(self) -> dict:
        """The controls' values and :attr:`settings`: every option a run uses."""
        return {**self.settings, **{name: control.value for name, control in self.controls.items()}}

    # the model and every option that changes the calibration set or the interventional scores; a cache
    # is shared only by runs that agree on all of them (alpha and the test only change decisions)
    SCORE_OPTIONS = ("model", *SCORE_OPTIONS)

    def cache(self, v: dict | None = None) -> ScoreCache:
        """The score cache of the current :data:`SCORE_OPTIONS` values (or of the options ``v``)."""
        v = self.values() if v is None else v
        return self._caches.setdefault(tuple(v[k] for k in self.SCORE_OPTIONS), ScoreCache())

    # -- running --------------------------------------------------------------------------
    def run(self) -> PruneResult:
        """Run C-SWAP synchronously with the current control values and update the outputs.

        Drives a :class:`~cswap_nb.pruning.session.PruneSession` step by step: its engine is wrapped by the
        score cache, the progress bar follows the steps, and Stop ends the run between two steps. A run
        with exactly these options done before (by hand, or precomputed by :meth:`prefetch`) is not done
        again: its result is shown at once.
        """
        _end_prefetch(self)  # one analysis at a time, counts of this run only
        return _drain(self._running())

    def _running(self):
        """The run of :meth:`run` as a generator that yields after every test (its return value: the result):
        drained at once by :meth:`run`, or step by step on the kernel's event loop by the run button."""
        v = self.values()
        cache = self.cache(v)
        hits0, misses0 = cache.hits, cache.misses
        self._stop.clear()
        self.progress.value = 0
        t0 = time.perf_counter()
        self.status.value = f"running at α = {v['alpha']:.3g} …"
        res = self._results.get(self._result_key(v))
        if res is not None:
            self.progress.value = self.progress.max
            how = "done before"
        else:
            def step(session, record):
                if record is None:  # the steps are done
                    return
                self.progress.max = max(1, session.total_steps)
                self.progress.value += 1
                self._check_stop()

            res = yield from self._computing(v, step)
            how = f"{cache.hits - hits0} cached tests reused, {cache.misses - misses0} computed"
        seconds = time.perf_counter() - t0
        self.last_result = res
        s = res.summary()
        split = evaluation_split(self._model_and_data(str(v["model"]))[1])[0]
        metric = f"{split} " + ("mIoU" if s["metric_name"] == "miou_pct" else "accuracy")
        self.history.append({**s, "budget": f"alpha={v['alpha']:.3g}", "settings": dict(v)})
        self.status.value = (f"<b>α = {v['alpha']:.3g}</b>: {s['params_removed_pct']:.1f}% of parameters and "
                             f"{s['macs_removed_pct']:.1f}% of MACs removed; {metric} {s['metric_before']:.2f}% → "
                             f"{s['metric_after']:.2f}% ({seconds:.1f} s; {how})")
        self.counts.value = render_counts(s)
        self._draw(res, split)
        return res

    def _check_stop(self) -> None:
        """Raise :class:`Interrupted` when Stop was pressed (the run leaves no result)."""
        if self._stop.is_set():
            self.status.value = "stopped: the model is unchanged; nothing was pruned"
            raise Interrupted("stopped by the user")

    @staticmethod
    def _result_key(v: dict) -> tuple:
        """A run's options as a key; α to 10 significant digits (the browser's slider computes 10**x itself)."""
        return tuple((k, f"{v[k]:.10g}" if k == "alpha" else v[k]) for k in sorted(v))

    def _computing(self, v: dict, step):
        """The C-SWAP run of the options ``v`` (scores through the score cache of those options), measured on
        the evaluation split and kept for a later run with the same options, as a generator that yields after
        every test (its return value: the result). ``step(session, record)`` is called after every test; it
        may raise to abandon the run (nothing is kept then)."""
        model, data = self._model_and_data(str(v["model"]))
        cache = self.cache(v)
        options = {k: v[k] for k in OPTION_NAMES}
        guard = {"guard_data": getattr(data, "val", None)} if options["max_drop"] is not None else {}
        name, (split, held_out) = str(v["model"]), evaluation_split(data)
        if name not in self._draws:  # the pool is predicted once per model, not on every run
            self._draws[name] = calibration_draws(model, data.calib)
        calib = self._draws[name](make_config(None, **options))
        session = PruneSession(model, calib, progress=False, model_name=name, **guard, **options)
        session.engine = cache.wrap(session.build_engine, session.masker, session.config.engine)
        for record in session.steps():
            step(session, record)
            yield
        step(session, None)  # a precomputation that must stop does not pay for the removal and evaluation
        res = session.finish()
        if name not in self._dense:  # the dense model's metric does not change between runs
            self._dense[name] = evaluate(model, held_out)
        # a run that ends in a network measured before (another α, same removals) reuses its metric
        ending = (name, split, tuple(sorted((k, tuple(u)) for k, u in res.pruned_units.items())))
        if ending not in self._metrics:
            self._metrics[ending] = evaluate(res.model, held_out)
        res.metric_before, res.metric_after = self._dense[name], self._metrics[ending]
        self._results[self._result_key(v)] = res
        return res

    # -- precomputing other α ---------------------------------------------------------------
    def prefetch_alphas(self, around: float | None = None, lowest: float = 1e-4) -> list[float]:
        """The α values :meth:`prefetch` computes: the slider's stops from ``lowest`` up, coarse to fine (the
        powers of ten and the stop nearest 0.5 first, then the half-decades, then the rest), each level
        nearest to ``around`` (default: the slider's α) first."""
        c = self.controls["alpha"]
        around = c.value if around is None else around
        count = int(round((c.max - c.min) / c.step))
        exps = [round(c.min + j * c.step, 6) for j in range(count + 1)]
        exps = [e for e in exps if c.base**e >= lowest * (1 - 1e-9)]
        half = min(exps, key=lambda e: abs(c.base**e - 0.5))

        def level(e: float) -> int:
            if abs(e - round(e)) < 1e-6 or e == half:
                return 0
            return 1 if abs(2 * e - round(2 * e)) < 1e-6 else 2

        here = math.log(around, c.base)
        ordered = sorted(exps, key=lambda e: (level(e), abs(e - here)))
        return [float(c.base**e) for e in ordered if abs(e - here) > 1e-6]

    def prefetch(self, alphas=None, wait: bool = False) -> threading.Thread | asyncio.Task | None:
        """Precompute the runs at other α with the present options (default :meth:`prefetch_alphas`): a later
        run at one of them answers at once (:meth:`run` finds its result), and any run finds their scores
        cached. It stops between two tests when a run starts (the run begins once it has) and at its next test
        when an option changes; the run button starts it again after each run when the *precompute* box is
        ticked. In a Jupyter kernel (a running event loop) it is a task on that loop, one test at a time while
        the kernel is otherwise idle (a cell or a click waits at most for the test under way); elsewhere a
        thread; with ``wait=True``, in the calling thread, returning when it has finished. Returns the task or
        the thread (None with ``wait=True``)."""
        _end_prefetch(self)  # an older precomputation ends: its generation is past
        with self._lock:  # the options read and the generation they belong to, together
            v, generation = self.values(), self._generation
        alphas = self.prefetch_alphas(v["alpha"]) if alphas is None else [float(a) for a in alphas]
        self.prefetch_log = []  # (alpha, seconds since the start) of each stop ready
        steps = self._prefetching(alphas, v, generation)
        if wait:  # in the calling thread: no worker to wake (see run_in_background)
            _drain(steps)
            return None
        loop = _kernel_loop()
        if loop is not None:  # in a kernel: on its event loop, between the user's actions
            self._prefetch_steps = steps
            self._prefetch_task = loop.create_task(_stepped(steps))
            return self._prefetch_task
        self._prefetcher = threading.Thread(target=lambda: _drain(steps), daemon=True, name="cswap-prefetch")
        self._prefetcher.start()
        return self._prefetcher

    def _prefetching(self, alphas: list[float], v: dict, generation: int):
        """The precomputation of :meth:`prefetch` as a generator that yields after every test; it ends at its
        next test once the generation is past (a run started, an option changed)."""
        def step(_session, _record):
            if self._generation != generation:
                raise Interrupted("a run started or an option changed: the precomputation stops")

        done, t0 = 0, time.perf_counter()
        for a in alphas:
            if self._generation != generation:
                return
            if self._result_key({**v, "alpha": a}) not in self._results:
                try:
                    yield from self._computing({**v, "alpha": a}, step)
                except Interrupted:
                    return
                except Exception as exc:  # shown, not lost in a thread
                    self.prefetch_status.value = f"<span style='color:#c53030'>precomputing: {exc}</span>"
                    return
            if self._generation != generation:
                return
            done += 1
            self.prefetch_log.append((a, time.perf_counter() - t0))
            self.prefetch_status.value = (f"precomputed {done} of {len(alphas)} α stops (last α = {a:.3g}); "
                                          "a run at one of them answers at once")

    def stop_prefetch(self) -> None:
        """Stop a precomputation (between two tests); what it computed stays."""
        _end_prefetch(self)

    def clear_history(self) -> None:
        """Forget the runs drawn so far (the figure starts again with the next run); the score cache, the
        calibration pools and :attr:`last_result` stay."""
        self.history.clear()
        self.figure_out.clear_output()
        self.last_figure = None
        self.counts.value = ""
        self.status.value = "runs cleared: the next run starts a new figure"

    def run_in_background(self) -> None:
        """What the run button does. In a Jupyter kernel, the run goes on the kernel's event loop in the main
        thread, one test at a time, so that a Stop click is handled between two tests; then the precomputation
        does the same between the user's clicks. Elsewhere (no running event loop) it runs in a thread. On the
        main thread PyTorch's OpenMP workers stay awake between small operations; from another thread they
        sleep and wake for each (libgomp throttles its spinning while the main thread's pool exists): the
        analyses took about 1.5x as long there (``python benchmarks/explorer_times.py --button --thread``)."""
        loop = _kernel_loop()
        if loop is not None:
            if self._task is None or self._task.done() or self._task.get_loop() is not loop:
                self._task = loop.create_task(_stepped(_button_steps(self)))
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=lambda: _drain(_button_steps(self)), daemon=True)
        self._thread.start()

    def _draw(self, res: PruneResult, split: str | None = None) -> None:
        """Draw on a Figure of its own (no pyplot state: runs may happen in a worker thread) and hand the
        rendered PNG to the output widget explicitly (no ``with output:`` capture across threads).
        ``split`` names where the metric was measured (:func:`evaluation_split`) on the plot's axis."""
        import base64
        import io

        from matplotlib.figure import Figure

        # the constrained layout (0.4 s) is solved on a model's first figure; later ones reuse its axes' places
        places = self._places.get(res.model_name)
        fig = Figure(figsize=(13, 4.2), layout="constrained" if places is None else None)
        axes = fig.subplots(1, 2)
        for ax, place in zip(axes, places or ()):
            ax.set_position(place)
        plot_layer_labels(res, ax=axes[0])
        records = [{**h, "method": "cswap"} for h in self.history]
        plot_accuracy_vs_removed(records, ax=axes[1], split=split)
        for h in self.history:
            axes[1].annotate(h["budget"].replace("alpha=", "α="), (h["params_removed_pct"], h["metric_after"]),
                             textcoords="offset points", xytext=(4, -12), fontsize=7)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        if places is None:
            self._places[res.model_name] = [ax.get_position() for ax in axes]
        self.last_figure = fig
        self.figure_out.outputs = ({"output_type": "display_data", "metadata": {},
                                    "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
                                             "text/plain": f"<Figure: {res.model_name}, α runs: {len(self.history)}>"}},)


def _button_steps(explorer: AlphaExplorer):
    """What :meth:`AlphaExplorer.run_in_background` runs, as a generator that yields after every test (drained in
    a thread, or stepped on the kernel's event loop): a precomputation ends (a task at once, between two of its
    tests), the run goes one test at a time with Stop checked before the next (a click handled while the loop
    had it), then the precomputation starts again when ticked. Errors are shown in the status."""
    explorer.run_button.disabled, explorer.stop_button.disabled = True, False
    run = explorer._running()
    try:
        _end_prefetch(explorer)
        for _ in run:
            yield
            explorer._check_stop()
        if explorer.controls_prefetch.value:
            explorer.prefetch()
    except Interrupted:
        pass
    except Exception as exc:  # shown to the user instead of lost in a thread or a task
        explorer.status.value = f"<span style='color:#c53030'>error: {exc}</span>"
    finally:
        run.close()  # stopped between two tests: its session closes its bar
        explorer.run_button.disabled, explorer.stop_button.disabled = False, True


def _end_prefetch(explorer: AlphaExplorer) -> None:
    """End a precomputation (its cached scores stay): a thread at its next test, waited for; a task on this
    thread's event loop at once (it is between two tests)."""
    explorer._bump()
    worker, task = explorer._prefetcher, explorer._prefetch_task
    if worker is not None and worker is not threading.current_thread():
        worker.join()
    # a task is between two tests unless its loop is running in another thread (it then stops at its next)
    if task is not None and not task.done() and (not task.get_loop().is_running()
                                                 or _kernel_loop() is task.get_loop()):
        explorer._prefetch_steps.close()  # its session closes its bar
        if not task.get_loop().is_closed():
            task.cancel()


def _drain(steps):
    """Run a generator of steps to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


async def _stepped(steps):
    """Run a generator of steps on the running event loop, handing the loop back after each (a Jupyter kernel
    then handles the messages that came in meanwhile, e.g. a Stop click); its return value. The generator is
    closed however this ends."""
    try:
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            await asyncio.sleep(0)
    finally:
        steps.close()


def _kernel_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread (a Jupyter kernel's, when a widget's callback calls), else None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


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

