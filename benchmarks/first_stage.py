"""The early decisions' first stage: how many classes it scores, and how they are ordered, interleaved in one
process.

    python benchmarks/first_stage.py [NAME] [--rounds 3] [--variants 0:3,1:3,1:2,0:2]

Each variant is ``foresight:first``: ``ClassByClass.foresight`` (1: the classes ordered by both guesses, the
last p-values and the first-order estimate of cswap_nb/core/foresight.py; 0: by the last p-values alone) and
``ClassByClass.first`` (the classes scored first; the default is 1:2). For each round and variant, one default
C-SWAP analysis of the shipped checkpoint: its analysis seconds, the calibration images scored and the work
in dense passes, and a check that the labels and removals equal the first run's (the first stage changes the
work, never a decision). Prints the medians.
"""
from __future__ import annotations

import argparse
import statistics

import cswap_nb as cs
from cswap_nb.pruning import descent


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", default="resnet18-fashion")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default="0:3,1:3,1:2,0:2")
    args = p.parse_args(argv)
    variants = [tuple(int(v) for v in s.split(":")) for s in args.variants.split(",")]
    model, data = cs.zoo.load(args.name)
    cs.prune(model, data.calib, progress=False)  # warm-up
    default, ref = (descent.ClassByClass.foresight, descent.ClassByClass.first), None
    seconds: dict[tuple, list[float]] = {v: [] for v in variants}
    work: dict[tuple, list[float]] = {v: [] for v in variants}
    images: dict[tuple, list[int]] = {v: [] for v in variants}
    try:
        for r in range(args.rounds):
            for v in variants:
                descent.ClassByClass.foresight, descent.ClassByClass.first = bool(v[0]), v[1]
                res = cs.prune(model, data.calib, progress=False)
                labels = res.labels[["layer", "unit", "label", "pruned"]]
                ref = labels if ref is None else ref
                if not labels.equals(ref):
                    raise SystemExit(f"{v[0]}:{v[1]}: the labels differ from the first run's")
                seconds[v].append(res.analysis_seconds)
                work[v].append(res.engine["forward_equivalents"])
                images[v].append(int(res.labels.samples.sum()))
                print(f"round {r} {v[0]}:{v[1]}: {res.analysis_seconds:.2f} s, {images[v][-1]:,} images, "
                      f"{res.engine['forward_equivalents']:.1f} dense passes", flush=True)
    finally:
        descent.ClassByClass.foresight, descent.ClassByClass.first = default
    print("medians: " + "; ".join(f"{v[0]}:{v[1]}: {statistics.median(seconds[v]):.2f} s, "
                                  f"{statistics.median(images[v]):,.0f} images, {statistics.median(work[v]):.1f} passes"
                                  for v in variants) + "; labels identical")


if __name__ == "__main__":
    main()
