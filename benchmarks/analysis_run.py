"""One C-SWAP analysis (default options) of a shipped checkpoint, as a whole process: what `farm-bench`
times side by side against another checkout (``--vs``) for before/after figures.

    python benchmarks/analysis_run.py [NAME] [--eval]
"""
import sys

import cswap_nb as cs

name = next((a for a in sys.argv[1:] if not a.startswith("--")), "resnet18-fashion")
model, data = cs.zoo.load(name)
res = cs.prune(model, data.calib, progress=False, eval_data=data.test if "--eval" in sys.argv else None)
print(name, res.summary()["params_after"], round(res.analysis_seconds, 2), res.summary().get("metric_after"))
