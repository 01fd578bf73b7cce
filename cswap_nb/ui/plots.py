"""Figures. One function per figure; each draws on a given axis and returns it.

Nothing is set globally; without an ``ax`` a new :class:`matplotlib.figure.Figure` is made
(no pyplot state), so the functions work the same in notebooks, scripts and the CLI.
"""
from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..core.causal import upsample_logits
from ..data import tensor_batches
from ..data.cityscapes import colorize, denormalize
from ..experiments.comparison import at_budget
from ..core.result import unit_sizes

LABEL_COLOURS = {"critical": "#2b6cb0", "neutral": "#a0aec0", "detrimental": "#e53e3e"}


def _new_ax(figsize=(7.5, 4.5)) -> Axes:
    return Figure(figsize=figsize, layout="constrained").add_subplot()


def plot_images(split, classes: list[str], n: int = 10, predictions=None) -> Figure:
    """The first image of each of the first ``n`` classes in ``split`` (grey or RGB, de-normalised
    to the split's own range), titled with its class (and a model's ``predictions``, if given)."""
    import torch

    x, y = split
    picks = [int(torch.nonzero(y == c)[0]) for c in range(min(n, len(classes))) if (y == c).any()]
    fig = Figure(figsize=(1.25 * len(picks), 1.7), layout="constrained")
    axes = fig.subplots(1, len(picks), squeeze=False)[0]
    for ax, i in zip(axes, picks):
        img = x[i].detach().float().cpu()
        img = (img - img.min()) / (img.max() - img.min() + 1e-12)
        ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray" if img.shape[0] == 1 else None)
        title = classes[int(y[i])]
        if predictions is not None:
            title += f"\n→ {classes[int(predictions[i])]}"
        ax.set_title(title, fontsize=7)
        ax.set_axis_off()
    return fig


def plot_layer_labels(result, ax: Axes | None = None) -> Axes:
    """Units kept/removed per layer, coloured by causal label (one bar per unit layer).

    Critical units are kept; neutral and detrimental ones are removed. Units kept only
    because they were the last of their layer are drawn hatched. A test of a group of units
    (``group_size``, the ViT's MLP groups) counts each unit of the group, so each bar's length is
    the layer's width.
    """
    ax = ax or _new_ax()
    df = result.labels.assign(units=unit_sizes(result.labels))
    layers = [layer["name"] for layer in result.layers]
    bottoms = [0] * len(layers)
    parts = [
        ("critical (kept)", lambda s: s.units[s.label == "critical"].sum(), LABEL_COLOURS["critical"], None),
        ("not critical, kept as last unit", lambda s: s.units[(s.label != "critical") & ~s.pruned].sum(),
         "white", "//"),
        ("neutral (removed)", lambda s: s.units[(s.label == "neutral") & s.pruned].sum(), LABEL_COLOURS["neutral"],
         None),
        ("detrimental (removed)", lambda s: s.units[(s.label == "detrimental") & s.pruned].sum(),
         LABEL_COLOURS["detrimental"], None),
    ]
    for name, count, colour, hatch in parts:
        values = [int(count(df[df.layer == layer])) for layer in layers]
        if name.startswith("not critical") and not any(values):
            continue
        ax.barh(layers, values, left=bottoms, color=colour, hatch=hatch, edgecolor="#4a5568", linewidth=0.4,
                label=name)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.invert_yaxis()
    ax.set_xlabel("units")
    s = result.summary()
    ax.set_title(f"C-SWAP on {s['model']} (α={s['alpha']}): {s['params_removed_pct']:.1f}% of parameters removed",
                 fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    return ax


def plot_session_progress(session, ax: Axes | None = None) -> Axes:
    """Where a :class:`cswap_nb.PruneSession` stands: per unit layer, the units tested and kept, tested and
    removed, and not tested yet, from the records its :meth:`~cswap_nb.PruneSession.steps` has yielded so
    far. Redraw it while stepping to watch the loop (notebook 01)."""
    ax = ax or _new_ax((7.5, 0.35 * len(session.layers) + 1.2))
    names = [layer.name for layer in session.layers]
    kept = dict.fromkeys(names, 0)
    removed = dict.fromkeys(names, 0)
    if session.records:
        done = pd.DataFrame(session.records)
        done = done.assign(units=unit_sizes(done)).groupby(["layer", "pruned"]).units.sum()
        for (layer, pruned), n in done.items():
            (removed if pruned else kept)[layer] += int(n)
    sizes = {layer.name: layer.size for layer in session.layers}
    untested = {name: sizes[name] - kept[name] - removed[name] for name in names}
    left = [0] * len(names)
    for label, counts, colour in (("tested, kept", kept, LABEL_COLOURS["critical"]),
                                  ("tested, removed", removed, LABEL_COLOURS["neutral"]),
                                  ("not tested yet", untested, "white")):
        values = [counts[name] for name in names]
        ax.barh(names, values, left=left, color=colour, edgecolor="#4a5568", linewidth=0.4, label=label)
        left = [a + b for a, b in zip(left, values)]
    ax.invert_yaxis()
    ax.set_xlabel("units")
    total = session.total_steps
    ax.set_title(f"step {len(session.records)}" + (f" of {total}" if total is not None else "") +
                 f": {sum(removed.values())} units removed, {sum(kept.values())} kept", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return ax


def _split_of(records: list[dict], split: str | None) -> str | None:
    """Where the records' metric was measured: ``split`` when given, else a ``"split"`` entry the records
    carry (records of :func:`cswap_nb.experiments.compare_methods` carry none: they are measured on whatever
    ``eval_data`` the caller passed), else None."""
    if split is not None:
        return split
    return next((r["split"] for r in records if r.get("split")), None)


def _metric_label(records: list[dict], split: str | None) -> str:
    """The axis label of the records' metric, e.g. "validation top1 accuracy (%)"; without a known split,
    just the metric ("top1 accuracy (%)")."""
    metric = records[0]["metric_name"].replace("_pct", "").replace("_", " ")
    split = _split_of(records, split)
    return f"{split} {metric} (%)" if split else f"{metric} (%)"


def plot_accuracy_vs_removed(records: list[dict], ax: Axes | None = None, split: str | None = None) -> Axes:
    """The metric after pruning vs % of parameters removed, one series per method.

    The dense model's metric is the dashed line (the poster's Figure 2 layout). ``split`` names where
    the metric was measured (``"test"``, ``"validation"``) in the axis label; by default the records'
    own ``"split"`` entry if they have one, else no split is named.
    """
    ax = ax or _new_ax((7, 4.5))
    methods = list(dict.fromkeys(r["method"] for r in records))
    for m in methods:
        pts = sorted((r["params_removed_pct"], r["metric_after"]) for r in records if r["method"] == m)
        style = dict(marker="*", markersize=13, color="#c53030", zorder=5) if m == "cswap" else dict(marker="o")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label="C-SWAP" if m == "cswap" else m,
                linestyle="-" if len(pts) > 1 else "none", **style)
    dense = records[0]["metric_before"]
    ax.axhline(dense, linestyle="--", color="black", linewidth=1, label="original model")
    ax.set_xlim(0, 100)  # panels of different models stay comparable; a lone point is not zoomed into
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel(_metric_label(records, split))
    ax.set_title(f"{records[0]['model']}: one-shot pruning, no fine-tuning", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="lower left", ncol=2)
    return ax


def plot_spread(records: list[dict], budget: str = "same-params", ax: Axes | None = None,
                split: str | None = None) -> Axes:
    """The metric after pruning per method over calibration draws (seaborn): one dot per seed,
    the mean with ± 1 sd bars, the dense model dashed; tick labels give % parameters removed
    (mean ± sd). A difference smaller than the bars is calibration luck, not a method.

    At ``budget="same-per-layer-counts"`` C-SWAP's own runs (recorded at ``same-params``) are drawn
    too, since the baselines copy their allocation (:func:`cswap_nb.experiments.at_budget`). ``split``
    names where the metric was measured (``"test"``, ``"validation"``) in the axis label; by default
    the records' own ``"split"`` entry if they have one, else no split is named."""
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame([{"method": "C-SWAP" if r["method"] == "cswap" else r["method"], "seed": r.get("seed", 0),
                        "metric": r["metric_after"], "removed": r["params_removed_pct"]}
                       for r in at_budget(records, budget)])
    if df.empty:
        raise ValueError(f"no records at budget {budget!r}")
    order = df.groupby("method").metric.mean().sort_values(ascending=False).index.tolist()
    ax = ax or _new_ax((max(5.0, 0.9 * len(order) + 2), 4.2))
    palette = {m: ("#c53030" if m == "C-SWAP" else "#4a5568") for m in order}
    sns.stripplot(df, x="method", y="metric", order=order, hue="method", palette=palette, ax=ax, size=5, alpha=0.6,
                  jitter=0.12, legend=False)
    sns.pointplot(df, x="method", y="metric", order=order, errorbar="sd", color="black", linestyle="none",
                  markers="_", markersize=18, capsize=0.25, err_kws={"linewidth": 1.2}, ax=ax)
    ax.axhline(records[0]["metric_before"], linestyle="--", color="black", linewidth=1, label="original model")
    removed = df.groupby("method").removed.agg(["mean", "std"])
    ax.set_xticks(range(len(order)), [f"{m}\n{removed.loc[m, 'mean']:.1f}"
                                      + (f" ± {removed.loc[m, 'std']:.1f}" if removed.loc[m, "std"] == removed.loc[m, "std"] else "")
                                      + "%" for m in order], fontsize=8)
    ax.set_xlabel("method (parameters removed, mean ± sd)")
    ax.set_ylabel(_metric_label(records, split))
    n = df.seed.nunique()
    ax.set_title(f"{records[0]['model']}, {budget}: {n} calibration draw{'s' if n > 1 else ''} "
                 "(dots), mean ± sd", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="lower left")
    return ax


def plot_unit_scores(effects, unit: int, ax: Axes | None = None, class_names: list[str] | None = None) -> Axes:
    """Per class: the true-class scores of the calibration samples with (left) and without (right) one unit;
    ``class_names`` labels the classes (default: their indices)."""
    import numpy as np

    ax = ax or _new_ax((8, 3.8))
    i = effects.units.index(unit)
    y = effects.y.numpy()
    classes = sorted(np.unique(y).tolist())
    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        idx = np.flatnonzero(y == c)
        for offset, values, colour in ((-0.18, effects.q_ref.numpy()[idx], "#2b6cb0"),
                                       (0.18, effects.q_removed[i].numpy()[idx], "#e53e3e")):
            ax.scatter(k + offset + rng.uniform(-0.06, 0.06, len(idx)), values, s=8, color=colour, alpha=0.7)
            ax.hlines(values.mean(), k + offset - 0.12, k + offset + 0.12, color="black", linewidth=1.2)
    if class_names is None:
        ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    else:
        ax.set_xticks(range(len(classes)), [class_names[c] for c in classes], fontsize=8)
    ax.set_xlabel("class")
    ax.set_ylabel("true-class score q(x)")
    ax.scatter([], [], color="#2b6cb0", label="dense model")
    ax.scatter([], [], color="#e53e3e", label=f"unit {unit} removed")
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(f"{effects.layer}, unit {unit}: scores per class (bars: means)", fontsize=10)
    return ax


def plot_pvalues(table, unit: int, alpha: float, test: str = "welch", ax: Axes | None = None) -> Axes:
    """Per-class one-sided p-values of one unit, on a log scale, with the level α."""
    ax = ax or _new_ax((7, 3.5))
    sub = table[(table.unit == unit) & (table.test == test)]
    k = range(len(sub))
    ax.bar([i - 0.2 for i in k], sub.p_lower.clip(lower=1e-16), width=0.4, color=LABEL_COLOURS["critical"],
           label="removal lowers q")
    ax.bar([i + 0.2 for i in k], sub.p_raise.clip(lower=1e-16), width=0.4, color=LABEL_COLOURS["detrimental"],
           label="removal raises q")
    ax.axhline(alpha, linestyle="--", color="black", linewidth=1, label=f"α = {alpha}")
    ax.set_yscale("log")
    ax.set_xticks(list(k), [str(c) for c in sub["class"]])
    ax.set_xlabel("class")
    ax.set_ylabel("p-value")
    ax.set_title(f"unit {unit}, {test} test: a p-value below α in any class decides", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return ax


def plot_pvalue_heatmap(table, alpha: float, test: str = "welch", units: list[int] | None = None,
                        class_names: list[str] | None = None, ax: Axes | None = None) -> Axes:
    """Per-class p-values of "removal lowers q" for many units at once (seaborn heatmap).

    Rows: units, most harmful first (smallest p-value in any class); columns: classes;
    colour: log10 p. Cells below α are outlined: one such cell makes the unit critical.
    ``units`` limits the rows (e.g. the 12 most and 12 least harmful).
    """
    import numpy as np
    import seaborn as sns
    from matplotlib.patches import Rectangle

    sub = table[table.test == test]
    grid = sub.pivot(index="unit", columns="class", values="p_lower").clip(lower=1e-12)
    grid = grid.loc[grid.min(axis=1).sort_values().index]
    if units is not None:
        grid = grid.loc[[u for u in grid.index if u in set(units)]]
    if class_names is not None:
        grid.columns = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in grid.columns]
    ax = ax or _new_ax((8, max(3.0, 0.22 * len(grid) + 1.2)))
    sns.heatmap(np.log10(grid), ax=ax, cmap="mako", vmin=-12, vmax=0, cbar_kws={"label": "log10 p (removal lowers q)"})
    rows, cols = np.nonzero(grid.to_numpy() < alpha)
    for r, c in zip(rows, cols):
        ax.add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor="#f6ad55", linewidth=1.5))
    ax.set_xlabel("class")
    ax.set_ylabel("unit")
    ax.set_title(f"{test} test, per class: outlined cells have p < α = {alpha}", fontsize=10)
    return ax


def plot_labels_vs_alpha(counts, test: str = "welch", ax: Axes | None = None) -> Axes:
    """How many units of a layer each label gets as α varies (stacked, log-scale α)."""
    ax = ax or _new_ax((6.5, 3.8))
    sub = counts[counts.test == test].sort_values("alpha")
    ax.stackplot(sub.alpha, *[sub[k] for k in LABEL_COLOURS], labels=list(LABEL_COLOURS),
                 colors=list(LABEL_COLOURS.values()), alpha=0.9)
    ax.set_xscale("log")
    ax.set_xlabel("α")
    ax.set_ylabel("units")
    ax.set_title(f"labels vs α ({test} test)", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="center left")
    return ax


def plot_allocation(records: list[dict], budget: str = "same-params", ax: Axes | None = None) -> Axes:
    """Units removed per layer by each method at one budget (where each method cut)."""
    import numpy as np

    ax = ax or _new_ax((8, 4))
    rows = [r for r in records if r["budget"] == budget]
    layers = [p["layer"] for p in rows[0]["per_layer"]]
    width = 0.8 / max(1, len(rows))
    for k, r in enumerate(rows):
        removed = [p["removed"] for p in r["per_layer"]]
        ax.bar(np.arange(len(layers)) + k * width - 0.4 + width / 2, removed, width=width,
               label="C-SWAP" if r["method"] == "cswap" else r["method"])
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("units removed")
    what = {"same-params": "same parameter count", "same-per-layer-counts": "C-SWAP's per-layer counts"}.get(budget, budget)
    ax.set_title(f"where each method removed units ({what})", fontsize=10)
    ax.legend(fontsize=7, frameon=False, ncol=3)
    return ax


def plot_attribution(model, x, target: int, ax: Axes | None = None, title: str = "") -> Axes:
    """Captum Integrated Gradients of the target logit w.r.t. the input pixels, summed over channels."""
    from captum.attr import IntegratedGradients

    ax = ax or _new_ax((3, 3))
    model = model.eval()
    attr = IntegratedGradients(model).attribute(x[None], baselines=x[None] * 0, target=int(target), n_steps=32)
    heat = attr[0].sum(0).detach().numpy()
    lim = abs(heat).max() or 1.0
    ax.imshow(heat, cmap="bwr", vmin=-lim, vmax=lim)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return ax


def plot_strategy_costs(rows, ax: Axes | None = None) -> Axes:
    """Forward passes over the calibration set spent by each strategy (log scale)."""
    ax = ax or _new_ax((6, 3.5))
    names = [r["strategy"] for r in rows]
    ax.barh(names, [max(r["forward_passes"], 1e-1) for r in rows], color="#4a5568")
    ax.set_xscale("log")
    ax.set_xlabel("forward passes over the calibration set")
    ax.invert_yaxis()
    return ax


def plot_attention_maps(maps, heads: list[int] | None = None, ax: Axes | None = None, title: str = "") -> Axes:
    """One image's attention maps, one tile per head, side by side on one axis.

    ``maps``: ``(heads, grid_h, grid_w)`` (e.g. ``cswap_nb.experiments.effects.attention_maps(model, x)[0]``);
    ``heads``: the original index of each head (after head pruning, the kept ones).
    Each tile has its own colour scale (brighter = more attention).
    """
    import numpy as np

    maps = np.asarray(maps.detach().cpu() if hasattr(maps, "detach") else maps, dtype=float)
    n, gh, gw = maps.shape
    heads = list(range(n)) if heads is None else list(heads)
    if len(heads) != n:
        raise ValueError(f"{n} maps but {len(heads)} head labels")
    ax = ax or _new_ax((1.6 * n + 0.5, 2.2))
    gap = 1
    mosaic = np.full((gh, n * (gw + gap) - gap), np.nan)
    for i, m in enumerate(maps):
        lo, hi = m.min(), m.max()
        mosaic[:, i * (gw + gap) : i * (gw + gap) + gw] = (m - lo) / (hi - lo) if hi > lo else 0.0
    ax.imshow(mosaic, cmap="magma", vmin=0, vmax=1)
    ax.set_xticks([i * (gw + gap) + (gw - 1) / 2 for i in range(n)], [f"head {h}" for h in heads], fontsize=8)
    ax.set_yticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=9)
    return ax


def plot_group_sizes(rows, ax: Axes | None = None, split: str = "test") -> Axes:
    """Neuron groups: what testing ``g`` units at a time costs and gives.

    ``rows``: one dict per run with ``group_size``, ``tests`` (causal tests run),
    ``params_removed_pct`` and ``metric_after`` (and optionally ``metric_before``, drawn
    dashed), measured on the ``split`` named in the legend. Accuracy and % parameters removed share the left axis; the number of tests
    (the cost, one forward pass of the rest of the network each) is on a log right axis.
    """
    ax = ax or _new_ax((7, 4))
    rows = sorted(rows, key=lambda r: r["group_size"])
    g = [r["group_size"] for r in rows]
    ax.plot(g, [r["metric_after"] for r in rows], marker="o", color="#c53030", label=f"{split} accuracy after (%)")
    ax.plot(g, [r["params_removed_pct"] for r in rows], marker="s", color="#2b6cb0", label="parameters removed (%)")
    if rows and rows[0].get("metric_before") is not None:
        ax.axhline(rows[0]["metric_before"], linestyle="--", color="black", linewidth=1, label="original accuracy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(g, [str(v) for v in g])
    ax.set_xlabel("group size g (units tested together in wide MLP layers)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    cost = ax.twinx()
    cost.bar(g, [r["tests"] for r in rows], width=[0.35 * v for v in g], color="#a0aec0", alpha=0.5,
             label="causal tests run")
    cost.set_yscale("log")
    cost.set_ylabel("causal tests run (log)")
    ax.set_zorder(cost.get_zorder() + 1)
    ax.patch.set_visible(False)
    lines, labels = ax.get_legend_handles_labels()
    bars, bar_labels = cost.get_legend_handles_labels()
    ax.legend(lines + bars, labels + bar_labels, fontsize=8, frameon=False, loc="lower left")
    ax.set_title("neuron groups: fewer tests, coarser decisions", fontsize=10)
    return ax


def predict_masks(model, x, size=None, batch_size: int = 16):
    """Per-pixel argmax of a segmentation model, logits upsampled bilinearly to ``size`` (default: the input's)."""
    import torch

    size = tuple(size or x.shape[-2:])
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for (xb,) in tensor_batches(batch_size, x):
                logits = model(xb)
                out.append(upsample_logits(logits, size).argmax(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def plot_scenes(x, rows: dict, n: int = 4, figsize_per: tuple[float, float] = (2.6, 1.45)) -> Figure:
    """A grid of road scenes: the images on top, then one row per entry of ``rows``
    (title -> label masks (N, H, W), e.g. ground truth and predictions), in Cityscapes colours."""
    n = min(n, len(x))
    fig = Figure(figsize=(figsize_per[0] * n, figsize_per[1] * (len(rows) + 1)), layout="constrained")
    axes = fig.subplots(len(rows) + 1, n, squeeze=False)
    images = denormalize(x[:n]).permute(0, 2, 3, 1).numpy()
    for j in range(n):
        axes[0, j].imshow(images[j])
        for i, masks in enumerate(rows.values(), start=1):
            axes[i, j].imshow(colorize(masks[j]))
    for i, title in enumerate(["image", *rows]):
        axes[i, 0].set_ylabel(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def plot_removed_by_group(result, group_of, ax: Axes | None = None) -> Axes:
    """Units kept and removed per group of layers (e.g. DDRNet's branches, ``cswap_nb.models.ddrnet.branch_of``)."""
    ax = ax or _new_ax((7, 3.2))
    groups: dict[str, list[int]] = {}
    for row in result.per_layer.itertuples():
        g = groups.setdefault(group_of(row.layer), [0, 0])
        g[0] += row.removed
        g[1] += row.kept
    names = list(groups)
    removed = [groups[g][0] for g in names]
    kept = [groups[g][1] for g in names]
    ax.barh(names, kept, color=LABEL_COLOURS["critical"], label="kept")
    ax.barh(names, removed, left=kept, color=LABEL_COLOURS["neutral"], label="removed")
    for i, (r, k) in enumerate(zip(removed, kept)):
        ax.text(r + k, i, f" {100 * r / max(r + k, 1):.0f}% removed", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("units")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.set_title(f"{result.model_name}: where C-SWAP removed units", fontsize=10)
    return ax


def plot_stage_profile(profile, ax: Axes | None = None, title: str = "") -> Axes:
    """The shares of parameters, MACs and time per stage of a :func:`cswap_nb.experiments.bench.stage_profile`,
    as grouped bars (notebook 00, the gallery)."""
    ax = ax or _new_ax((10, 3.8))
    profile.set_index("stage")[["params_pct", "macs_pct", "ms_pct"]].rename(
        columns={"params_pct": "parameters", "macs_pct": "MACs", "ms_pct": "time (batch 64)"}).plot.bar(ax=ax, rot=0)
    ax.set_ylabel("% of the dense model's total")
    ax.set_title(title or "where the dense model's parameters, MACs and time go, stage by stage", fontsize=10)
    return ax
