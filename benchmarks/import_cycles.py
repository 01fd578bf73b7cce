"""Print the package's import cycles (imports inside functions included), its imports from a higher
layer (``cswap_nb.LAYERS``, lowest first) and its in-function imports of its own modules.

    python benchmarks/import_cycles.py            # exit status 1 when there is a cycle or an upward import
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "cswap_nb"


def module_names() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.with_suffix("").relative_to(ROOT.parent).parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Edges module -> imported own module, and (module, line, target) of imports inside functions."""
    edges: dict[str, set[str]] = defaultdict(set)
    inner = []
    for name, f in mods.items():
        tree = ast.parse(f.read_text())
        package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        in_function = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
            for target in ([stem] if node.module else [f"{stem}.{a.name}" for a in node.names]):
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != name:
                    edges[name].add(target)
                    if id(node) in in_function:
                        inner.append((name, node.lineno, target))
    return edges, inner


def cycles(edges: dict[str, set[str]], nodes) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


LAYERS = ("data", "models", "core", "engines", "criteria", "pruning", "zoo", "experiments", "ui")  # = cswap_nb.LAYERS


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of a module's layer; None for the package's own ``__init__``/``__main__``."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports of a module from a layer above its own."""
    out = []
    for name, targets in edges.items():
        here = layer_of(name)
        for target in targets:
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                out.append((name, target))
    return sorted(out)


def main() -> int:
    mods = module_names()
    edges, inner = imports(mods)
    found = cycles(edges, mods)
    for c in found:
        print("cycle:", " <-> ".join(c))
    up = upward(edges)
    for name, target in up:
        print(f"upward: {name} -> {target}")
    print(f"{len(up)} import(s) from a higher layer (layers, lowest first: {', '.join(LAYERS)})")
    print(f"{len(found)} import cycle(s); {len(inner)} in-function import(s) of the package's own modules:")
    for name, line, target in sorted(inner):
        print(f"  {name}:{line} -> {target}")
    return 1 if found or up else 0


if __name__ == "__main__":
    sys.exit(main())
