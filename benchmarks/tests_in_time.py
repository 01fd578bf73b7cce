"""How many causal tests a default C-SWAP analysis of a random-weight torchvision model runs in a fixed time:
a quick comparison of engine options on models too slow to finish (DenseNet, EfficientNetV2).

    python benchmarks/tests_in_time.py [--model densenet121] [--seconds 60] [--compaction on|off] [--profile]
                                       [--no-thin] [--no-chain] [--device cuda] [--size 224 --images 400 --k 20]

The model and calibration set are those of ``benchmarks/prunability.py --cswap`` (``num_classes=10``, 64 px,
120 random images labelled by the model, the classes it predicts at least 4 times, ``samples_per_class=4``).
Prints the session's set-up time, the tests run in ``--seconds`` of analysis (the engine is built on the
first test, so its plan checks count), the work in dense passes, what compaction did and, per block of
layers, the tests run, their seconds and the time a test; ``--profile`` adds
cProfile's top functions by internal and by cumulative time. ``--no-thin`` and ``--no-chain`` switch off the
fast engine's thin layers and chains of removals (``benchmarks/engine_levers.py``). ``--device``, ``--size``,
``--images`` and ``--k`` (samples per class) measure other set-ups: a full-size model at 224 px on a GPU. It
also prints the dense work's rate: the MACs of the dense passes the analysis counted, per second.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import time
import warnings

import torch
import torchvision

import cswap_nb as cs
from cswap_nb.core.surgery import count_macs
from cswap_nb.engines.graph import GraphEngine
from cswap_nb.pruning.descent import ClassByClass


def random_model(arch: str, size: int = 64, images: int = 120, k: int = 4):
    """The random-weight torchvision model ``arch`` (``num_classes=10``) and its calibration set: ``images``
    random ``size``-px images labelled by the model, those of the classes it predicts at least ``k`` times."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
    x = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = torch.cat([model(x[i : i + 40]) for i in range(0, images, 40)]).argmax(1)
    labels, counts = y.unique(return_counts=True)
    keep = torch.isin(y, labels[counts >= k])
    return model, (x[keep], y[keep])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="densenet121")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--compaction", default=None, choices=["on", "off"])
    p.add_argument("--profile", action="store_true")
    p.add_argument("--no-thin", action="store_true")
    p.add_argument("--no-chain", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=120)
    p.add_argument("--k", type=int, default=4, help="samples per class")
    args = p.parse_args(argv)
    if args.no_thin:
        GraphEngine.thin_below = 0.0
    if args.no_chain:
        ClassByClass.chain_rows = 0
    model, (x, y) = random_model(args.model, args.size, args.images, args.k)
    model, x, y = model.to(args.device), x.to(args.device), y.to(args.device)
    print(f"{args.model} at {args.size} px on {args.device}: {len(y.unique())} classes predicted at least "
          f"{args.k} times, {len(y)} images", flush=True)
    warnings.simplefilter("ignore")
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    t0 = time.perf_counter()
    opts = {"compaction": args.compaction} if args.compaction else {}
    session = cs.PruneSession(model, (x, y), samples_per_class=args.k, progress=False, **opts)
    print(f"set-up {time.perf_counter() - t0:.1f} s, {session.total_steps} tests planned", flush=True)
    t1, done = time.perf_counter(), 0
    for _ in session.steps():
        done += 1
        if time.perf_counter() - t1 > args.seconds:
            break
    if prof:
        prof.disable()
    e, spent = session.engine, time.perf_counter() - t1
    macs = count_macs(model, x[:1])
    print(f"tests {done} in {spent:.1f} s ({done / spent:.1f} a second); work {e.forward_equivalents:.1f} dense "
          f"passes of {len(session.y)} images, {macs / 1e9:.2f} GMAC each: "
          f"{e.forward_equivalents * len(session.y) * macs / spent / 1e12:.2f} TMAC/s; compaction {e.compaction}")
    blocks: dict = collections.defaultdict(lambda: [0, 0.0])
    for r in session.records:
        b = blocks[".".join(r["layer"].split(".")[:2])]
        b[0], b[1] = b[0] + 1, b[1] + r["seconds"]
    print("by block (tests, seconds, ms a test):", ", ".join(
        f"{name} {n} {s:.1f} {1e3 * s / n:.1f}" for name, (n, s) in sorted(blocks.items(), key=lambda kv: -kv[1][1])))
    if prof:
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumtime").print_stats(30)


if __name__ == "__main__":
    main()
