"""The key figures of the course, drawn from one fresh run: ``python -m cswap_nb gallery``.

A teacher who wants pictures for slides or a handout, and a reader who wants to see what the notebooks
show before running them, get the same figures the notebooks draw, computed now on a shipped checkpoint
(nothing is pasted): the images, where C-SWAP's cuts fell, C-SWAP against ``l1`` and ``random`` at equal
size and along their curves, what α does to the size, and where the parameters, MACs and time of the
network go. :func:`make_gallery` writes one PNG per figure and an ``index.md`` that captions each with
the numbers of this run; the teacher's guide (``notebooks/README.md``) shows the copies kept in
``notebooks/gallery/``.
"""
from __future__ import annotations

import base64
import os
import time
from pathlib import Path

from matplotlib.figure import Figure

from .. import zoo
from ..experiments.bench import compare_latency, heaviest_stages, stage_profile
from ..experiments.comparison import SAME_PARAMS, compare_methods
from ..pruning.api import prune
from .plots import plot_accuracy_vs_removed, plot_images, plot_layer_labels, plot_stage_profile

ALPHAS = (0.01, 0.05, 0.5)
KEY_TAG = "key-figure"  # the cell tag that marks a notebook's key figure


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=100)
    return name


def notebook_key_figures(notebooks: list[Path], out: Path, fast: bool = False) -> list[tuple[str, str]]:
    """Run each notebook top to bottom (``fast``: with ``CSWAP_NB_FAST=1``, as the test suite does) and save the
    figure of its cell tagged :data:`KEY_TAG` as ``out/<notebook>.png``. Returns ``(file, caption)`` pairs: the
    notebook's title, the mode, and what that cell printed."""
    import nbformat  # loaded here, so that the command line starts without the notebook machinery
    from nbclient import NotebookClient

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = {k: os.environ.get(k) for k in ("CSWAP_NB_FAST", "MPLBACKEND")}
    os.environ["MPLBACKEND"] = "Agg"
    if fast:
        os.environ["CSWAP_NB_FAST"] = "1"
    else:
        os.environ.pop("CSWAP_NB_FAST", None)
    figures = []
    try:
        for path in notebooks:
            path = Path(path)
            nb = nbformat.read(path, as_version=4)
            tagged = [c for c in nb.cells if KEY_TAG in c.get("metadata", {}).get("tags", [])]
            if len(tagged) != 1:
                raise ValueError(f"{path.name}: {len(tagged)} cells are tagged {KEY_TAG!r}; tag exactly one")
            NotebookClient(nb, timeout=3600, kernel_name="python3",
                           resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
            cell = tagged[0]
            images = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
            if not images:
                raise ValueError(f"{path.name}: the cell tagged {KEY_TAG!r} drew no figure")
            name = f"{path.stem}.png"
            (out / name).write_bytes(base64.b64decode(images[-1]))
            title = next((c.source.splitlines()[0].lstrip("# ").strip() for c in nb.cells
                          if c.cell_type == "markdown" and c.source.strip()), path.stem)
            printed = "".join("".join(o.get("text", "")) for o in cell.get("outputs", [])
                              if o.get("output_type") == "stream").strip()
            link = Path(os.path.relpath(path.resolve(), out.resolve())).as_posix()  # from the index to the notebook
            caption = f"[{title}]({link}), its key figure ({'FAST' if fast else 'full'} mode)"
            if printed:  # what the cell printed, as it printed it
                caption += ", which printed:\n\n```\n" + "\n".join(printed.splitlines()[:12]) + "\n```"
            else:
                caption += "."
            figures.append((name, caption))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return figures


def make_gallery(out: Path, model_name: str = "resnet18-fashion", fast: bool = False, progress: bool = True,
                 notebooks: list[Path] | None = None) -> dict:
    """Draw the gallery of ``model_name`` (a shipped classification checkpoint) into the folder ``out``.

    ``fast``: k = 10 calibration images per class and the first 1,000 test images (else k = 20 and the whole
    test split); ``notebooks``: also run these notebooks and keep each one's key figure
    (:func:`notebook_key_figures`, in FAST mode with ``fast``). Returns ``{"figures": [(file, caption), ...], "seconds": ...}``; ``out/index.md`` lists
    the same.
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, data = zoo.load(model_name)
    if data.test.y.ndim != 1:
        raise ValueError(f"the gallery draws classification figures; {model_name!r} is a segmentation checkpoint")
    k = 10 if fast else 20
    test = data.test.head(1000) if fast else data.test
    figures: list[tuple[str, str]] = []

    fig = plot_images(data.test, data.classes)
    figures.append((_save(fig, out, "images.png"),
                    f"The data: one test image of each of the {len(data.classes)} classes ({data.source})."))

    runs = {a: prune(model, data.calib, alpha=a, samples_per_class=k, eval_data=test, progress=progress,
                     model_name=model_name) for a in ALPHAS}
    res = runs[0.05]
    s = res.summary()
    fig = Figure(figsize=(8, 0.3 * len(res.layers) + 1.8), layout="constrained")
    plot_layer_labels(res, ax=fig.add_subplot())
    figures.append((_save(fig, out, "layer_labels.png"),
                    f"Where C-SWAP's cuts fell (α = 0.05, k = {k}): {s['params_removed_pct']:.1f}% of the parameters "
                    f"and {s['macs_removed_pct']:.1f}% of the MACs removed, test accuracy {s['metric_before']:.2f}% -> "
                    f"{s['metric_after']:.2f}%, no fine-tuning. Critical units are kept; neutral and detrimental "
                    "ones are removed."))

    records = compare_methods(model, data, ["l1", "random"], ratios=(0.2, 0.4, 0.6), alphas=[0.01, 0.5],
                              eval_data=test, samples_per_class=k, progress=progress, cswap=res,
                              model_name=model_name)
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    plot_accuracy_vs_removed(records, ax=fig.add_subplot(), split="test")
    same = {r["method"]: r["metric_after"] for r in records if r["budget"] == SAME_PARAMS}
    figures.append((_save(fig, out, "accuracy_vs_removed.png"),
                    "C-SWAP (stars: α = 0.01, 0.05, 0.5) against `l1` and `random` (curves: 20, 40, 60% of the units "
                    f"removed) on one calibration draw. At C-SWAP's size (α = 0.05): C-SWAP {same.get('cswap', 0):.2f}%, "
                    f"`l1` {same.get('l1', 0):.2f}%, `random` {same.get('random', 0):.2f}%. One draw is an anecdote: "
                    "notebooks 03 and 09 repeat it over draws and say which differences exceed the spread."))

    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, len(ALPHAS), sharex=True)
    for ax, a in zip(axes, ALPHAS):
        plot_layer_labels(runs[a], ax=ax)
        r = runs[a].summary()
        ax.set_title(f"α = {a}: {r['params_removed_pct']:.1f}% removed, {r['metric_after']:.2f}%", fontsize=9)
        if ax is not axes[0]:
            ax.set_yticklabels([])
        legend = ax.get_legend()
        if legend is not None and ax is not axes[-1]:
            legend.remove()
    removed = ", ".join(f"α = {a}: {runs[a].params_removed_pct:.1f}%" for a in ALPHAS)
    sizes = [runs[a].params_removed_pct for a in ALPHAS]
    monotone = all(x >= y for x, y in zip(sizes, sizes[1:]))
    figures.append((_save(fig, out, "alpha.png"),
                    f"What α does: a larger α flags more units critical, so less is removed ({removed} of the "
                    "parameters" + (")." if monotone else "; here the order breaks: what a run removes early is part "
                                    "of every later test, the path effect of notebook 09).")))

    x = data.test.x[:64]
    prof = stage_profile(model, x, 5 if fast else 20)
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    plot_stage_profile(prof, ax=fig.add_subplot(),
                       title=f"{model_name}: where the parameters, MACs and time go, stage by stage")
    most = heaviest_stages(prof)
    lat = compare_latency(model, res.model, x, 10 if fast else 30)
    figures.append((_save(fig, out, "stages.png"),
                    f"Parameters, MACs and latency are three different things: most parameters sit in {most['params']}, "
                    f"most MACs in {most['macs']}, most time in {most['ms']} (measured on this machine). C-SWAP's "
                    f"{s['params_removed_pct']:.1f}% of the parameters: a forward pass of 64 images took "
                    f"{lat['dense_ms']:.1f} ms dense and {lat['pruned_ms']:.1f} ms pruned (notebook 00)."))

    if notebooks:
        figures += notebook_key_figures(notebooks, out, fast)
    seconds = time.perf_counter() - t0
    command = (f"python -m cswap_nb gallery --model {model_name}{' --fast' if fast else ''}"
               + (f" --notebooks {Path(notebooks[0]).parent}" if notebooks else ""))
    lines = [f"# Gallery: {model_name}", "",
             f"Drawn by `{command}` in "
             f"{seconds:.0f} s ({'FAST: ' if fast else ''}k = {k} calibration images per class, "
             f"{len(test.y):,} test images). Every number below comes from that run.", ""]
    for name, caption in figures:
        lines += [f"![{name}]({name})", "", caption, ""]
    (out / "index.md").write_text("\n".join(lines))
    return {"figures": figures, "seconds": seconds}
