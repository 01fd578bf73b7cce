"""Sharding the causal analysis by images within each class or by whole classes (issue "beyond a laptop", part 3).

    python benchmarks/shard_by.py [NAME] [--rounds 3] [--k 20] [--json PATH]

One C-SWAP analysis of a shipped checkpoint (default ``resnet18-fashion``, the toolkit's default options) in one
process, then under ``torch.distributed`` (gloo, 2 processes spawned here) with ``shard_by="images"`` (the
default: every class's images cut among the ranks) and ``shard_by="classes"`` (each class whole to one rank).
Every process runs one thread, so that two processes use this machine's two cores. The three runs alternate
for ``--rounds`` rounds (the machine's speed drifts); each rank's process group is set up before its clock
starts, and the checkpoint is loaded before it too. Printed per run: the analysis seconds (the slowest rank),
each rank's calibration rows scored and its forward-pass equivalents, and whether the labels equal the single
process's.

With early decisions (``engine="fast"``) a candidate is scored first on a few classes and on the rest only when
those do not decide it: sharded by images, both ranks score part of every stage; sharded by classes, a stage
falls on the ranks that hold its classes while the other waits at the gather.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _labels(session) -> list:
    return [[r["layer"], r["unit"], r["label"]] for r in session.records]


def _rank(rank: int, world: int, port: int, name: str, k: int, by: str, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    import torch.distributed as dist

    import cswap_nb as cs

    model, data = cs.zoo.load(name)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        t0 = time.perf_counter()
        session = cs.PruneSession(model, data.calib, progress=False, samples_per_class=k,
                                  distributed=world > 1, **({"shard_by": by} if world > 1 else {}))
        session.finish()
        engine = session.engine
        Path(out, f"{rank}.json").write_text(json.dumps({
            "analysis": session.analysis_seconds, "wall": time.perf_counter() - t0, "labels": _labels(session),
            "rows_scored": getattr(engine, "rows_scored", None), "rows_requested": getattr(engine, "rows_requested", None),
            "forward_equivalents": engine.forward_equivalents}))
    finally:
        if world > 1:
            dist.destroy_process_group()


def run(name: str, k: int, world: int, by: str) -> list[dict]:
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as out:
        port = _port()
        procs = [ctx.Process(target=_rank, args=(r, world, port, name, k, by, out)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(900)
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"{world} process(es), shard_by={by}: exit codes {[p.exitcode for p in procs]}")
        return [json.loads(Path(out, f"{r}.json").read_text()) for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", nargs="?", default="resnet18-fashion")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=20, help="samples per class")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    setups = [("one process", 1, "images"), ("2 ranks, by images", 2, "images"), ("2 ranks, by classes", 2, "classes")]
    times: dict[str, list[float]] = {s[0]: [] for s in setups}
    last: dict[str, list[dict]] = {}
    for i in range(args.rounds):
        for label, world, by in setups:
            reports = run(args.name, args.k, world, by)
            times[label].append(max(r["analysis"] for r in reports))
            last[label] = reports
            print(f"round {i + 1}: {label}: analysis {times[label][-1]:.2f} s", flush=True)
    reference = last["one process"][0]["labels"]
    single = statistics.median(times["one process"])
    print(f"\n{args.name}, k = {args.k}, one thread per process, {args.rounds} rounds (medians)")
    print(f"{'run':<22} {'analysis s':>10} {'vs one':>7}  {'rows scored per rank':<24} {'forward eq. per rank':<22} same labels")
    summary = {}
    for label, _, _ in setups:
        reports = last[label]
        med = statistics.median(times[label])
        rows = [r["rows_scored"] for r in reports] if reports[0]["rows_scored"] is not None else ["all"]
        fe = [round(r["forward_equivalents"], 1) for r in reports]
        same = all(r["labels"] == reference for r in reports)
        print(f"{label:<22} {med:>10.2f} {single / med:>6.2f}x  {str(rows):<24} {str(fe):<22} {same}")
        summary[label] = {"analysis_s": times[label], "median_s": med, "speedup": single / med, "rows_scored": rows,
                          "forward_equivalents": fe, "same_labels": same}
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.name, "k": args.k, "runs": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
