"""The causal analysis sharded over processes with ``torch.distributed`` (cswap_nb/METHOD.md §10).

:class:`ShardedEngine` wraps a score engine in an initialised process group. Each rank holds a fixed
shard of the calibration set: by default every class's samples (a run of equal labels, the calibration
selection orders them so) are cut into one contiguous block per rank, of sizes that differ by at most one (the
extra samples rotate over the ranks); ``by="classes"`` gives each class whole to one rank instead
(:func:`shard_pieces`; ``benchmarks/shard_by.py`` measures both). The wrapped engine sees only that shard as its calibration set, so
its caches (the graph engine's frontier, the parts engine's prefix) are built on the shard too, and any
call (``scores`` with or without a layer, ``rows_scores`` on some classes' rows) is split: a rank scores
the requested rows that lie in its shard, and one ``all_gather`` hands every rank exactly the scores the
call asks for, in the original order. Every rank then runs the same deterministic loop on the same
scores, so every rank takes the same decisions and holds the same masks.

* No speculation: :meth:`ShardedEngine.can_stack` is False (candidates scored ahead would be one rank's
  guess). :meth:`~ShardedEngine.can_slice` is the wrapped engine's answer on the local shard, agreed by
  all ranks (the minimum, asked once per layer and calibration shape), so that every rank makes the same calls.
* Segmentation (the wrapped engine's ``masks`` set): an image holds several classes and the scores are
  indexed by (image, class) pairs, so the images are not sharded: every rank computes every score.
* Failures: a rank whose scoring raises says so in the same ``all_gather`` and re-raises its error; the
  other ranks raise a :class:`RankLostError` (a :class:`RuntimeError`) naming it. A rank that dies or stops
  answering makes the collective fail (a closed connection, or the process group's ``timeout``), which is
  re-raised as a :class:`RankLostError` saying that a rank of the group was lost.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ..core.calibration import label_runs
from .base import EngineWrapper, Rows, ScoreEngine
from .passes import merge_rows, row_count, take_rows

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_OK, _FAILED = 0.0, 1.0


class RankLostError(RuntimeError):
    """Another rank of the process group failed or stopped answering during the analysis."""


@dataclass
class _Shard:
    x: Tensor  # the full calibration tensors the shard was cut from (kept: callers pass the same objects)
    y: Tensor
    pieces: list[tuple[int, int, int, int]]  # (start, stop, rank, start in that rank's shard), in order
    local: tuple[tuple[int, int], ...]  # this rank's rows of the full set
    x_local: Tensor
    y_local: Tensor
    plans: dict = field(default_factory=dict)  # rows -> (local rows, rows per rank, permutation)


SHARD_BY = ("images", "classes")


def shard_pieces(y: Tensor, world: int, by: str = "images") -> list[tuple[int, int, int, int]]:
    """How the calibration samples are shared among ``world`` ranks, as ``(start, stop, rank, start in the
    rank's shard)`` per non-empty block, in the samples' order.

    ``by="images"`` (the default): each run of equal labels is cut into one contiguous block per rank (rank
    order), sizes differing by one at most, the extra samples of successive runs given to successive ranks,
    so that every rank holds part of every class and any set of classes (an early-decision stage) is shared
    evenly. ``by="classes"``: each run goes whole to one rank, the rank with the fewest samples so far (the
    lowest rank on ties), so that a stage of a few classes is scored by the ranks that hold them while the
    others wait at the gather."""
    if by not in SHARD_BY:
        raise ValueError(f"shard_by must be one of {SHARD_BY}, got {by!r}")
    pieces, filled, turn = [], [0] * world, 0
    for _, a, b in label_runs(y) or [(0, 0, int(y.shape[0]))]:
        if by == "classes":
            r = min(range(world), key=lambda i: (filled[i], i))
            pieces.append((a, b, r, filled[r]))
            filled[r] += b - a
            continue
        base, extra = divmod(b - a, world)
        start = a
        for r in range(world):
            size = base + (1 if (r - turn) % world < extra else 0)
            if size:
                pieces.append((start, start + size, r, filled[r]))
                filled[r] += size
                start += size
        turn = (turn + extra) % world
    return pieces


class ShardedEngine(EngineWrapper):
    """A score engine whose work is shared among the ranks of a ``torch.distributed`` process group (module
    docstring). ``engine``: the wrapped engine (built on this rank's copy of the model); ``group``: the
    process group (default: the world); ``by``: how the calibration set is cut (:func:`shard_pieces`). The engine interface is the wrapped engine's where this class does not
    redefine it (:class:`~cswap_nb.engines.base.EngineWrapper`); anything else of it is reached through ``inner``.

    :attr:`forward_equivalents` counts this rank's work in passes over the whole calibration set;
    :attr:`rows_scored` the calibration samples this rank scored and :attr:`rows_requested` those the
    calls asked for (so ``rows_scored / rows_requested`` is about ``1 / world``).
    """

    def __init__(self, engine: ScoreEngine, group=None, by: str = "images"):
        if by not in SHARD_BY:
            raise ValueError(f"shard_by must be one of {SHARD_BY}, got {by!r}")
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("ShardedEngine needs an initialised torch.distributed process group "
                               "(torchrun --nproc-per-node N ..., then torch.distributed.init_process_group())")
        super().__init__(engine)
        self.group, self.by = group, by
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.rows_scored = 0
        self.rows_requested = 0
        self._work = 0.0
        self._shards: list[_Shard] = []
        self._slice: dict[tuple, bool] = {}
        self._device = _group_device(group)

    # -- what the loop asks -------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        """Whether calls are split among the ranks (not for segmentation scores: every rank computes all)."""
        return not self.inner.segmenting

    @property
    def forward_equivalents(self) -> float:
        """This rank's work, in forward passes over the whole calibration set."""
        return self._work if self.sharded else self.inner.forward_equivalents

    @property
    def local_samples(self) -> int | None:
        """The calibration samples this rank scores (its shard; all of them for segmentation scores); None
        before the first call."""
        if not self._shards:
            return None
        shard = self._shards[-1]
        return int((shard.x_local if self.sharded else shard.x).shape[0])

    def can_slice(self, layer, x: Tensor) -> bool:
        if not self.sharded:
            return self.inner.can_slice(layer, x)
        key = (layer.name, tuple(x.shape))
        if key not in self._slice:
            shard = next((s for s in self._shards if s.x is x), None)  # the loop scored x before it asks
            local = shard.x_local if shard is not None else x
            mine = torch.tensor([float(self.inner.can_slice(layer, local))], device=self._device)
            self._collective(lambda: dist.all_reduce(mine, op=dist.ReduceOp.MIN, group=self.group))
            self._slice[key] = bool(mine.item() > 0)
        return self._slice[key]

    def can_stack(self, layer, x: Tensor) -> bool:
        return False  # a candidate scored ahead would be one rank's speculation

    def stack_rows(self, x, y, score, layer, others, rows, others_rows=None) -> None:
        raise NotImplementedError("a ShardedEngine scores one candidate per pass (can_stack is False)")

    def predicted_harm(self, x, y, classes, score) -> None:
        return None  # each rank would order the classes on its own sums, and every rank must score the same rows

    def scores(self, x: Tensor, y: Tensor, score: str, layer=None) -> Tensor:
        if not self.sharded:
            return self.inner.scores(x, y, score, layer)
        shard = self._shard(x, y)
        rows = ((0, int(x.shape[0])),)
        return self._gathered(shard, rows, lambda: self.inner.scores(shard.x_local, shard.y_local, score, layer))

    def rows_scores(self, x: Tensor, y: Tensor, score: str, layer, rows: Rows) -> Tensor:
        if not self.sharded:
            return self.inner.rows_scores(x, y, score, layer, rows)
        shard = self._shard(x, y)
        rows = tuple((int(a), int(b)) for a, b in rows)
        local = self._plan(shard, rows)[0]
        return self._gathered(shard, rows, lambda: self.inner.rows_scores(shard.x_local, shard.y_local, score,
                                                                          layer, local))

    # -- the shards and the gather ------------------------------------------------------------
    def _shard(self, x: Tensor, y: Tensor) -> _Shard:
        """This rank's shard of ``(x, y)`` (cut once: the wrapped engine's caches are keyed by the tensor)."""
        for s in self._shards:
            if s.x is x and s.y is y:
                return s
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"x and y hold {x.shape[0]} and {y.shape[0]} samples")
        pieces = shard_pieces(y, self.world, self.by)
        local = merge_rows([(a, b) for a, b, r, _ in pieces if r == self.rank])
        x_local = take_rows(x, local) if local else x[:0]
        y_local = take_rows(y, local) if local else y[:0]
        self._check_same_set(x, y)
        shard = _Shard(x, y, pieces, local, x_local, y_local)
        self._shards = [*self._shards[-3:], shard]  # a few (x, y) pairs; the session passes one
        return shard

    def _check_same_set(self, x: Tensor, y: Tensor) -> None:
        """Raise ``ValueError`` on every rank unless all ranks hold the same calibration set: each rank keeps
        only its shard of the set it was given, so different sets (another seed, another data order) would
        mix samples that were never chosen together. Compared by a fingerprint (size, sums of the inputs and
        of their squares, the labels weighted by position), one ``all_gather``."""
        total = square = size = torch.zeros((), dtype=torch.float64, device=x.device)
        for chunk in x.detach().reshape(x.shape[0], -1).split(256):  # float64 a chunk at a time, never the whole set
            c = torch.nan_to_num(chunk.double(), nan=0.0, posinf=0.0, neginf=0.0)
            total, square, size = total + c.sum(), square + (c * c).sum(), size + c.abs().sum()
        pos = torch.arange(1, y.shape[0] + 1, device=y.device, dtype=torch.float64)
        labels = (y.detach().double().reshape(y.shape[0], -1).sum(1) * pos).sum().to(x.device)
        n = torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device)
        mine = torch.stack([n, total, square, labels, size]).to(self._device)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        self._collective(lambda: dist.all_gather(parts, mine, group=self.group))
        ref = parts[0]
        slack = 1e-9 * (float(ref[4]) + float(ref[2]) + 1.0)  # summation order may differ between ranks
        differ = [r for r, p in enumerate(parts)
                  if p[0] != ref[0] or p[3] != ref[3] or float((p[1:3] - ref[1:3]).abs().max()) > slack]
        if differ:
            raise ValueError(
                f"the ranks hold different calibration sets ("
                f"{'ranks ' + ', '.join(map(str, differ)) + ' differ' if len(differ) > 1 else f'rank {differ[0]} differs'}"
                f" from rank 0; samples per rank {[int(p[0]) for p in parts]}): give "
                "every rank the same data, options and seed, so that each selects the same calibration set")

    def _plan(self, shard: _Shard, rows: Rows) -> tuple:
        """For ``rows`` of the full set: this rank's rows in its shard, the number of rows of each rank,
        and the permutation from the ranks' results (concatenated in rank order) to ``rows``' order."""
        plans = shard.plans
        if rows not in plans:
            mine: list[tuple[int, int]] = []
            counts = [0] * self.world
            owner = []  # (rank, position among that rank's results, length) in the order of rows
            for ra, rb in rows:
                for a, b, r, at in shard.pieces:
                    lo, hi = max(ra, a), min(rb, b)
                    if lo >= hi:
                        continue
                    if r == self.rank:
                        mine.append((at + lo - a, at + hi - a))
                    owner.append((r, counts[r], hi - lo))
                    counts[r] += hi - lo
            offsets = np.cumsum([0, *counts[:-1]])
            perm = (np.concatenate([np.arange(offsets[r] + i, offsets[r] + i + n) for r, i, n in owner])
                    if owner else np.zeros(0, dtype=np.int64))
            plans[rows] = (merge_rows(mine), counts, torch.as_tensor(perm, dtype=torch.long))
            if len(plans) > 256:  # rows repeat (the classes scored first): keep the recent plans
                plans.pop(next(iter(plans)))
        return plans[rows]

    def _gathered(self, shard: _Shard, rows: Rows, compute) -> Tensor:
        """Score this rank's part of ``rows`` with ``compute`` and gather every rank's part: the scores of
        ``rows`` in their order, the same on every rank."""
        local, counts, perm = self._plan(shard, rows)
        self.rows_requested += row_count(rows)
        n = counts[self.rank]
        q, error = None, None
        if n:
            before = self.inner.forward_equivalents
            try:
                q = compute()
                if q.shape[0] != n:
                    raise ValueError(f"the wrapped engine returned {q.shape[0]} scores for {n} rows")
            except Exception as exc:  # noqa: BLE001 - told to the other ranks, then raised here
                error = exc
            self._work += (self.inner.forward_equivalents - before) * shard.x_local.shape[0] / max(1, shard.x.shape[0])
            self.rows_scored += n
        width = max(counts)
        buf = torch.zeros(2 + width, dtype=torch.float64, device=self._device)
        buf[0] = _FAILED if error is not None else _OK
        if q is not None:
            buf[1] = _DTYPES.index(q.dtype) if q.dtype in _DTYPES else 0
            buf[2 : 2 + n] = q.detach().reshape(-1).to(self._device, torch.float64)
        else:
            buf[1] = -1  # no scores here: the dtype is read from a rank that has some
        parts = [torch.empty_like(buf) for _ in range(self.world)]
        self._collective(lambda: dist.all_gather(parts, buf, group=self.group))
        failed = [r for r, p in enumerate(parts) if p[0].item() != _OK]
        if error is not None:
            raise error
        if failed:
            raise _failed(failed, self.world, "scoring its calibration shard", self.rank)
        codes = [int(p[1].item()) for p in parts if p[1].item() >= 0]
        dtype = _DTYPES[codes[0]] if codes else torch.float32
        flat = torch.cat([p[2 : 2 + c] for p, c in zip(parts, counts)])
        device = shard.x.device
        return flat[perm.to(flat.device)].to(device=device, dtype=dtype)

    def _collective(self, op) -> None:
        """Run a collective; a failure (a rank that died, a timeout) is raised as a :class:`RankLostError`."""
        try:
            work = op()
            if work is not None:
                work.wait()
        except Exception as exc:  # noqa: BLE001 - gloo, NCCL and the store raise different types
            raise RankLostError(f"rank {self.rank} of {self.world}: a collective of the sharded analysis failed; "
                                f"another rank died or stopped answering within the process group's timeout "
                                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''})"
                                ) from exc


def agree(group, error: Exception | None, stage: str) -> None:
    """Tell every rank of ``group`` whether this one failed at ``stage`` (one ``all_gather`` that all ranks
    reach, failed or not), then raise: this rank's own ``error``, or a :class:`RankLostError` naming the ranks
    that failed. So an error at a step outside the scoring calls (a session's set-up) ends every rank at once,
    instead of leaving the others waiting in their next collective until the failed process ends."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    mine = torch.tensor([float(error is not None)], device=_group_device(group))
    parts = [torch.empty_like(mine) for _ in range(world)]
    try:
        dist.all_gather(parts, mine, group=group)
    except Exception as exc:  # noqa: BLE001 - gloo, NCCL and the store raise different types
        if error is not None:
            raise error from None
        raise RankLostError(f"rank {rank} of {world}: another rank died or stopped answering while {stage} "
                            f"({type(exc).__name__})") from exc
    if error is not None:
        raise error
    failed = [r for r, p in enumerate(parts) if p.item() != 0]
    if failed:
        raise _failed(failed, world, stage, rank)


def _group_device(group) -> torch.device:
    """Where a collective of ``group`` holds its tensors: this process's GPU for NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")


def _failed(failed: list[int], world: int, stage: str, rank: int) -> RankLostError:
    """The error a rank raises when the ranks ``failed`` said they failed at ``stage``."""
    return RankLostError(f"rank{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))} of {world} failed "
                         f"while {stage} (see its own error); rank {rank} stops too")


__all__ = ["ShardedEngine", "RankLostError", "shard_pieces", "agree", "SHARD_BY"]
