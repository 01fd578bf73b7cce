"""A pruning session: set up once, then step through the search, then finish.

:class:`PruneSession` validates the inputs, picks the calibration set (classification or
segmentation), finds the units and builds the score engine in its constructor; :meth:`~PruneSession.steps`
yields the records of the chosen strategy one by one (so a notebook can plot live, a widget can
update and stop, a test can inspect every decision); :meth:`~PruneSession.finish` removes the
pruned units physically, checks masked == pruned, evaluates and returns the
:class:`~cswap_nb.core.result.PruneResult`. :func:`cswap_nb.prune` is the one-call form.

Each strategy is one runner in :data:`STRATEGIES` (``"cswap"``: the progressive causal descent,
``"greedy"``, ``"rank"``: rank-and-prune with a criterion of :data:`cswap_nb.criteria.CRITERIA`).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import textwrap
import time
import warnings
from typing import Callable, Iterator

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import models
from ..core.calibration import select_calibration, select_segmentation_calibration, stream_calibration
from ..data.labels import IGNORE_INDEX
from ..core.config import CSwapConfig, make_config, options_in_brief
from ..criteria import CRITERIA, Cost, score_units
from ..data import as_tensors, check_xy, stream_source
from .descent import Guard, greedy, progressive, rank_and_prune, visiting_plan
from ..engines.build import make_engine
from ..engines.compact import mac_share_estimate
from ..engines.sharded import SHARD_BY, ShardedEngine, agree
from ..core.layout import to_channels_last, to_default
from ..core.metrics import evaluate
from ..core.result import PruneResult, equivalence_tolerance, model_label
from ..core.surgery import count_macs, count_params, failing_removals, remove_units
from ..core.units import Coverage, Masker, UnsupportedModel, survey_units


LOW_COVERAGE = 0.5
"""Below this share of the parameters in testable units (:class:`cswap_nb.core.units.Coverage`), a C-SWAP run
and a ``ratio=`` or ``params=`` target warn (:class:`LowCoverageWarning`) before the work."""


class LowCoverageWarning(UserWarning):
    """The units cover few of the model's parameters, so removing them cannot shrink it much (e.g. a
    RegNet or ResNeXt, whose blocks feed grouped convolutions, under ``scope="internal"``)."""


@contextlib.contextmanager
def full_float32():
    """TF32 off for CUDA convolutions and matmuls inside the block (restored afterwards).

    PyTorch runs CUDA convolutions in TF32 by default (10-bit mantissa). The causal tests
    compare small score differences and the masked/pruned check expects float32 agreement;
    with TF32 on, an H200 run of ddrnet23slim-roads disagreed with the CPU on 242 of 1,920
    labels and masked vs pruned differed by 9e-3. No effect on CPUs.
    """
    if hasattr(torch.backends.cudnn, "conv"):  # PyTorch >= 2.9: reading the legacy flags fails once the new are set
        flags = [(torch.backends.cudnn.conv, "fp32_precision"), (torch.backends.cuda.matmul, "fp32_precision")]
        off = "ieee"
    else:
        flags = [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")]
        off = False
    saved = [getattr(obj, name) for obj, name in flags]
    for obj, name in flags:
        setattr(obj, name, off)
    try:
        yield
    finally:
        for (obj, name), value in zip(flags, saved):
            setattr(obj, name, value)


# ------------------------------------------------------------------------------------ strategies

STRATEGIES: dict[str, Callable[["PruneSession"], Iterator[dict]]] = {}
"""One runner per search strategy (cswap_nb/METHOD.md §1): ``runner(session)`` yields its records."""


def strategy(name: str):
    """Decorator: register a runner under ``name`` in :data:`STRATEGIES`."""
    def register(runner):
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        STRATEGIES[name] = runner
        return runner
    return register


@strategy("cswap")
def _run_cswap(session: "PruneSession") -> Iterator[dict]:
    cfg = session.config
    if cfg.max_drop is not None:
        dense = evaluate(session.model, session.guard_data)
        session.guard = Guard(lambda: evaluate(session.work, session.guard_data), dense, cfg.max_drop)
    return progressive(session.engine, session.masker, session.layers, session.x, session.test_y, cfg, session.guard)


@strategy("greedy")
def _run_greedy(session: "PruneSession") -> Iterator[dict]:
    n_units = sum(layer.size for layer in session.layers)
    steps = greedy(session.engine, session.masker, session.layers, session.x, session.test_y,
                   session.total_steps if session.total_steps is not None else n_units, session.config.score)
    for record in steps:
        yield record
        if session.target.get("params") is not None and session.params_after(session.masker.pruned()) <= session.target["params"]:
            return


@strategy("rank")
def _run_rank(session: "PruneSession") -> Iterator[dict]:
    if session.scores is None:
        session.scores = score_units(session.method, session.template, session.layers, session.x, session.y,
                                     seed=session.config.seed, cost=session.cost)
    cut = rank_and_prune(session.scores, session.layers, **session.target, params_after=session.params_after)
    for layer in session.layers:
        chosen = set(cut.get(layer.name, []))
        if chosen:
            session.masker.set(layer.name, sorted(chosen), True)
        for unit in range(layer.size):
            yield {"layer": layer.name, "kind": layer.kind, "unit": unit, "label": None,
                   "score": float(session.scores[layer.name][unit]), "pruned": unit in chosen}


def strategy_of(method: str) -> str:
    """The :data:`STRATEGIES` key of a ``method``: itself for a registered search strategy, ``"rank"`` for a
    criterion (rank-and-prune)."""
    searches = [name for name in STRATEGIES if name != "rank"]
    if method in searches:
        return method
    if method in CRITERIA:
        return "rank"
    raise ValueError(f"method must be one of {[*searches, *CRITERIA]}, got {method!r}")


SESSION_PARAMETERS = """Parameters
----------
model : nn.Module
    The trained model; a copy is pruned (the caller's model is never modified).
calib
    Calibration data: an ``(x, y)`` tensor pair, a Dataset or a DataLoader. A Dataset with class labels (e.g. an
    ImageFolder), or a DataLoader reading one in order, is read in batches
    (:func:`cswap_nb.core.calibration.stream_calibration`). Its correctly classified samples,
    ``samples_per_class`` per class, form the calibration set. For segmentation ``y`` holds label masks
    (N, H, W) (255 ignored), the model returns (N, C, h, w) logits, images are chosen by
    :func:`cswap_nb.core.calibration.select_segmentation_calibration` and the metric is mIoU.
method : str
    ``"cswap"`` (default), ``"greedy"``, or a criterion of :data:`cswap_nb.criteria.CRITERIA` (rank-and-prune).
config : CSwapConfig, optional
    The options of the analysis (cswap_nb/METHOD.md §7); default :class:`~cswap_nb.core.config.CSwapConfig` ().
ratio, params, counts
    The target of a baseline (exactly one; C-SWAP takes none): the fraction of all units removed (global
    ranking), the parameter count to reach (the closest global cut), or units removed per layer (e.g. C-SWAP's
    allocation; greedy takes ``ratio`` or ``params`` only).
scores : dict, optional
    A criterion's scores from an earlier result (``res.scores``), reused instead of recomputed.
eval_data : optional
    Held-out data; the result then holds the metric (accuracy or mIoU) before and after.
guard_data : optional
    The validation split on which the ``max_drop`` guard measures the network (cswap_nb/METHOD.md §3; C-SWAP
    with ``max_drop`` set needs it). Use a split that is neither the calibration pool nor the test set (the
    zoo's ``data.val``).
ignored_layers : list of nn.Module, optional
    Modules of ``model`` whose output channels are never pruned.
progress : bool
    Show a progress bar.
model_name : str, optional
    The name in summaries and figures (default: a shipped checkpoint's name, else the class name).
distributed : None, bool or ProcessGroup
    Share the causal analysis among the ranks of an initialised ``torch.distributed`` process group (True: the
    default group; launched with ``torchrun --nproc-per-node N``): every rank runs the same session and gets
    the same result, each scores its shard of the calibration set
    (:class:`cswap_nb.engines.sharded.ShardedEngine`, cswap_nb/METHOD.md §10). Only rank 0 shows progress.
    None (default): shared whenever a process group of more than one rank is initialised; False: never.
shard_by : {"images", "classes"}
    With ``distributed=``, how the calibration set is cut among the ranks: each class's images shared among all
    ranks (default; every early-decision stage is shared evenly), or each class given whole to one rank.
**options
    Any field of :class:`~cswap_nb.core.config.CSwapConfig` (its docstring says what each means), replacing
    those of ``config``; each with its default:
""" + "\n".join("    " + line for line in textwrap.wrap(options_in_brief() + ".", 100, break_on_hyphens=False))
"""The parameters of :class:`PruneSession` and :func:`cswap_nb.prune`, written once for both docstrings."""


def with_parameters(doc: str, indent: str = "    ") -> str:
    """``doc`` with its ``{parameters}`` line replaced by :data:`SESSION_PARAMETERS`, indented."""
    if not doc:  # None under python -OO
        return doc
    return doc.replace("{parameters}", SESSION_PARAMETERS.replace("\n", "\n" + indent))


# ------------------------------------------------------------------------------------ the session

class PruneSession:
    """One pruning run, set up once and then driven step by step (the caller's model is never modified).

    The set-up finds the units and, from the same trace, their :attr:`coverage`
    (:class:`cswap_nb.core.units.Coverage`: the share of the parameters they hold and why the rest is left
    out). Below :data:`LOW_COVERAGE` a C-SWAP run or a ``ratio=``/``params=`` target warns
    (:class:`LowCoverageWarning`); a ``params=`` target that no cut of the units reaches is an error. A model
    whose units cannot all be removed physically (:func:`cswap_nb.core.surgery.failing_removals`) is refused
    with :class:`~cswap_nb.core.units.UnsupportedModel`, naming the layers.

    {parameters}

    Examples
    --------
    >>> session = PruneSession(model, data.calib, alpha=0.05)
    >>> for record in session.steps():   # one record per causal test
    ...     print(record["layer"], record["unit"], record["label"])
    >>> result = session.finish()
    """

    def __init__(self, model: nn.Module, calib, method: str = "cswap", *, config: CSwapConfig | None = None,
                 ratio: float | None = None, params: int | None = None, counts: dict[str, int] | None = None,
                 scores: dict[str, Tensor] | None = None, eval_data=None, guard_data=None,
                 ignored_layers: list[nn.Module] | None = None, progress: bool = True, model_name: str | None = None,
                 distributed=None, shard_by: str = "images", **options):
        self.t_start = time.perf_counter()
        self.strategy = strategy_of(method)
        self.method, self.config = method, make_config(config, **options)
        self.target = self._check_target(method, ratio, params, counts)
        need = self.config.check_samples() if method == "cswap" else 1
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if method == "cswap" and self.config.max_drop is not None and guard_data is None:
            raise ValueError(f"max_drop={self.config.max_drop} needs guard_data=, a validation split (e.g. the zoo's "
                             "data.val) on which the guard measures the pruned network; not the test set")
        self.distributed, self.group = _check_distributed(distributed)
        if shard_by not in SHARD_BY:
            raise ValueError(f"shard_by must be one of {SHARD_BY}, got {shard_by!r}")
        self.shard_by = shard_by
        if self.distributed and torch.distributed.get_rank(self.group) != 0:
            progress = False  # one bar for the whole group
        self.model, self.scores, self.eval_data, self.progress = model, scores, eval_data, progress
        self.guard_data = guard_data if method == "cswap" else None
        self.guard = None
        self.model_name = model_name
        self.records: list[dict] = []
        self._steps: Iterator[dict] | None = None
        self.analysis_seconds = 0.0
        self.cost = Cost()
        error = None
        try:
            with full_float32():
                self._setup(model, calib, need, ignored_layers)
            self._check_coverage()
        except Exception as exc:  # noqa: BLE001 - with distributed=, told to the other ranks first
            error = exc
        if self.distributed:  # every rank learns whether any failed here: none waits for one that stopped
            agree(self.group, error, "setting up its session")
        elif error is not None:
            raise error

    @staticmethod
    def _check_target(method: str, ratio, params, counts) -> dict:
        targets = {k: v for k, v in (("ratio", ratio), ("params", params), ("counts", counts)) if v is not None}
        if method == "cswap" and targets:
            raise ValueError(f"C-SWAP's compression is an outcome of alpha, not a target; drop {sorted(targets)}")
        if method != "cswap" and len(targets) != 1:
            raise ValueError(f"method {method!r} needs exactly one target: ratio=, params= or counts=; "
                             f"got {sorted(targets) or 'none'}")
        if method == "greedy" and "counts" in targets:
            raise ValueError("greedy takes ratio= or params=, not counts=")
        return targets

    def _setup(self, model: nn.Module, calib, need: int, ignored_layers) -> None:
        streamed = stream_source(calib) is not None  # a Dataset or in-order DataLoader: read in batches
        if streamed:
            x, y = as_tensors(calib, max_samples=2)  # the probe's two samples
            check_xy(x, y)
            streamed = y.ndim == 1  # segmentation masks: read whole, as tensors
        if not streamed:
            x, y = as_tensors(calib)
            check_xy(x, y)
        work = to_channels_last(copy.deepcopy(model).eval())  # our copy only (cswap_nb/core/layout.py)
        params_list = list(work.parameters())
        if not params_list:
            raise ValueError("the model has no parameters: nothing to prune")
        device = params_list[0].device
        self.work = work
        self._pick_calibration(x.to(device), y.to(device).long(), need, calib if streamed else None)
        self.example = self.x[:1]
        self.params_before, self.macs_before = count_params(work), count_macs(work, self.example)
        self.layers, self.coverage = survey_units(work, self.example, scope=self.config.scope,
                                                  ignored_layers=_same_modules(model, work, ignored_layers))
        if not self.layers:
            raise ValueError(f"the model has no prunable unit (scope={self.config.scope!r}): no conv/linear layer "
                             "other than the classifier whose output channels can be removed")
        broken = failing_removals(work, self.example, self.layers)
        if broken:
            raise UnsupportedModel(
                f"removing units of {len(broken)} unit layer(s) breaks the model, which Torch-Pruning's dependency "
                "graph does not foresee (e.g. an attention that reshapes these channels into heads): "
                + "; ".join(f"{name}: {err}" for name, err in broken.items())
                + (". These are coupled streams: scope='internal' leaves them out" if all(
                    layer.kind == "coupled" for layer in self.layers if layer.name in broken) else "")
                + "; or pass their modules as ignored_layers=")
        self.template = copy.deepcopy(work)  # never masked: criteria score it, candidate cuts are counted on copies
        self.masker = Masker(work, self.layers)
        self._engine = None  # built when a strategy first scores (a criterion's ranking never does)
        self.total_steps = self._count_steps()

    def _check_coverage(self) -> None:
        """Say before the work when the units cover little of the model (:data:`LOW_COVERAGE`), and refuse a
        ``params=`` target that removing every unit but one per layer would not reach."""
        cov: Coverage = self.coverage
        params = self.target.get("params")
        if params is not None and params < self.params_before - cov.removable:
            raise ValueError(
                f"params={params:,} is out of reach: removing every unit but one per layer leaves "
                f"{self.params_before - cov.removable:,} of the {self.params_before:,} parameters (at most "
                f"{cov.removable:,} can be removed).\n{cov}")
        if cov.share < LOW_COVERAGE and (self.method == "cswap" or params is not None or "ratio" in self.target):
            what = ("C-SWAP tests only these units" if self.method == "cswap" else
                    "ratio= counts these units, not parameters" if "ratio" in self.target else
                    "a params= target is reached by removing these units only")
            warnings.warn(LowCoverageWarning(
                f"{cov}\n{what}: pruning cannot shrink this model much (units cover less than "
                f"{100 * LOW_COVERAGE:.0f}% of its parameters)"), stacklevel=3)

    @functools.cached_property
    def spec(self) -> dict | None:
        """The architecture spec of the model (:func:`cswap_nb.models.describe`), None when it has none.

        Described when first asked (by :meth:`finish`): describing a DDRNet builds one on the meta device,
        0.2 s that a session would otherwise pay at set-up."""
        try:
            return models.describe(self.model)
        except ValueError:
            return None

    @property
    def engine(self):
        """The scoring engine of :attr:`config` (:func:`cswap_nb.engines.build.make_engine`), built on first use.

        Rank-and-prune criteria score the units without it, so a baseline's run does not pay for
        tracing and checking the model's graph. Assigning replaces it (e.g. by a caching wrapper).
        With ``distributed=``, the engine is wrapped in a :class:`~cswap_nb.engines.sharded.ShardedEngine`.
        """
        if self._engine is None:
            engine = self.build_engine()
            if self.distributed:
                engine = ShardedEngine(engine, self.group, self.shard_by)
            self._engine = engine
        return self._engine

    def build_engine(self):
        """A new scoring engine of :attr:`config` on the working copy (what :attr:`engine` holds once asked).

        A wrapper that may never need one (the α explorer's score cache, when every score of a run was
        computed before) takes this method and calls it on its first miss."""
        with full_float32():
            # compaction: the progressive loop visits each layer once; greedy would want a copy per layer and step
            compact = self.config.compaction == "on" and self.strategy == "cswap"
            estimate = mac_share_estimate(self.coverage.footprints, self.template, self.example) if compact else None
            engine = make_engine(self.config.engine, self.work, self.masker, self.example,
                                 compact_from=(self.template, self.macs_before, estimate) if compact else None)
            if self.segmentation:
                engine.segmentation(self.y, self.pairs if self.config.inference == "per-class" else None)
        return engine

    @engine.setter
    def engine(self, engine) -> None:
        self._engine = engine

    def _pick_calibration(self, x: Tensor, y: Tensor, need: int, stream=None) -> None:
        """Choose the calibration set from ``(x, y)``, or from ``stream`` (a Dataset or DataLoader read in
        batches, :func:`cswap_nb.core.calibration.stream_calibration`) of which ``(x, y)`` are the first samples."""
        cfg = self.config
        try:
            with torch.inference_mode():
                probe = self.work(x[:2])
        except Exception as exc:
            raise ValueError(f"the model could not run on calibration inputs of shape {tuple(x.shape[1:])} "
                             f"(per sample): {type(exc).__name__}: {exc}") from exc
        self.segmentation = y.ndim == 3
        if self.segmentation:
            if not isinstance(probe, Tensor) or probe.ndim != 4:
                got = tuple(probe.shape) if isinstance(probe, Tensor) else type(probe).__name__
                raise ValueError(f"label masks (N, H, W) need a model returning (N, classes, h, w) logits, got {got}")
            valid = y[y != IGNORE_INDEX]
            if len(valid) and (int(valid.min()) < 0 or int(valid.max()) >= probe.shape[1]):
                raise ValueError(f"mask labels must lie in [0, {probe.shape[1] - 1}] or be 255 (ignored) for a model "
                                 f"with {probe.shape[1]} outputs; got labels from {int(valid.min())} to {int(valid.max())}")
            self.x, self.y, self.pairs = select_segmentation_calibration(
                x, y, cfg.samples_per_class, probe.shape[1], seed=cfg.seed, min_per_class=need)
            self.test_y = (self.pairs[:, 1] if cfg.inference == "per-class"
                           else torch.zeros(len(self.x), dtype=torch.long, device=x.device))
            return
        if not isinstance(probe, Tensor) or probe.ndim != 2:
            got = tuple(probe.shape) if isinstance(probe, Tensor) else type(probe).__name__
            raise ValueError(f"expected (N, classes) logits from the model, got {got}; wrap the model so that its "
                             "forward returns one logits tensor")
        if stream is not None:
            self.x, self.y = (t.to(x.device) for t in stream_calibration(
                self.work, stream, cfg.samples_per_class, seed=cfg.seed, min_per_class=need,
                num_outputs=probe.shape[1]))
            self.test_y, self.pairs = self.y, None
            return
        if int(y.min()) < 0 or int(y.max()) >= probe.shape[1]:
            raise ValueError(f"labels must lie in [0, {probe.shape[1] - 1}] for a model with {probe.shape[1]} "
                             f"outputs; got labels from {int(y.min())} to {int(y.max())}")
        self.x, self.y = select_calibration(self.work, x, y, cfg.samples_per_class, seed=cfg.seed, min_per_class=need)
        self.test_y, self.pairs = self.y, None

    def _count_steps(self) -> int | None:
        if self.strategy == "cswap":
            return len(visiting_plan(self.layers, self.config))
        if self.strategy == "greedy":
            ratio = self.target.get("ratio")
            return round(ratio * sum(layer.size for layer in self.layers)) if ratio is not None else None
        return sum(layer.size for layer in self.layers)

    def params_after(self, cut: dict[str, list[int]]) -> int:
        """The parameter count of the model with the units of ``cut`` removed.

        Counted from the units' footprints (:class:`cswap_nb.core.units.Footprints`, ~0.3 ms on DDRNet) when the
        survey could read them, else on a pruned copy (~0.1-0.4 s): a ``params=`` target's search and
        greedy's stopping rule count many cuts."""
        footprints = self.coverage.footprints
        counted = None if footprints is None else footprints.params_after(cut)
        if counted is not None:
            return counted
        return count_params(remove_units(copy.deepcopy(self.template), self.example, cut))

    # -- driving --------------------------------------------------------------------------
    def steps(self) -> Iterator[dict]:
        """Run the strategy, yielding one record per step (per tested unit or group for C-SWAP).

        Records are also kept in :attr:`records`. Stopping early (breaking out of the loop) leaves
        the units decided so far pruned; :meth:`finish` removes them (and closes the progress bar).
        """
        if self._steps is not None:
            raise RuntimeError("steps() was already run on this session; start a new PruneSession")
        self._steps = self._run()
        return self._steps

    def _run(self) -> Iterator[dict]:
        runner = STRATEGIES[self.strategy](self)
        show = self.progress and self.strategy != "rank"
        desc = f"C-SWAP α={self.config.alpha}" if self.strategy == "cswap" else "greedy descent"
        bar = tqdm(total=self.total_steps, desc=desc, unit="unit", disable=not show, leave=True, mininterval=0.5)
        t0 = time.perf_counter()
        removed = 0
        try:  # an error or an interrupt leaves no dead bar behind
            while True:
                with full_float32():
                    try:
                        record = next(runner)
                    except StopIteration:
                        break
                self.records.append(record)
                removed += bool(record.get("pruned"))
                bar.update(1)
                bar.set_postfix(removed=removed, refresh=False)
                yield record
        finally:
            bar.close()
            self.analysis_seconds = time.perf_counter() - t0

    def finish(self):
        """Remove the pruned units physically, check masked == pruned, evaluate; the :class:`PruneResult`."""
        if self._steps is None:
            for _ in self.steps():
                pass
        self._steps.close()  # a loop left early: close its progress bar, fix the analysis time
        with full_float32():
            if self.strategy != "rank":
                self.cost.forward_passes = self.engine.forward_equivalents
            e = self._engine  # None for a ranking: it ran no causal pass
            local = e.local_samples if self.distributed and e is not None else None  # this rank's shard
            check_x = self.x[: min(len(self.x), 64)]
            try:
                with torch.inference_mode():
                    masked_logits = self.work(check_x)
            finally:
                self.masker.remove()
            pruned_units = self.masker.pruned()
            work = remove_units(self.work, self.example, pruned_units)
            with torch.inference_mode():
                diff = float((work(check_x) - masked_logits).abs().max())
            scale = float(masked_logits.abs().max()) if masked_logits.numel() else 0.0
            to_default(work)  # the caller gets the usual layout back
            if not math.isfinite(diff) or diff > equivalence_tolerance(scale):
                warnings.warn(f"the physically pruned model differs from the masked one by up to {diff:.3g} (logits "
                              f"up to {scale:.3g}); the intervention does not match removal for this architecture",
                              stacklevel=2)
            cfg = self.config
            config = (cfg.as_dict() if self.method == "cswap" else
                      {"samples_per_class": cfg.samples_per_class, "scope": cfg.scope, "seed": cfg.seed,
                       "ratio": self.target.get("ratio"), "params": self.target.get("params"),
                       "counts": self.target.get("counts")})
            result = PruneResult(
                model=work, labels=pd.DataFrame(self.records), config=config,
                engine={**_engine_summary(e, cfg.engine),
                        "world_size": torch.distributed.get_world_size(self.group) if self.distributed else 1,
                        "local_samples": int(len(self.x)) if local is None else local,
                        "shard_by": self.shard_by if self.distributed else None,
                        "scores_per_pass": int(len(self.test_y)),
                        "forward_passes": round(self.cost.forward_passes, 3),
                        "backward_passes": round(self.cost.backward_passes, 3)},
                params_before=self.params_before, params_after=count_params(work),
                macs_before=self.macs_before, macs_after=count_macs(work, self.example), seconds=0.0,
                layers=[{"name": layer.name, "kind": layer.kind, "size": layer.size} for layer in self.layers],
                equivalence_max_abs_diff=diff, equivalence_logit_scale=scale, calib_samples=len(self.y),
                metric_name="miou_pct" if self.segmentation else "top1_accuracy_pct",
                model_name=self.model_name or model_label(self.model), method=self.method, spec=self.spec,
                analysis_seconds=self.analysis_seconds, pruned_units=dict(pruned_units),
                guard=None if self.guard is None else dict(self.guard.report), coverage=self.coverage,
                scores=self.scores if self.strategy == "rank" else None)
            if self.eval_data is not None:
                result.metric_before = evaluate(self.model, self.eval_data)
                result.metric_after = evaluate(work, self.eval_data)
        result.seconds = time.perf_counter() - self.t_start
        return result


PruneSession.__doc__ = with_parameters(PruneSession.__doc__)


def _engine_summary(engine, name: str) -> dict:
    """What a result says of its scoring engine; a ranking built none (``engine`` None) and ran no pass."""
    if engine is None:
        return {"name": name, "path": None, "fallback": None, "layers_on_full_passes": {}, "forward_equivalents": 0.0,
                "compaction": None}
    return {"name": engine.name, "path": engine.path, "fallback": engine.fallback,
            "layers_on_full_passes": dict(engine.layer_fallbacks),
            "forward_equivalents": round(engine.forward_equivalents, 3),
            "compaction": engine.compaction}


def _check_distributed(distributed) -> tuple[bool, object]:
    """``distributed=`` (None, False, True or a process group) as (whether the analysis is sharded, the process
    group: None for the default one). None: sharded when a ``torch.distributed`` process group of more than one
    rank is initialised (a script under torchrun), else not."""
    if distributed is None:
        dist = torch.distributed
        return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1), None
    if distributed is False:
        return False, None
    group_type = getattr(torch.distributed, "ProcessGroup", None)
    if distributed is not True and not (group_type is not None and isinstance(distributed, group_type)):
        raise TypeError(f"distributed= takes True (the default process group), a torch.distributed process group "
                        f"or False, got {distributed!r}")
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError("distributed= needs an initialised torch.distributed process group: launch with "
                         "torchrun --nproc-per-node N and call torch.distributed.init_process_group() first")
    return True, None if distributed is True else distributed


def _same_modules(original: nn.Module, copy_: nn.Module, modules: list[nn.Module] | None) -> list[nn.Module]:
    """Map modules of the caller's model onto the working copy (by qualified name)."""
    if not modules:
        return []
    names = {m: n for n, m in original.named_modules()}
    copied = dict(copy_.named_modules())
    missing = [m for m in modules if m not in names]
    if missing:
        raise ValueError(f"ignored_layers: {len(missing)} module(s) are not part of the model")
    return [copied[names[m]] for m in modules]
