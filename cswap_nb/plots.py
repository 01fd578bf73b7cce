"""Figures. One function per figure; each draws on a given axis and returns it.

Nothing is set globally; without an ``ax`` a new :class:`matplotlib.figure.Figure` is made
(no pyplot state), so the functions work the same in notebooks, scripts and the CLI.
"""
from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

LABEL_COLOURS = {"critical": "#2b6cb0", "neutral": "#a0aec0", "detrimental": "#e53e3e"}


def _new_ax(figsize=(7.5, 4.5)) -> Axes:
    return Figure(figsize=figsize, layout="constrained").add_subplot()


def plot_layer_labels(result, ax: Axes | None = None) -> Axes:
    """Units kept/removed per layer, coloured by causal label (one bar per unit layer).

    Critical units are kept; neutral and detrimental ones are removed. Units kept only
    because they were the last of their layer are drawn hatched.
    """
    ax = ax or _new_ax()
    df = result.labels
    layers = [layer["name"] for layer in result.layers]
    bottoms = [0] * len(layers)
    parts = [
        ("critical (kept)", lambda s: (s.label == "critical").sum(), LABEL_COLOURS["critical"], None),
        ("not critical, kept as last unit", lambda s: ((s.label != "critical") & ~s.pruned).sum(), "white", "//"),
        ("neutral (removed)", lambda s: ((s.label == "neutral") & s.pruned).sum(), LABEL_COLOURS["neutral"], None),
        ("detrimental (removed)", lambda s: ((s.label == "detrimental") & s.pruned).sum(),
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


def plot_accuracy_vs_removed(records: list[dict], ax: Axes | None = None) -> Axes:
    """Test metric after pruning vs % of parameters removed, one series per method.

    The dense model's metric is the dashed line (the poster's Figure 2 layout).
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
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel(f"test {records[0]['metric_name'].replace('_pct', '').replace('_', ' ')} (%)")
    ax.set_title(f"{records[0]['model']}: one-shot pruning, no fine-tuning", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="lower left", ncol=2)
    return ax
