"""Benchmarks that print numbers: analysis engines side by side, dense vs pruned latency.

Figures are ratios measured in one process, alternating the contenders, medians of
repeats: this is how they stay meaningful on a noisy 2-core machine.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from .api import prune
from .surgery import count_macs


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """The machine's float32 matmul throughput (median of repeats), GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
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


def bench_engines(model: nn.Module, calib, rounds: int = 2, **prune_kwargs) -> dict:
    """Run the C-SWAP analysis with the naive and the fast engine, alternating.

    Returns seconds (median over rounds) of each, their ratio, forward-equivalents
    computed, achieved GFLOP/s against the machine's matmul GFLOP/s, and whether the
    labels of every unit are identical between the engines (they must be).
    """
    runs: dict[str, list] = {"naive": [], "fast": []}
    for _ in range(rounds):
        for engine in ("naive", "fast"):
            runs[engine].append(prune(model, calib, engine=engine, progress=False, **prune_kwargs))
    out = {"matmul_gflops": matmul_gflops()}
    ref = runs["naive"][0]
    for engine, results in runs.items():
        r = results[0]
        seconds = statistics.median(res.analysis_seconds for res in results)
        fe = r.engine["forward_equivalents"]
        flops = 2.0 * r.macs_before * r.calib_samples * fe
        out[engine] = {"analysis_seconds": seconds, "forward_equivalents": fe,
                       "gflops_achieved": flops / seconds / 1e9, "fallback": r.engine["fallback"]}
    out["speedup"] = out["naive"]["analysis_seconds"] / out["fast"]["analysis_seconds"]
    cols = ["layer", "unit", "label", "pruned"]
    out["identical_labels"] = all(res.labels[cols].equals(ref.labels[cols]) for rs in runs.values() for res in rs)
    out["units"] = len(ref.labels)
    out["params_removed_pct"] = ref.params_removed_pct
    out["_result"] = runs["fast"][0]
    return out


def run(model_name: str, rounds: int = 2, latency_repeats: int = 50) -> dict:
    from . import zoo

    torch.manual_seed(0)
    model, data = zoo.load(model_name)
    engines = bench_engines(model, data.calib, rounds=rounds)
    res = engines.pop("_result")
    x = data.test.x
    lat = [compare_latency(model, res.model, x[:1], latency_repeats),
           compare_latency(model, res.model, x[:64], max(10, latency_repeats // 5))]
    return {"model": model_name, "threads": torch.get_num_threads(), **engines,
            "macs_before": res.macs_before, "macs_after": res.macs_after, "latency": lat,
            "count_macs_check": count_macs(res.model, x[:1]) == res.macs_after}


def format_report(r: dict) -> str:
    n, f = r["naive"], r["fast"]
    lines = [
        f"bench {r['model']} ({r['threads']} threads, {r['units']} units, matmul {r['matmul_gflops']:.1f} GFLOP/s)",
        f"{'engine':8s}{'analysis s':>12s}{'fwd-equiv':>11s}{'GFLOP/s':>9s}{'of matmul':>11s}",
    ]
    for name, e in (("naive", n), ("fast", f)):
        lines.append(f"{name:8s}{e['analysis_seconds']:>12.2f}{e['forward_equivalents']:>11.1f}"
                     f"{e['gflops_achieved']:>9.2f}{100 * e['gflops_achieved'] / r['matmul_gflops']:>10.1f}%")
    lines.append(f"fast engine speed-up: {r['speedup']:.2f}x   identical labels: {r['identical_labels']}"
                 + (f"   (fast fell back: {f['fallback']})" if f["fallback"] else ""))
    for lat in r["latency"]:
        lines.append(f"latency batch {lat['batch']:>3d}: dense {lat['dense_ms']:.2f} ms, pruned "
                     f"{lat['pruned_ms']:.2f} ms, speed-up {lat['speedup']:.2f}x")
    lines.append(f"params removed {r['params_removed_pct']:.1f}%, MACs {r['macs_before']:,} -> {r['macs_after']:,}")
    return "\n".join(lines)
