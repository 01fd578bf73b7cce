"""The causal analysis sharded over processes (cswap_nb/engines/sharded.py, cswap_nb/METHOD.md §10).

Two processes on the CPU (gloo), spawned from the test: a sharded run takes the single process's
decisions on both ranks while each rank scores about half the calibration rows; a rank that fails
while setting up or scoring, or dies, makes the other one raise a clear error instead of hanging.
"""
from __future__ import annotations

import datetime
import json
import multiprocessing as mp
import os
import socket
import time
import traceback
from pathlib import Path

import pytest
import torch

import cswap_nb as cs
from cswap_nb.engines.passes import take_rows
from cswap_nb.engines.sharded import ShardedEngine, _Shard, shard_pieces

WORLD = 2
JOIN_TIMEOUT = 150.0  # seconds the parent waits for both children (the process group's timeout is 60 s)
OPTIONS = dict(samples_per_class=4)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record(session) -> dict:
    """What both runs must share: every step's label and removal, and the units pruned."""
    return {"labels": [[r["layer"], r["unit"], r["label"], bool(r["pruned"])] for r in session.records],
            "pruned": {k: sorted(v) for k, v in session.masker.pruned().items()}}


def _fail_at(inner, call: int, how: str) -> None:
    """Make the wrapped engine's ``call``-th scoring call raise (``how="raise"``) or end the process (``"die"``)."""
    calls = {"n": 0}

    def wrap(method):
        def scoring(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == call:
                if how == "die":
                    os._exit(3)
                raise ValueError("scoring failed on purpose")
            return method(*args, **kwargs)
        return scoring

    inner.scores, inner.rows_scores = wrap(inner.scores), wrap(inner.rows_scores)


def _child(rank: int, world: int, port: int, out: str) -> None:
    """One rank, six scenarios on one process group, each a C-SWAP run on the shipped digits ResNet18:
    ``ok`` (a sharded run), ``classes`` (sharded by class, ``distributed=`` left at its default), ``differ``
    (rank 1 draws its calibration set with another seed), ``setup`` (rank 1's session set-up raises, before any
    scoring), ``raise`` (rank 1's fifth scoring call raises), ``die`` (rank 1 ends its process in its fifth
    scoring call). The report goes to ``out``/rank.json after each scenario."""
    torch.set_num_threads(1)
    import threading

    import torch.distributed as dist
    import tqdm

    tqdm.tqdm.set_lock(threading.RLock())  # not tqdm's multiprocessing lock: rank 1 ends itself and would leak it
    report: dict = {"started": time.time()}
    path = Path(out, f"{rank}.json")
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        model, data = cs.zoo.load("resnet18-digits")
        pick = cs.PruneSession._pick_calibration
        for mode in ("ok", "classes", "differ", "setup", "raise", "die"):
            t0 = time.perf_counter()
            rep = report[mode] = {}
            try:
                seed = {"seed": rank} if mode == "differ" else {}  # rank 1 draws another calibration set
                by = {"shard_by": "classes"} if mode == "classes" else {}  # each class whole to one rank
                # the by-class run leaves distributed= at its default: shared because a process group is up
                shared = {} if mode == "classes" else {"distributed": True}
                if mode == "setup" and rank == 1:
                    def broken(*args, **kwargs):
                        raise ValueError("set-up failed on purpose")
                    cs.PruneSession._pick_calibration = broken
                try:
                    session = cs.PruneSession(model, data.calib, **shared, **OPTIONS, **seed, **by)
                finally:
                    cs.PruneSession._pick_calibration = pick
                engine = session.engine
                rep.update(progress=session.progress, engine=type(engine).__name__)
                if mode in ("raise", "die") and rank == 1:
                    _fail_at(engine.inner, 5, mode)
                res = session.finish()
                rep.update(world_size=res.engine["world_size"], local_samples=res.engine["local_samples"],
                           shard_by=res.engine["shard_by"])
                rep.update(_record(session), analysis=session.analysis_seconds, rows_scored=engine.rows_scored,
                           rows_requested=engine.rows_requested, forward_equivalents=engine.forward_equivalents,
                           calibration=len(session.y))
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                rep.update(error=type(exc).__name__, message=str(exc), traceback=traceback.format_exc())
            rep["seconds"] = time.perf_counter() - t0
            path.write_text(json.dumps(report))
    finally:
        path.write_text(json.dumps(report))
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a peer already gone
                pass


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run :func:`_child` on ``WORLD`` spawned processes (one spawn for all the scenarios: a child's imports
    cost more than its runs); their reports, exit codes and the wall time."""
    out = tmp_path_factory.mktemp("ranks")
    ctx = mp.get_context("spawn")
    port = _free_port()
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the children inherit these
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_child, args=(r, WORLD, port, str(out))) for r in range(WORLD)]
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():  # hung: the tests fail below, the process must not outlive them
                p.kill()
                p.join(5)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    wall = time.perf_counter() - t0
    reports = [json.loads(f.read_text()) if (f := out / f"{r}.json").exists() else {} for r in range(WORLD)]
    return reports, [p.exitcode for p in procs], wall


def test_shard_pieces_balanced_per_class():
    y = torch.tensor([0] * 5 + [1] * 5 + [2] * 1 + [3] * 4)
    pieces = shard_pieces(y, 2)
    assert [(a, b) for a, b, _, _ in pieces] == [(0, 3), (3, 5), (5, 7), (7, 10), (10, 11), (11, 13), (13, 15)]
    sizes = [sum(b - a for a, b, r, _ in pieces if r == k) for k in range(2)]
    assert sizes == [8, 7]  # the odd classes' extra samples alternate between the ranks
    for k in range(2):  # each rank's pieces are consecutive in its shard
        mine = [(a, b, at) for a, b, r, at in pieces if r == k]
        assert [at for _, _, at in mine] == [sum(b - a for a, b, _ in mine[:i]) for i in range(len(mine))]


def test_shard_pieces_by_class_give_each_class_whole_to_the_emptiest_rank():
    y = torch.tensor([0] * 5 + [1] * 5 + [2] * 1 + [3] * 4 + [4] * 2)
    pieces = shard_pieces(y, 2, by="classes")
    assert [(a, b, r) for a, b, r, _ in pieces] == [(0, 5, 0), (5, 10, 1), (10, 11, 0), (11, 15, 1), (15, 17, 0)]
    assert [at for *_, at in pieces] == [0, 0, 5, 5, 6]  # each rank's pieces are consecutive in its shard
    three = shard_pieces(y, 3, by="classes")
    assert sorted({r for _, _, r, _ in three}) == [0, 1, 2]
    with pytest.raises(ValueError, match="shard_by must be one of"):
        shard_pieces(y, 2, by="pixels")


@pytest.mark.parametrize("by", ["images", "classes"])
def test_gathered_parts_come_back_in_the_rows_order(by):
    """The reassembly of :meth:`ShardedEngine._gathered` without processes: three ranks, classes of odd sizes,
    requests of whole and partial classes; each rank's part is cut from its shard as the wrapped engine would."""
    world = 3
    y = torch.tensor([0] * 7 + [1] * 2 + [2] * 5 + [3] * 1 + [4] * 6)
    x = torch.arange(len(y), dtype=torch.float32) * 10  # a sample's "score" is its value
    engines = []
    for rank in range(world):
        e = object.__new__(ShardedEngine)
        e.rank, e.world = rank, world
        pieces = shard_pieces(y, world, by)
        local = tuple((at, at + b - a) for a, b, r, at in pieces if r == rank)
        x_local = torch.cat([x[a:b] for a, b, r, _ in pieces if r == rank])
        engines.append((e, _Shard(x, y, pieces, local, x_local, y)))
    for rows in [((0, 21),), ((0, 7), (9, 14)), ((14, 15), (3, 8)), ((2, 3),), ((20, 21), (0, 1))]:
        parts, plans = [], []
        for e, shard in engines:
            local, counts, perm = e._plan(shard, rows)
            parts.append(take_rows(shard.x_local, local) if local else x[:0])
            assert len(parts[-1]) == counts[e.rank]
            plans.append((counts, perm.tolist()))
        assert all(p == plans[0] for p in plans)  # every rank reassembles alike
        assert torch.equal(torch.cat(parts)[perm], take_rows(x, rows)), rows
        if rows == ((0, 21),) and by == "images":
            assert max(counts) - min(counts) <= 1


@pytest.mark.slow  # the scenarios share one spawn of two ranks: 27-43 s here (imports ~16 s)
def test_sharded_run_takes_the_single_process_decisions(ranks):
    reports, codes, wall = ranks
    torch.set_num_threads(1)
    model, data = cs.zoo.load("resnet18-digits")
    single = cs.PruneSession(model, data.calib, progress=False, **OPTIONS)
    single_result = single.finish()
    assert single_result.engine["world_size"] == 1 and single_result.engine["local_samples"] == 40
    expected = _record(single)
    for rank, rep in enumerate(reports):
        ok = rep.get("ok", {})
        assert "error" not in ok, ok.get("traceback")
        assert ok["engine"] == "ShardedEngine"
        assert ok["labels"] == expected["labels"], f"rank {rank}"
        assert ok["pruned"] == expected["pruned"], f"rank {rank}"
        # each rank scored half the rows the calls asked for (its 2 of each class's 4 images)
        assert ok["calibration"] == 40
        assert ok["world_size"] == 2 and ok["local_samples"] == 20  # the result says how it ran
        assert ok["rows_scored"] * 2 == ok["rows_requested"], ok
        assert ok["forward_equivalents"] < 0.6 * single.engine.forward_equivalents
    assert [rep["ok"]["progress"] for rep in reports] == [True, False]  # one progress bar, rank 0's
    for rank, rep in enumerate(reports):  # sharded by class: the same decisions, each rank scores its 5 classes
        by = rep.get("classes", {})
        assert "error" not in by, by.get("traceback")
        assert by["labels"] == expected["labels"] and by["pruned"] == expected["pruned"], f"rank {rank}"
        assert by["shard_by"] == "classes" and ok["shard_by"] == "images" and by["local_samples"] == 20
        assert by["rows_scored"] < by["rows_requested"]
    assert reports[0]["ok"]["rows_requested"] == reports[1]["ok"]["rows_requested"]
    print(f"\nanalysis: one process {single.analysis_seconds:.1f} s, two gloo ranks "
          f"{[round(r['ok']['analysis'], 1) for r in reports]} s; {wall:.1f} s wall for the spawned children "
          f"(all scenarios, imports included); forward equivalents {single.engine.forward_equivalents:.1f} vs "
          f"{[round(r['ok']['forward_equivalents'], 1) for r in reports]} per rank")


@pytest.mark.slow  # the scenarios share one spawn of two ranks: 27-43 s here (imports ~16 s)
def test_ranks_with_different_calibration_sets_are_refused(ranks):
    reports, codes, _ = ranks
    for rank, rep in enumerate(reports):
        differ = rep["differ"]
        assert differ.get("error") == "ValueError", (rank, differ)
        assert "the ranks hold different calibration sets (rank 1 differs from rank 0" in differ["message"]


def test_distributed_takes_true_false_or_a_process_group():
    from cswap_nb.pruning.session import _check_distributed

    with pytest.raises(TypeError, match="distributed= takes True"):
        cs.prune(torch.nn.Linear(2, 2), (torch.randn(4, 2), torch.tensor([0, 1, 0, 1])), distributed="yes")
    assert not torch.distributed.is_initialized()
    assert _check_distributed(None) == (False, None) and _check_distributed(False) == (False, None)
    with pytest.raises(ValueError, match="needs an initialised torch.distributed process group"):
        _check_distributed(True)


@pytest.mark.slow  # the scenarios share one spawn of two ranks: 27-43 s here (imports ~16 s)
@pytest.mark.parametrize("mode, own, told, limit", [
    # an error before any scoring (rank 1's calibration selection) reaches rank 0 through the set-up's own
    # check, not through the next scoring call's collective or the process group's timeout
    ("setup", "set-up failed on purpose", "rank 1 of 2 failed while setting up its session", 30),
    ("raise", "scoring failed on purpose", "rank 1 of 2 failed while scoring", 60),
])
def test_a_rank_that_raises_stops_the_other(ranks, mode, own, told, limit):
    reports, codes, _ = ranks
    assert all(c is not None for c in codes), f"a rank hung: exit codes {codes}"
    first, second = reports[0][mode], reports[1][mode]
    assert second.get("error") == "ValueError" and own in second["message"]
    assert first.get("error") == "RankLostError", first
    assert told in first["message"]
    assert first["seconds"] < limit
    print(f"\nrank 0 raised {first['seconds']:.1f} s after its session started (set-up included)")


@pytest.mark.slow  # the scenarios share one spawn of two ranks: 27-43 s here (imports ~16 s)
def test_a_rank_that_dies_stops_the_other(ranks):
    reports, codes, _ = ranks
    assert codes == [0, 3], f"exit codes {codes} (rank 1 ends itself with 3; None: hung)"
    assert "die" not in reports[1]  # ended before it could say anything
    first = reports[0]["die"]
    assert first.get("error") == "RankLostError", first
    assert "another rank died or stopped answering" in first["message"]
    assert first["seconds"] < 70  # the process group's 60 s timeout at most
    print(f"\nrank 0 raised {first['seconds']:.1f} s after its session started (set-up included)")


@pytest.mark.slow  # two ranks under torchrun plus one process: ~40 s here (imports ~5 s each)
def test_the_cli_under_torchrun_takes_the_single_process_decisions(tmp_path):
    """``torchrun --nproc-per-node 2 -m cswap_nb prune ...``: the two ranks share the analysis, rank 0 alone prints
    and writes the JSON, and its decisions are those of the same command in one process."""
    import subprocess
    import sys

    flags = ["--model", "resnet18-digits", "--samples-per-class", "4", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "cswap_nb", "prune", *flags, "--json", str(tmp_path / "one.json")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "cswap_nb", "prune", *flags, "--json", str(tmp_path / "two.json")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, (two.stdout[-2000:], two.stderr[-2000:])
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert b["engine"]["world_size"] == 2 and a["engine"]["world_size"] == 1
    assert b["engine"]["local_samples"] < a["engine"]["local_samples"]  # each rank scored its shard only
    for key in ("counts", "params_after", "per_layer"):
        assert a[key] == b[key], key
    assert two.stdout.count("masked model == physically pruned model") == 1  # one rank reports the run
    assert two.stdout.count(f"wrote {tmp_path / 'two.json'}") == 1


def test_the_cli_refuses_commands_it_cannot_share_under_torchrun(monkeypatch, capsys):
    """Under torchrun (WORLD_SIZE > 1) a command other than prune or demo is refused before any process group
    is needed; WORLD_SIZE 1 or unset is one process."""
    from cswap_nb.ui import cli

    monkeypatch.setattr(cli, "launched_ranks", lambda: True)
    assert cli.main(["models"]) == 2
    assert "only prune and demo" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cli.launched_ranks() is False
