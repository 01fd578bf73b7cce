"""C-SWAP with and without compaction on one shipped checkpoint: analysis time, work, and whether the labels,
removals, p-values and effects are the same (cswap_nb/METHOD.md §10, "Compaction while pruning").

    python benchmarks/compaction_check.py NAME [--order off,on]

One process, the two runs one after the other (default options otherwise); for a timing figure that holds,
time whole processes of ``benchmarks/analysis_run.py --compaction off|on`` side by side, several runs each.
"""
import argparse

import numpy as np

import cswap_nb as cs

p = argparse.ArgumentParser()
p.add_argument("name")
p.add_argument("--order", default="off,on")
args = p.parse_args()
model, data = cs.zoo.load(args.name)
runs = {}
for comp in args.order.split(","):
    res = runs[comp] = cs.prune(model, data.calib, progress=False, compaction=comp)
    print(args.name, comp, round(res.analysis_seconds, 2), res.params_after, res.summary()["counts"],
          res.engine.get("forward_equivalents"), res.engine.get("compaction"), flush=True)
a, b = runs["off"].labels, runs["on"].labels
cols = ["layer", "unit", "label", "pruned"]
print("labels identical:", a[cols].equals(b[cols]), " pruned identical:", runs["off"].pruned_units == runs["on"].pruned_units)
for col in ("p_value", "effect"):
    print(f"max |{col} difference|:", float(np.nanmax(np.abs(a[col].astype(float).values - b[col].astype(float).values))))
