"""The fast engine's two small-batch levers, each switched off in turn, on a shipped checkpoint or on a
random-weight torchvision model of ``benchmarks/tests_in_time.py``'s set-up (cswap_nb/METHOD.md §10):

* ``thin``: a layer a candidate recomputes runs on the input channels the masks keep (``GraphEngine.thin_below``;
  off: 0);
* ``chain``: a candidate scored whole scores the next ones of its layer in the same pass, as if removed too
  (``ClassByClass.chain_rows``; off: 0).

    python benchmarks/engine_levers.py NAME [--rounds 3] [--variants both,no-thin,no-chain,neither]

NAME: a shipped checkpoint (``resnet18-fashion``) or ``tv:ARCH`` (``tv:densenet121``: random weights, 64 px,
labels the model's own, ``samples_per_class=4``). The variants run in turn in one process, ``--rounds`` times,
interleaved; prints each run's analysis seconds, the medians, the ratio to ``both`` and whether the labels
equal ``both``'s.
"""
import argparse
import statistics
import warnings

import cswap_nb as cs
from cswap_nb.engines.graph import GraphEngine
from cswap_nb.pruning.descent import ClassByClass
from tests_in_time import random_model  # benchmarks/, the script's own folder

SETTINGS = {"both": (GraphEngine.thin_below, ClassByClass.chain_rows), "no-thin": (0.0, ClassByClass.chain_rows),
            "no-chain": (GraphEngine.thin_below, 0), "neither": (0.0, 0)}


def load(name: str):
    if not name.startswith("tv:"):
        model, data = cs.zoo.load(name)
        return model, data.calib, {}
    model, calib = random_model(name[3:])
    return model, calib, {"samples_per_class": 4}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default="both,no-thin,no-chain,neither")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    model, calib, opts = load(args.name)
    variants = args.variants.split(",")
    times = {v: [] for v in variants}
    labels = {}
    cols = ["layer", "unit", "label", "pruned"]
    for r in range(args.rounds):
        for v in variants:
            GraphEngine.thin_below, ClassByClass.chain_rows = SETTINGS[v]
            res = cs.prune(model, calib, progress=False, **opts)
            times[v].append(res.analysis_seconds)
            labels.setdefault(v, res.labels[cols])
            same = labels[v].equals(labels[variants[0]]) and res.labels[cols].equals(labels[variants[0]])
            print(f"round {r + 1} {v:9s} {res.analysis_seconds:7.2f} s  labels as {variants[0]}: {same}", flush=True)
    base = statistics.median(times[variants[0]])
    for v in variants:
        m = statistics.median(times[v])
        print(f"{args.name} {v:9s} median {m:7.2f} s  {m / base:5.2f}x the time of {variants[0]}")


if __name__ == "__main__":
    main()
