"""Time the segmentation score of one calibration batch of ``ddrnet23slim-roads``, as the causal loop
computes it for every candidate (per (scene, class) pair: the class's probability over its own pixels),
with this checkout's ``cswap_nb.core.causal`` and, side by side, with another module given by path.

    python benchmarks/segmentation_scores.py [--other OLD_CHECKOUT_OR_ITS_CAUSAL.py] [--rounds 5]

Prints the median milliseconds per batch of each and their ratio, and the largest difference of the
scores. The logits come from the shipped model in the toolkit's own layout (channels-last on the CPU).
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

import cswap_nb as cs
from cswap_nb.core import causal
from cswap_nb.core.calibration import select_segmentation_calibration
from cswap_nb.core.layout import channels_last_copy


def _load(path: str):
    """Another checkout's ``cswap_nb.core.causal`` (``path``: its ``causal.py`` or the checkout's root), imported
    as a package of its own beside this one (its relative imports read its own modules)."""
    root = Path(path).resolve()
    if root.is_file():
        root = root.parents[2]  # cswap_nb/core/causal.py -> the checkout
    def package(k: str) -> bool:  # a module of cswap_nb, whichever checkout it came from
        return k == "cswap_nb" or k.startswith("cswap_nb.")

    ours = {k: v for k, v in sys.modules.items() if package(k)}
    for k in ours:
        del sys.modules[k]
    sys.path.insert(0, str(root))
    try:
        mod = importlib.import_module("cswap_nb.core.causal")
        if not Path(mod.__file__).resolve().is_relative_to(root):  # found this checkout's package instead
            raise SystemExit(f"no cswap_nb package under {root}: give another checkout's root or its causal.py")
        return mod
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if package(k)]:
            del sys.modules[k]
        sys.modules.update(ours)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", help="another checkout (its root, or its cswap_nb/core/causal.py) to time side by side")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--k", type=int, default=20, help="calibration scenes per class, as samples_per_class")
    ap.add_argument("--scenes", type=int, default=None, help="score only the first this many (default: all)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, data = cs.zoo.load("ddrnet23slim-roads")
    x, masks, _ = select_segmentation_calibration(data.calib.x, data.calib.y, args.k, 19)
    x, masks = x[: args.scenes], masks[: args.scenes]
    work = channels_last_copy(model).eval()  # the session's working copy is channels-last on the CPU
    with torch.inference_mode():
        logits = work(x.contiguous(memory_format=torch.channels_last))
    mods = {"this": causal}
    if args.other:
        mods["other"] = _load(args.other)
    index = {k: m.pixel_classes(masks, logits.shape[1]) for k, m in mods.items()}
    out = {k: m.class_pixel_scores(logits, masks, "prob", index[k]) for k, m in mods.items()}
    times = {k: [] for k in mods}
    for _ in range(args.rounds):
        for k, m in mods.items():  # alternating: the machine's drift hits both alike
            t = time.perf_counter()
            for _ in range(args.repeats):
                m.class_pixel_scores(logits, masks, "prob", index[k])
            times[k].append((time.perf_counter() - t) / args.repeats * 1000)
    print(f"logits {tuple(logits.shape)} (channels-last: {logits.is_contiguous(memory_format=torch.channels_last)})")
    for k in mods:
        print(f"{k}: {statistics.median(times[k]):.2f} ms per batch of {len(x)} scenes")
    if args.other:
        print(f"other / this: {statistics.median(times['other']) / statistics.median(times['this']):.2f}x")
        a, b = out["this"].nan_to_num(-1), out["other"].nan_to_num(-1)
        print(f"largest |difference| of the scores: {float((a - b).abs().max()):.2e}")


if __name__ == "__main__":
    main()
