"""Write measured notebook run times into each notebook's first cell and into the teacher's guide.

    python benchmarks/notebook_times.py notebooks/*.ipynb --json benchmarks/notebook_times.json
    python benchmarks/notebook_times.py notebooks/*.ipynb --fast --json benchmarks/notebook_times.json
    (or the FAST times of the suite: python -m pytest tests/test_notebooks.py --durations=20)
    python benchmarks/fill_runtimes.py benchmarks/notebook_times.json

In a notebook's first markdown cell, a line ``RUNTIME`` (or a line written by this script before) becomes
"Run time on a 2-core laptop CPU (measured): FAST mode ≈ … s, full mode ≈ … s" (a mode without a
measurement says so). In notebooks/README.md the last
two columns of each notebook's table row get the same numbers. A notebook without a measurement keeps its line.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(RUNTIME|Run time on a 2-core laptop CPU.*)$", re.M)


def seconds(v) -> str:
    return "–" if v is None else f"{v:.0f}"


def sentence(t: dict) -> str:
    def part(mode: str) -> str:
        return f"{mode} mode ≈ {t[mode.lower()]:.0f} s" if t.get(mode.lower()) is not None else f"{mode} mode not measured yet"
    return f"Run time on a 2-core laptop CPU (measured): {part('FAST')}, {part('full')}."


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    times = json.loads(Path(argv[0]).read_text())
    for name, t in sorted(times.items()):
        path = ROOT / "notebooks" / name
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "markdown")
        if LINE.search(cell.source):
            cell.source = LINE.sub(sentence(t), cell.source, count=1)
            nbformat.write(nb, path)
        else:
            print(f"{name}: no RUNTIME line in its first markdown cell; left as it is")
    guide = ROOT / "notebooks" / "README.md"
    lines = guide.read_text().split("\n")
    for i, line in enumerate(lines):
        m = re.match(r"^\| \[(\w+)\]\((\w+\.ipynb)\) \|", line)
        if m and m.group(2) in times:
            cells = line.split(" | ")
            t = times[m.group(2)]
            cells[-2] = seconds(t.get("fast"))
            cells[-1] = seconds(t.get("full")) + " |"
            lines[i] = " | ".join(cells)
    guide.write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
