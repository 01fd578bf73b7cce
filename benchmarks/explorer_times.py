"""How long the α explorer takes to answer: the first run, then each change of α right after; then, on a
fresh explorer, the same after its background precomputation of the slider's stops has finished.

    python benchmarks/explorer_times.py [--model resnet18-fashion] [--alphas 0.05,0.001,0.5,0.01,0.05]
                                        [--after 0.001,0.5,0.01,0.1,0.00316,0.0501] [--lowest 1e-4] [--skip-plain]
                                        [--breakdown] [--button [--thread]]

Drives :class:`cswap_nb.ui.widgets.AlphaExplorer` without a browser (``explorer.run()``, what the run button
does in its thread; ``explorer.prefetch()``, what it starts after each run) and prints, per run, the wall
time, the analysis time, and the tests reused from the score cache or computed. ``--after`` values are
rounded to the slider's stops (10^(0.1 j)), as the browser's slider would set them. ``--breakdown`` adds, per run,
the seconds of the parts around the analysis: the session's set-up, the engine's build (inside the analysis),
the physical removal with its check, the evaluation on the validation split and the drawing. ``--button`` runs
each change as the run button does in a Jupyter kernel (:meth:`AlphaExplorer.run_in_background` on a running
event loop: the run one test at a time on the main thread) and times it until the run has finished, with the
*precompute* box unticked during the click (the time and counts are the run's alone; the second part of the
benchmark times the precomputation on the loop); with ``--thread``, as it does without an event loop (and did
in a kernel before): in a worker thread. In a thread, PyTorch's OpenMP workers
do not spin between operations while the main thread's own pool exists, so every small operation waits for
its workers to wake (about 220 against 16 µs here for a ReLU and a concatenation of 20 x 64 x 7 x 7).
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import math
import time

import cswap_nb.pruning.session as session_module
import cswap_nb.ui.widgets as widgets
from cswap_nb.ui.widgets import alpha_explorer

LOOP: list[asyncio.AbstractEventLoop] = []  # --button: the one event loop, as a kernel has


def event_loop() -> asyncio.AbstractEventLoop:
    if not LOOP:
        LOOP.append(asyncio.new_event_loop())
    return LOOP[0]
PARTS: dict[str, float] = {}  # --breakdown: seconds per part of the last run


def time_parts() -> None:
    """Wrap the parts of a run around its analysis so that each adds its seconds to :data:`PARTS`."""
    def timed(owner, name: str, label: str) -> None:
        f = getattr(owner, name)

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                PARTS[label] = PARTS.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, name, wrapper)

    timed(session_module.PruneSession, "__init__", "set-up")
    timed(session_module.PruneSession, "build_engine", "engine build")
    timed(session_module.PruneSession, "finish", "removal+check")
    timed(widgets, "evaluate", "evaluation")
    timed(widgets.AlphaExplorer, "_draw", "drawing")


def clicked(explorer, loop: asyncio.AbstractEventLoop | None):
    """The run button's run (on ``loop`` as in a kernel, else in a thread), waited for; its result. The
    *precompute* box is unticked meanwhile, so that the time and the counts are the run's alone."""
    ticked, explorer.controls_prefetch.value = explorer.controls_prefetch.value, False
    try:
        if loop is None:
            explorer.run_in_background()
            explorer._thread.join()
        else:
            async def click():
                explorer.run_in_background()
                await explorer._task

            loop.run_until_complete(click())
    finally:
        explorer.controls_prefetch.value = ticked
    if "error" in explorer.status.value or "stopped" in explorer.status.value:
        raise RuntimeError(f"the run did not finish: {explorer.status.value}")
    return explorer.last_result


def timed_runs(explorer, alphas, button: str | None = None) -> None:
    print(f"{'alpha':>10s}{'wall s':>9s}{'analysis s':>12s}{'reused':>8s}{'computed':>10s}{'removed %':>11s}")
    for a in alphas:
        explorer.controls["alpha"].value = a
        cache = explorer.cache()
        hits, misses = cache.hits, cache.misses
        PARTS.clear()
        t0 = time.perf_counter()
        if button is not None:
            res = clicked(explorer, None if button == "thread" else event_loop())
        else:
            res = explorer.run()
        wall = time.perf_counter() - t0
        how = "done before" if "done before" in explorer.status.value else f"{cache.hits - hits:>8d}{cache.misses - misses:>10d}"
        parts = "  " + ", ".join(f"{k} {v:.2f}" for k, v in PARTS.items()) if PARTS else ""
        print(f"{a:>10.4g}{wall:>9.2f}{res.analysis_seconds:>12.2f}{how:>18s}{res.params_removed_pct:>11.1f}{parts}")


def fresh(model: str):
    explorer = alpha_explorer()
    explorer.controls["model"].value = model
    explorer._model_and_data()  # load the checkpoint before timing: the first run measures the analysis
    return explorer


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18-fashion")
    p.add_argument("--alphas", default="0.05,0.001,0.5,0.01,0.05", help="without precomputation: first run, then changes")
    p.add_argument("--after", default="0.001,0.5,0.01,0.1,0.00316,0.0501",
                   help="changes of alpha once the precomputation has finished")
    p.add_argument("--lowest", type=float, default=1e-4, help="the smallest stop precomputed")
    p.add_argument("--skip-plain", action="store_true", help="only the run with precomputation")
    p.add_argument("--breakdown", action="store_true", help="the seconds of each part around the analysis")
    p.add_argument("--button", action="store_true", help="the changes without precomputation as the run button "
                   "makes them in a kernel: on an event loop (the precompute box unticked during each click)")
    p.add_argument("--thread", action="store_true", help="with --button: in a worker thread (no event loop)")
    args = p.parse_args(argv)
    if args.breakdown:
        time_parts()
    button = ("thread" if args.thread else "loop") if args.button else None
    alphas = [float(v) for v in args.alphas.split(",")]
    if not args.skip_plain:
        print("== changes of alpha right after the first run (nothing precomputed)")
        timed_runs(fresh(args.model), alphas, button=button)
    print(f"\n== a fresh explorer: first run at alpha = {alphas[0]:g}, then the slider's stops from {args.lowest:g} "
          "precomputed in the background")
    explorer = fresh(args.model)
    timed_runs(explorer, alphas[:1])
    stops = explorer.prefetch_alphas(lowest=args.lowest)
    t0 = time.perf_counter()
    if button == "loop":  # as the button starts it in a kernel: a task on the event loop
        async def precompute():
            await explorer.prefetch(stops)

        event_loop().run_until_complete(precompute())
    else:
        explorer.prefetch(stops, wait=True)
    print(f"precomputed {len(stops)} stops in {time.perf_counter() - t0:.1f} s "
          f"({(time.perf_counter() - t0) / max(1, len(stops)):.1f} s a stop)")
    print("ready after (s): " + ", ".join(f"{a:.3g}: {t:.0f}" for a, t in explorer.prefetch_log[:8]) + ", ...")
    c = explorer.controls["alpha"]
    after = [c.base ** (round(math.log(float(v), c.base) / c.step) * c.step) for v in args.after.split(",")]
    timed_runs(explorer, after, button=button)


if __name__ == "__main__":
    main()
