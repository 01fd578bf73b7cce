"""The fast engine's two small-batch levers, each switched off in turn, on a shipped checkpoint or on a
random-weight torchvision model of ``benchmarks/tests_in_time.py``'s set-up (cswap_nb/METHOD.md §10):

* ``thin``: a layer a candidate recomputes runs on the input channels the masks keep (``GraphEngine.thin_below``;
  off: 0);
* ``chain``: a candidate scored whole scores the next ones of its layer in the same pass, as if removed too
  (``ClassByClass.chain_rows``; off: 0); ``short-chain`` keeps it, with shorter chains
  (``ClassByClass.chain_floor = 0.6`` instead of 0.25), ``long-chain`` longer ones (``max_stack = 16``),
  ``ramp`` the chain length of the previous stop (one more than the candidates removed in a row, back to one
  after a critical one);
* ``whole-chains``: chains for candidates scored whole on a calibration set of any size, not only small ones
  (``chain_rows`` unbounded): on a GPU, where one candidate's pass over 200 images leaves the device idle;
* ``copy-any``: compact copies wherever the other conditions allow, however little they slice
  (``CompactingEngine.copy_cost = None``);
* ``layer-by-layer``: each compact copy cut by Torch-Pruning layer after layer (``CompactingEngine.one_sweep =
  False``) instead of in one sweep; ``time-share``: later copies and a kept copy's plan checks decided by the
  time share alone (``count_later = False``) instead of by the MACs they drop downstream; ``before``: both;
* ``check-copies``: each compact copy checks its plans itself instead of adopting the masked network's checked
  ones (``CompactingEngine.adopt_plans = False``);
* ``no-pointwise``: 1x1 convs over a few positions run as convs, not as matrix products
  (``GraphEngine.pointwise_below = 0``);
* ``no-compaction``: the session option ``compaction="off"``; ``same``: the defaults, for an A/A check.

    python benchmarks/engine_levers.py NAME [--rounds 3] [--variants both,no-thin,no-chain,neither]
    python benchmarks/engine_levers.py NAME --stepwise 50 [--variants both,no-compaction] [--device cuda]

NAME: a shipped checkpoint (``resnet18-fashion``) or ``tv:ARCH`` (``tv:densenet121``: random weights, 64 px,
labels the model's own, ``samples_per_class=4``). The variants run in turn in one process, ``--rounds`` times,
interleaved; prints each run's analysis seconds, the medians, the ratio to ``both`` and whether the labels
equal ``both``'s. With ``--stepwise N`` each variant gets its own session, and the sessions advance in turn,
``N`` tests each, through one whole analysis, so that the variants meet the machine's slow drift at about the
same moments. It prints each variant's total seconds (its engine's build included), the ratio to the first
variant's, the median of the per-turn ratios, and whether the labels are the first variant's. Read the
medians: short slow spells still hit one variant's turns, and an A/A run (``same``: the defaults again, beside
``both``) differed by 17% in total but by 3% in the median per-turn ratio.
"""
import argparse
import statistics
import time
import warnings

import cswap_nb as cs
from cswap_nb.engines.compact import CompactingEngine
from cswap_nb.engines.graph import GraphEngine
from cswap_nb.pruning.descent import ClassByClass
from tests_in_time import random_model  # benchmarks/, the script's own folder

DEFAULTS = {"thin_below": GraphEngine.thin_below, "pointwise_below": GraphEngine.pointwise_below, "chain_rows": ClassByClass.chain_rows,
            "chain_floor": ClassByClass.chain_floor, "max_stack": ClassByClass.max_stack, "ramp": False,
            "copy_cost": CompactingEngine.copy_cost, "one_sweep": CompactingEngine.one_sweep,
            "count_later": CompactingEngine.count_later, "adopt_plans": CompactingEngine.adopt_plans}
SETTINGS = {"both": {}, "no-thin": {"thin_below": 0.0}, "no-chain": {"chain_rows": 0},
            "neither": {"thin_below": 0.0, "chain_rows": 0}, "short-chain": {"chain_floor": 0.6},
            "long-chain": {"max_stack": 16}, "ramp": {"ramp": True},
            "no-compaction": {"compaction": "off"}, "same": {},
            "whole-chains": {"chain_rows": 1 << 30}, "copy-any": {"copy_cost": None},
            "layer-by-layer": {"one_sweep": False}, "time-share": {"count_later": False},
            "before": {"one_sweep": False, "count_later": False}, "no-pointwise": {"pointwise_below": 0},
            "check-copies": {"adopt_plans": False}}


_rate_length = ClassByClass._chain_length
_chained = ClassByClass._chained


def _ramp_length(self) -> int:
    """The chain length before the removal rate: one more than the candidates removed in a row."""
    return min(self.max_stack, 1 + getattr(self, "_run", 0))


def _chained_counting(self, verdict) -> None:
    _chained(self, verdict)
    self._run = 0 if verdict.label == "critical" else getattr(self, "_run", 0) + 1


def apply(variant: str) -> dict:
    """Set the class attributes of ``variant`` (every other one at its default); its session options."""
    got = {**DEFAULTS, **SETTINGS[variant]}
    GraphEngine.thin_below, ClassByClass.chain_rows = got["thin_below"], got["chain_rows"]
    GraphEngine.pointwise_below = got["pointwise_below"]
    ClassByClass.chain_floor, ClassByClass.max_stack = got["chain_floor"], got["max_stack"]
    CompactingEngine.copy_cost = got["copy_cost"]
    CompactingEngine.one_sweep, CompactingEngine.count_later = got["one_sweep"], got["count_later"]
    CompactingEngine.adopt_plans = got["adopt_plans"]
    ClassByClass._chain_length = _ramp_length if got["ramp"] else _rate_length
    ClassByClass._chained = _chained_counting if got["ramp"] else _chained
    return {k: v for k, v in got.items() if k not in DEFAULTS}


def load(name: str, device: str = "cpu"):
    """The model and calibration set of ``name`` on ``device``, and the session options that go with them."""
    if not name.startswith("tv:"):
        model, data = cs.zoo.load(name)
        calib, opts = data.calib, {}
    else:
        (model, calib), opts = random_model(name[3:]), {"samples_per_class": 4}
    return model.to(device), tuple(t.to(device) for t in calib), opts


def stepwise(model, calib, opts: dict, variants: list[str], n: int) -> None:
    """The variants' sessions advanced in turn, ``n`` tests each (module docstring)."""
    sessions, steps, spent, turns = {}, {}, {v: 0.0 for v in variants}, []
    for v in variants:
        sessions[v] = cs.PruneSession(model, calib, progress=False, **opts, **apply(v))
        steps[v] = sessions[v].steps()
    live = list(variants)
    while live:
        turn = {}
        for v in list(live):
            apply(v)
            t0 = time.perf_counter()
            for _ in range(n):
                if next(steps[v], None) is None:
                    live.remove(v)
                    break
            turn[v] = time.perf_counter() - t0
            spent[v] += turn[v]
        if all(v in turn and turn[v] > 0 for v in variants):
            turns.append({v: turn[v] / turn[variants[0]] for v in variants})
        done = len(sessions[variants[0]].records)
        print(f"{done:6d} tests  " + "  ".join(f"{v} {spent[v]:7.1f} s" for v in variants), flush=True)
    ref = [(r["layer"], r["unit"], r["label"]) for r in sessions[variants[0]].records]
    for v in variants:
        same = [(r["layer"], r["unit"], r["label"]) for r in sessions[v].records] == ref
        med = statistics.median(t[v] for t in turns) if turns else float("nan")
        print(f"{v:14s} {spent[v]:7.1f} s  {spent[v] / spent[variants[0]]:5.3f}x {variants[0]}'s time  "
              f"median per-turn ratio {med:5.3f}  labels as {variants[0]}: {same}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default="both,no-thin,no-chain,neither")
    p.add_argument("--stepwise", type=int, default=0, metavar="N")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    model, calib, opts = load(args.name, args.device)
    variants = args.variants.split(",")
    if args.stepwise:
        stepwise(model, calib, opts, variants, args.stepwise)
        return
    times = {v: [] for v in variants}
    labels = {}
    cols = ["layer", "unit", "label", "pruned"]
    for r in range(args.rounds):
        for v in variants:
            res = cs.prune(model, calib, progress=False, **opts, **apply(v))
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
