"""How fast can this machine run a checkpoint's convolutions? The ceiling on an engine's rate per FLOP.

    python benchmarks/conv_rates.py [NAME ...] [--batches 20,40,200] [--repeats 10]

An engine's speed-up over the naive one is its work ratio (FLOPs skipped) times the ratio of the rates at
which the two engines run the FLOPs they do (cswap_nb/METHOD.md §10). This prints what bounds an engine's
rate on this machine: a large square matrix product in float32 and bfloat16, then, per checkpoint and batch
size, every convolution of the network alone (its own input shape, channels-last as the toolkit runs it,
nothing between two convs), in GFLOP/s, by kind (depthwise, other grouped, pointwise 1x1, k x k), with each
kind's share of the convs' time at that batch size.
"""
from __future__ import annotations

import argparse
import collections
import time

import torch

import cswap_nb as cs
from cswap_nb.core.units import is_depthwise


def seconds(f, repeats: int) -> float:
    f()
    t0 = time.perf_counter()
    for _ in range(repeats):
        f()
    return (time.perf_counter() - t0) / repeats


def peak(repeats: int) -> None:
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    for dtype in (torch.float32, torch.bfloat16):
        x, w = a.to(dtype), b.to(dtype)
        print(f"matrix product {n} x {n}, {dtype}: {2 * n**3 / seconds(lambda: x @ w, repeats) / 1e9:.0f} GFLOP/s")


def convs(name: str, batches: list[int], repeats: int) -> None:
    model, data = cs.zoo.load(name)
    model.eval()
    found = []
    hooks = [m.register_forward_hook(lambda m, i, o: found.append((m, i[0].shape[1:])))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(data.calib.x[:2])
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for batch in batches:
            by_kind = collections.defaultdict(lambda: [0.0, 0.0])  # kind -> seconds, FLOPs
            for conv, shape in found:
                kind = ("depthwise" if is_depthwise(conv) else "grouped" if conv.groups > 1 else
                        "pointwise" if conv.kernel_size == (1, 1) else "k x k")
                x = torch.randn(batch, *shape).contiguous(memory_format=torch.channels_last)
                conv = conv.to(memory_format=torch.channels_last)
                out = conv(x)
                flops = 2 * out.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
                by_kind[kind][0] += seconds(lambda: conv(x), repeats)
                by_kind[kind][1] += flops
            total = sum(s for s, _ in by_kind.values()), sum(f for _, f in by_kind.values())
            parts = ", ".join(f"{k} {f / s / 1e9:.0f} ({s / total[0]:.0%} of the time)"
                              for k, (s, f) in by_kind.items())
            print(f"{name}, {batch} images: all convs {total[1] / total[0] / 1e9:.0f} GFLOP/s; {parts}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=["resnet18-fashion", "mobilenetv2-fashion", "resnet50-fashion"])
    ap.add_argument("--batches", default="20,40,200")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    print(f"{torch.get_num_threads()} threads")
    peak(args.repeats)
    for name in args.names:
        convs(name, [int(b) for b in args.batches.split(",")], args.repeats)


if __name__ == "__main__":
    main()
