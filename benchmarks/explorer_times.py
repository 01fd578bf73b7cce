"""How long the α explorer takes to answer: the first run, then each change of α right after.

    python benchmarks/explorer_times.py [--model resnet18-fashion] [--alphas 0.05,0.001,0.5,0.01,0.05]

Drives :class:`cswap_nb.ui.widgets.AlphaExplorer` without a browser (``explorer.run()``, what the run button
does in its thread) and prints, per run, the wall time, the analysis time, and the tests reused from the
score cache or computed.
"""
from __future__ import annotations

import argparse
import time

from cswap_nb.ui.widgets import alpha_explorer


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet18-fashion")
    p.add_argument("--alphas", default="0.05,0.001,0.5,0.01,0.05")
    args = p.parse_args(argv)
    explorer = alpha_explorer()
    explorer.controls["model"].value = args.model
    explorer._model_and_data()  # load the checkpoint before timing: the first run measures the analysis
    print(f"{'alpha':>8s}{'wall s':>9s}{'analysis s':>12s}{'reused':>8s}{'computed':>10s}{'removed %':>11s}")
    for a in (float(v) for v in args.alphas.split(",")):
        explorer.controls["alpha"].value = a
        cache = explorer.cache()
        hits, misses = cache.hits, cache.misses
        t0 = time.perf_counter()
        res = explorer.run()
        wall = time.perf_counter() - t0
        print(f"{a:>8g}{wall:>9.2f}{res.analysis_seconds:>12.2f}{cache.hits - hits:>8d}{cache.misses - misses:>10d}"
              f"{res.params_removed_pct:>11.1f}")


if __name__ == "__main__":
    main()
