"""One C-SWAP analysis of a shipped checkpoint, as a whole process: what a side-by-side timer runs against
another checkout for before/after figures (whole processes, several runs each, interleaved).

    python benchmarks/analysis_run.py [NAME] [--eval] [--k K] [--scope internal|all] [--compaction on|off]
                                      [--engine naive|fast|parts] [--repeat N]

``--k`` and ``--scope`` set ``samples_per_class`` and ``scope`` (default: the toolkit's defaults), e.g.
``ddrnet23slim-roads --k 10 --scope all`` is notebook 05's analysis as it was before it moved to k = 8 on a
300-scene pool. ``--engine`` picks the engine, ``--repeat`` runs the analysis N times in the process (each
run's seconds printed): e.g. the naive engine with glibc's allocator left as it is and with its mmap threshold
raised (``MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=8000000000 python benchmarks/analysis_run.py
resnet18-fashion --engine naive``: large activations then come from the heap instead of fresh mmapped pages,
cswap_nb/METHOD.md §10). To time another checkout with this
script: ``PYTHONPATH=/path/to/checkout python benchmarks/analysis_run.py ...``.
"""
import argparse

import cswap_nb as cs

p = argparse.ArgumentParser()
p.add_argument("name", nargs="?", default="resnet18-fashion")
p.add_argument("--eval", action="store_true")
p.add_argument("--k", type=int)
p.add_argument("--scope")
p.add_argument("--compaction")
p.add_argument("--engine")
p.add_argument("--repeat", type=int, default=1)
args = p.parse_args()
model, data = cs.zoo.load(args.name)
opts = {k: v for k, v in (("samples_per_class", args.k), ("scope", args.scope),
                                         ("compaction", args.compaction), ("engine", args.engine)) if v is not None}
for _ in range(args.repeat):
    res = cs.prune(model, data.calib, progress=False, eval_data=data.test if args.eval else None, **opts)
    print(args.name, cs.__file__, res.summary()["params_after"], round(res.analysis_seconds, 2),
          res.summary().get("metric_after"), res.summary()["counts"])
