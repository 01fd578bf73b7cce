"""A 1x1 conv over a few positions: oneDNN's conv against a matrix product on the channels-last view, the way
the graph engine runs it (``cswap_nb.engines.graph._pointwise``, cswap_nb/METHOD.md §10).

    python benchmarks/pointwise_conv.py [--calls 300]

For shapes a DenseNet's candidates meet at 64 px (4 images, or 32 rows: a chain of 8 candidates; 2x2 to 8x8
maps; 1x1 convs reading a concatenation), prints microseconds per call of the conv on channels-last and on
contiguous input, of the product, and of both over a third of the input channels (a thin layer), side by side
in one process, and the largest difference of the outputs.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from cswap_nb.engines.graph import _pointwise

SHAPES = [(4, 1200, 128, 2), (32, 1200, 128, 2), (4, 700, 128, 4), (32, 700, 128, 4), (32, 300, 128, 8),
          (32, 128, 32, 2), (200, 256, 64, 7), (200, 64, 256, 7)]


def per_call(fn, calls: int) -> float:
    for _ in range(20):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=300)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    print(f"{'rows x in x px -> out':>26s}{'conv NHWC':>11s}{'conv NCHW':>11s}{'product':>9s}{'ratio':>7s}"
          f"{'thin conv':>11s}{'thin prod':>11s}{'ratio':>7s}{'max diff':>10s}")
    for b, c, o, hw in SHAPES:
        conv = nn.Conv2d(c, o, 1, bias=False)
        x = torch.randn(b, c, hw, hw).contiguous(memory_format=torch.channels_last)
        xc = x.contiguous()
        kept = torch.arange(0, c, 3)
        conv_t = per_call(lambda: conv(x), args.calls)
        nchw = per_call(lambda: conv(xc), args.calls)
        prod = per_call(lambda: _pointwise(conv, x), args.calls)
        thin_c = per_call(lambda: F.conv2d(x.index_select(1, kept), conv.weight.index_select(1, kept)), args.calls)
        thin_p = per_call(lambda: _pointwise(conv, x, kept), args.calls)
        diff = float((conv(x) - _pointwise(conv, x)).abs().max())
        print(f"{f'{b} x {c} x {hw}x{hw} -> {o}':>26s}{conv_t:>11.0f}{nchw:>11.0f}{prod:>9.0f}{conv_t / prod:>7.2f}"
              f"{thin_c:>11.0f}{thin_p:>11.0f}{thin_c / thin_p:>7.2f}{diff:>10.1g}", flush=True)


if __name__ == "__main__":
    main()
