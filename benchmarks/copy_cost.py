"""What one compact copy costs, cut layer by layer or in one sweep (cswap_nb/METHOD.md §10, "Compaction while
pruning"), on a random-weight torchvision model of ``benchmarks/tests_in_time.py``'s set-up.

    python benchmarks/copy_cost.py [--model densenet121] [--rounds 3] [--share 0.9]

The session is set up as ``tests_in_time.py`` does; then ``--share`` of the units of every layer in the later
half of the network are masked, as they are when the analysis (output to input) reaches the middle, and a
compact copy for the last layer of the first half is built, in turn with ``CompactingEngine.one_sweep`` off
(Torch-Pruning's surgery, layer after layer) and on (``cswap_nb.core.surgery.CutSurgery``, read once and timed
apart), ``--rounds`` times. Prints each build's seconds (surgery, trace, the copy's check against the masked
network, its MAC share) and the plan check of the layer on the copy, and whether both copies have the same
parameter shapes and outputs.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import cswap_nb as cs
from cswap_nb.core.surgery import CutSurgery
from cswap_nb.engines.compact import _Compact
from tests_in_time import random_model  # benchmarks/, the script's own folder


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="densenet121")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--share", type=float, default=0.9)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    model, (x, y) = random_model(args.model)
    session = cs.PruneSession(model, (x, y), samples_per_class=4, progress=False)
    e = session.engine
    masker, layers = e.masker, list(e.masker.layers.values())
    g = torch.Generator().manual_seed(0)
    for layer in layers[len(layers) // 2:]:
        masker.set(layer.name, torch.randperm(layer.size, generator=g)[: int(layer.size * args.share)].tolist(), True)
    target = layers[len(layers) // 2 - 1]
    sliced = {n: u for n, u in masker.pruned().items() if n != target.name and u}
    t0 = time.perf_counter()
    surgery = CutSurgery(e.template, e.example, list(masker.layers))
    print(f"{args.model}: {len(sliced)} of {len(layers)} layers cut; CutSurgery read once in "
          f"{time.perf_counter() - t0:.2f} s")
    times: dict[str, list[float]] = {"layer by layer": [], "one sweep": []}
    copies = {}
    for _ in range(args.rounds):
        for how, sweep in (("layer by layer", None), ("one sweep", surgery)):
            t0 = time.perf_counter()
            c = _Compact(e.template, e.example, masker.layers, sliced, e._share, None, sweep)
            built = time.perf_counter() - t0
            c.sync(masker.removed_units)
            c.engine.prepare(c.layers[target.name])
            times[how].append(built)
            copies[how] = c
            print(f"  {how:15s} copy {built:.2f} s, plan check {time.perf_counter() - t0 - built:.2f} s, "
                  f"MACs {c.share:.3f} of the dense network's", flush=True)
    a, b = (copies[h].engine.model for h in times)
    same = {n: q.shape for n, q in a.named_parameters()} == {n: q.shape for n, q in b.named_parameters()}
    with torch.inference_mode():
        diff = float((a(e.example) - b(e.example)).abs().max())
    med = {h: statistics.median(v) for h, v in times.items()}
    print(f"median copy: layer by layer {med['layer by layer']:.2f} s, one sweep {med['one sweep']:.2f} s "
          f"({med['layer by layer'] / med['one sweep']:.1f}x); same shapes {same}, outputs differ by {diff:.2g}")


if __name__ == "__main__":
    main()
