"""The early decisions' first stage with 1, 2 or 3 classes (the default), interleaved in one process.

    python benchmarks/first_stage.py [NAME] [--rounds 3] [--first 3,1,2]

For each round and each size of the first stage (``ClassByClass.first``), one default C-SWAP analysis of the
shipped checkpoint: its analysis seconds and work in dense passes, and a check that the labels and removals
equal the first run's (the first stage changes the work, never a decision). Prints the medians.
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
    p.add_argument("--first", default="3,1,2")
    args = p.parse_args(argv)
    sizes = [int(v) for v in args.first.split(",")]
    model, data = cs.zoo.load(args.name)
    cs.prune(model, data.calib, progress=False)  # warm-up
    default, ref = descent.ClassByClass.first, None
    seconds: dict[int, list[float]] = {f: [] for f in sizes}
    work: dict[int, list[float]] = {f: [] for f in sizes}
    try:
        for r in range(args.rounds):
            for f in sizes:
                descent.ClassByClass.first = f
                res = cs.prune(model, data.calib, progress=False)
                labels = res.labels[["layer", "unit", "label", "pruned"]]
                ref = labels if ref is None else ref
                if not labels.equals(ref):
                    raise SystemExit(f"first={f}: the labels differ from the first run's")
                seconds[f].append(res.analysis_seconds)
                work[f].append(res.engine["forward_equivalents"])
                print(f"round {r} first={f}: {res.analysis_seconds:.2f} s, {res.engine['forward_equivalents']:.1f} "
                      "dense passes", flush=True)
    finally:
        descent.ClassByClass.first = default
    print("medians: " + "; ".join(f"first={f}: {statistics.median(seconds[f]):.2f} s, "
                                  f"{statistics.median(work[f]):.1f} passes" for f in sizes) + "; labels identical")


if __name__ == "__main__":
    main()
