"""Run notebooks top to bottom and print each code cell's wall time and the total.

    python benchmarks/notebook_times.py notebooks/02_causal_neuron_analysis.ipynb [--fast] [--out DIR]

Full mode unless ``--fast`` (which sets ``CSWAP_NB_FAST=1``, as the test suite does). With ``--out`` the
executed notebook is written there, so its figures can be looked at. With ``--json FILE`` each notebook's
total is merged into FILE (``{"notebook.ipynb": {"fast": s, "full": s}}``), which
``benchmarks/fill_runtimes.py`` writes into the notebooks and the teacher's guide.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--fast", action="store_true", help="CSWAP_NB_FAST=1 (the suite's mode)")
    p.add_argument("--out", type=Path, help="write the executed notebooks here")
    p.add_argument("--json", type=Path, help="merge each notebook's total seconds into this JSON file")
    args = p.parse_args(argv)
    if args.fast:
        os.environ["CSWAP_NB_FAST"] = "1"
    else:
        os.environ.pop("CSWAP_NB_FAST", None)
    os.environ.setdefault("MPLBACKEND", "Agg")
    failed = 0
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=3600, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        t0 = time.perf_counter()
        times = []
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                t = time.perf_counter()
                try:
                    client.execute_cell(cell, i)
                except Exception as exc:  # noqa: BLE001 - report and go on to the next notebook
                    print(f"{path.name}: cell {i} failed: {type(exc).__name__}: {str(exc).splitlines()[-1][:300]}")
                    failed += 1
                    break
                times.append((i, time.perf_counter() - t))
        total = time.perf_counter() - t0
        mode = "FAST" if args.fast else "full"
        print(f"{path.name} ({mode}): {total:.1f} s; cells: " + ", ".join(f"{i}: {s:.1f}" for i, s in times))
        if args.json and len(times) == sum(c.cell_type == "code" for c in nb.cells):  # completed runs only
            found = json.loads(args.json.read_text()) if args.json.exists() else {}
            found.setdefault(path.name, {})[mode.lower()] = round(total, 1)
            args.json.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, args.out / path.name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
