"""Benchmarks that print numbers: analysis engines side by side, dense vs pruned latency.

Figures are ratios measured in one process, alternating the contenders, medians of
repeats: this is how they stay meaningful on a noisy 2-core machine.
"""
from __future__ import annotations

import statistics
import time

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .. import zoo
from ..pruning.api import prune
from ..pruning.session import full_float32
from ..core.config import ENGINES, EVALUATIONS
from ..core.surgery import EXTRA_FLOP_FORMULAS, count_macs, count_params


def matmul_gflops(n: int = 1024, repeats: int = 10, device: torch.device | str = "cpu") -> float:
    """The float32 matmul throughput of ``device`` (median of repeats), GFLOP/s. On a GPU, n = 4096 and full
    float32 (no TF32, as the analysis runs: cswap_nb.pruning.session)."""
    device = torch.device(device)
    n = 4096 if device.type == "cuda" else n
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    with full_float32():
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def latency(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward pass on ``x`` (after two warm-up passes)."""
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            model(x)
            if x.is_cuda:  # kernels run asynchronously: wait for them before reading the clock
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stage_profile(model: nn.Module, x: torch.Tensor, repeats: int = 10) -> pd.DataFrame:
    """Where a model's parameters, MACs and time go, per top-level child module (a "stage": the stem, each
    ResNet ``layerN``, the head, ...), on the batch ``x``.

    Columns: ``stage``, ``output`` (the stage's output shape for one sample), ``params``, ``macs`` (per
    sample, torch's FLOP counter / 2, as :func:`~cswap_nb.core.surgery.count_macs`), ``ms`` (the median
    over ``repeats`` passes of the stage's wall time on the whole batch, read between forward hooks) and
    each as a share of the model's total (``params_pct``, ``macs_pct``, ``ms_pct``). Stages without
    parameters or time (an identity) are kept, and what belongs to the model itself rather than to a child
    (a ViT's position embedding and class token, an operation written in its ``forward``) is the row
    ``"(model itself)"``, so parameters and MACs add up to the model's (its ``ms`` is the whole pass's time
    outside the children). The model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    children = list(model.named_children())
    # on a GPU the kernels run asynchronously: each clock reading waits for them
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    shapes, starts, spent = {}, {}, {name: [] for name, _ in children}
    def before(name):
        def hook(_module, _args):
            sync()
            starts[name] = time.perf_counter()
        return hook

    def after(name):
        def hook(_module, _args, out):  # returns None: the output is left as it is
            sync()
            spent[name].append(time.perf_counter() - starts[name])
            shapes[name] = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None
        return hook

    handles = []
    for name, child in children:
        handles.append(child.register_forward_pre_hook(before(name)))
        handles.append(child.register_forward_hook(after(name)))
    whole = []
    try:
        with torch.inference_mode():
            with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
                model(x[:1])
            for name in spent:
                spent[name].clear()
            for _ in range(repeats + 2):
                t0 = time.perf_counter()
                model(x)
                sync()
                whole.append(time.perf_counter() - t0)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    flops = counter.get_flop_counts()  # keyed by "<model class>.<child>[.<grandchild>...]", and "Global"
    rows = []
    for name, child in children:
        times = spent[name][2:] or [0.0]
        rows.append({"stage": name, "output": shapes.get(name),
                     "params": count_params(child),
                     "macs": sum(next((v for k, v in flops.items() if k.count(".") == 1
                                       and k.split(".", 1)[1] == name), {}).values()) // 2,
                     "ms": 1e3 * statistics.median(times)})
    own_params = count_params(model) - sum(r["params"] for r in rows)
    own_macs = sum(flops.get("Global", {}).values()) // 2 - sum(r["macs"] for r in rows)
    own_ms = 1e3 * statistics.median(whole[2:] or [0.0]) - sum(r["ms"] for r in rows)
    if own_params or own_macs:
        rows.append({"stage": "(model itself)", "output": None, "params": own_params, "macs": own_macs,
                     "ms": max(own_ms, 0.0)})
    table = pd.DataFrame(rows)
    for col in ("params", "macs", "ms"):
        total = table[col].sum()
        table[f"{col}_pct"] = 100 * table[col] / total if total else 0.0
    return table


def heaviest_stages(profile: pd.DataFrame) -> dict[str, str]:
    """The stage of a :func:`stage_profile` holding the most ``params``, ``macs`` and ``ms``."""
    return {col: profile.loc[profile[col].idxmax(), "stage"] for col in ("params", "macs", "ms")}


def compare_latency(dense: nn.Module, pruned: nn.Module, x: torch.Tensor, repeats: int) -> dict:
    """Dense vs pruned latency, alternating the two models between rounds."""
    rounds = 5
    d, p = [], []
    for _ in range(rounds):
        d.append(latency(dense, x, max(1, repeats // rounds)))
        p.append(latency(pruned, x, max(1, repeats // rounds)))
    dense_s, pruned_s = statistics.median(d), statistics.median(p)
    return {"batch": x.shape[0], "dense_ms": 1e3 * dense_s, "pruned_ms": 1e3 * pruned_s,
            "speedup": dense_s / pruned_s}


def engine_options(spec: str) -> dict:
    """The options of an engine spec of ``bench``: ``fast``, ``naive``, ``parts``, each optionally followed by
    ``-full`` (every class for every candidate) or ``-early`` (decisions class by class) and by ``-static``
    (``compaction="off"``: passes at the dense width) or ``-compact``; e.g. ``fast-full-static``.
    Raises ``ValueError`` for anything else."""
    name, *tokens = spec.split("-")
    words = {**{e: ("evaluation", e) for e in EVALUATIONS}, "static": ("compaction", "off"), "compact": ("compaction", "on")}
    if name not in ENGINES or any(t not in words for t in tokens) or len({words[t][0] for t in tokens}) < len(tokens):
        raise ValueError(f"an engine spec is one of {', '.join(ENGINES)}, optionally with -{' or -'.join(EVALUATIONS)} "
                         f"and -static or -compact (e.g. fast-full-static), got {spec!r}")
    return {"engine": name, **dict(words[t] for t in tokens)}


def images_share(result) -> float:
    """The share of calibration images a candidate was scored on, over the whole run (1: every class of
    every candidate; below 1: decisions taken early, cswap_nb/METHOD.md §10)."""
    labels = result.labels
    if "samples" not in labels or labels.empty:
        return 1.0
    per_pass = result.engine.get("scores_per_pass") or result.calib_samples  # segmentation: (image, class) pairs
    return float(labels.samples.sum()) / (len(labels) * per_pass)


def bench_engines(model: nn.Module, calib, rounds: int = 2, engines: tuple[str, ...] = ("naive", "fast"),
                  **prune_kwargs) -> dict:
    """Run the C-SWAP analysis with each engine (the first is the reference), alternating them.

    Returns per engine the seconds (median over rounds), the forward-equivalents it computed (a
    full pass over the calibration set = 1, counted in FLOPs), the achieved GFLOP/s, the path it
    took and its fallback; ``speedup`` (reference seconds / each engine's), ``work_ratio`` (reference
    forward-equivalents / each engine's: the speed-up FLOPs alone would give), the machine's matmul
    GFLOP/s, and whether every engine's labels equal the reference's on every unit (they must). The analyses
    run where ``model`` and ``calib`` are (:func:`run` moves them to its ``device``).
    """
    runs: dict[str, list] = {e: [] for e in engines}
    for _ in range(rounds):
        for engine in engines:
            runs[engine].append(prune(model, calib, progress=False, **engine_options(engine), **prune_kwargs))
    out = {"matmul_gflops": matmul_gflops(device=next(model.parameters()).device), "engines": list(engines)}
    ref_name = engines[0]
    ref = runs[ref_name][0]
    for engine, results in runs.items():
        r = results[0]
        seconds = statistics.median(res.analysis_seconds for res in results)
        fe = r.engine["forward_equivalents"]
        flops = 2.0 * r.macs_before * r.calib_samples * fe
        out[engine] = {"analysis_seconds": seconds, "forward_equivalents": fe,
                       "evaluation": r.config.get("evaluation"), "images_share": images_share(r),
                       "gflops_achieved": flops / seconds / 1e9, "path": r.engine.get("path"),
                       "fallback": r.engine["fallback"], "layers_on_full_passes": r.engine.get("layers_on_full_passes", {})}
    for engine in engines:
        e = out[engine]
        e["speedup"] = out[ref_name]["analysis_seconds"] / e["analysis_seconds"]
        e["work_ratio"] = out[ref_name]["forward_equivalents"] / e["forward_equivalents"]
    fastest = engines[-1]
    out["speedup"] = out[fastest]["speedup"]
    cols = ["layer", "unit", "label", "pruned"]
    out["identical_labels"] = all(res.labels[cols].equals(ref.labels[cols]) for rs in runs.values() for res in rs)
    out["units"] = len(ref.labels)
    out["params_removed_pct"] = ref.params_removed_pct
    out["_result"] = runs[fastest][0]
    return out


def run(model_name: str, rounds: int = 2, latency_repeats: int = 50,
        engines: tuple[str, ...] = ("naive", "fast"), device: torch.device | str = "cpu") -> dict:
    torch.manual_seed(0)
    model, data = zoo.load(model_name)
    device = torch.device(device)
    model, calib = model.to(device), tuple(t.to(device) for t in data.calib)
    engines = bench_engines(model, calib, rounds=rounds, engines=engines)
    res = engines.pop("_result")
    x = data.test.x.to(device)
    lat = [compare_latency(model, res.model, x[:1], latency_repeats),
           compare_latency(model, res.model, x[:64], max(10, latency_repeats // 5))]
    return {"model": model_name, "threads": torch.get_num_threads(), "device": str(device), **engines,
            "macs_before": res.macs_before, "macs_after": res.macs_after, "latency": lat,
            "count_macs_check": count_macs(res.model, x[:1]) == res.macs_after}


def _where(r: dict) -> str:
    device = r.get("device", "cpu")
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    return f"{r['threads']} threads" if device == "cpu" else device


def format_report(r: dict) -> str:
    names = r.get("engines", ["naive", "fast"])
    lines = [
        f"bench {r['model']} ({_where(r)}, {r['units']} units, matmul {r['matmul_gflops']:.1f} GFLOP/s)",
        f"{'engine':8s}{'path':>7s}{'analysis s':>12s}{'fwd-equiv':>11s}{'GFLOP/s':>9s}{'of matmul':>11s}"
        f"{'speed-up':>10s}{'work ratio':>12s}{'images':>8s}",
    ]
    for name in names:
        e = r[name]
        lines.append(f"{name:8s}{str(e.get('path')):>7s}{e['analysis_seconds']:>12.2f}{e['forward_equivalents']:>11.1f}"
                     f"{e['gflops_achieved']:>9.2f}{100 * e['gflops_achieved'] / r['matmul_gflops']:>10.1f}%"
                     f"{e['speedup']:>9.2f}x{e['work_ratio']:>11.2f}x{100 * e.get('images_share', 1.0):>7.0f}%")
    lines.append(f"speed-up of {names[-1]} over {names[0]}: {r['speedup']:.2f}x   identical labels: {r['identical_labels']}")
    lines.append("(work ratio: the speed-up that the FLOPs skipped alone would give; images: the share of the "
                 "calibration images a candidate was scored on, below 100% where decisions were taken early)")
    for name in names:
        if r[name]["fallback"]:
            lines.append(f"{name} fell back: {r[name]['fallback']}")
        if r[name].get("layers_on_full_passes"):
            lines.append(f"{name}: layers on full passes: {r[name]['layers_on_full_passes']}")
    for lat in r["latency"]:
        lines.append(f"latency batch {lat['batch']:>3d}: dense {lat['dense_ms']:.2f} ms, pruned "
                     f"{lat['pruned_ms']:.2f} ms, speed-up {lat['speedup']:.2f}x")
    lines.append(f"params removed {r['params_removed_pct']:.1f}%, MACs {r['macs_before']:,} -> {r['macs_after']:,}")
    return "\n".join(lines)
