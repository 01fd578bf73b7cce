"""Which torchvision (and timm) classification models the toolkit prunes: a table, measured.

    python benchmarks/prunability.py [--source torchvision|timm|both] [--size 64] [--max-params 150e6]
                                     [--only resnet18,vgg11] [--json PATH] [--markdown PATH]
                                     [--cswap SECONDS] [--merge PREVIOUS.json] [--memory-gb 16]

For every classification architecture of ``torchvision.models`` (and with ``--source timm`` a fixed list of
common timm families), with random weights, ``num_classes=10`` and ``--size`` x ``--size`` inputs (224 for
models that need it), it records:

* ``units``: the unit layers and units :func:`cswap_nb.core.units.survey_units` finds (``scope="internal"``);
* ``in_units %``: the share of the parameters that removing every unit would delete, and the largest reason
  for the rest (:class:`cswap_nb.core.units.Coverage`); the same share with ``scope="all"``;
* ``l1 0.3``: ``cs.prune(model, calib, "l1", ratio=0.3)`` (scope "all"): parameters removed, and the
  largest difference between the masked and the physically pruned model's logits on the calibration images,
  and the largest logit (``max_logit``: float32 rounding grows with it, :func:`cswap_nb.core.result.equivalence_tolerance`);
* ``C-SWAP tests``: how many causal tests a default analysis would run (its visiting plan); with ``--cswap S``
  the analysis also runs (k = 4 on 120 random images labelled by the model, the classes it predicts at least
  4 times, default options), stopped after S
  seconds: its seconds, the share of the parameters it removed, and ``pruned`` or ``over the limit``;
* ``status``: ``ok``, or the first line of the error (a refusal of ``l1``'s ``scope="all"``, an
  ``UnsupportedModel``, still lets the C-SWAP analysis run at its default scope); an error without a message (a ``MemoryError``) names
  the function it was raised in and the seconds spent. ``--memory-gb`` caps the process's address space
  (``RLIMIT_AS``), so that a model whose grouping would fill the machine's memory fails with a ``MemoryError``
  in its row instead of stopping the whole run.

The calibration set is 40 random images labelled with the model's own predictions (every sample correctly
classified), ``samples_per_class=2``. Models with more than ``--max-params`` parameters are listed as skipped.
Nothing here is trained or downloaded.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
import traceback
import warnings

import torch
import torchvision

import cswap_nb as cs
from cswap_nb.core.config import CSwapConfig
from cswap_nb.core.result import equivalence_tolerance
from cswap_nb.core.units import UnsupportedModel, survey_units
from cswap_nb.pruning.descent import visiting_plan

TIMM = ["resnet18", "resnet50", "resnext50_32x4d", "regnetx_004", "mobilenetv3_small_100", "efficientnet_b0",
        "convnext_atto", "vit_tiny_patch16_224", "deit_tiny_patch16_224", "densenet121", "mixer_b16_224",
        "ghostnet_100", "levit_128s", "coat_lite_tiny", "edgenext_xx_small", "mobilevit_xxs"]
NEEDS_224 = ("vit_", "swin", "maxvit", "mixer", "deit", "levit", "coat", "mobilevit", "edgenext")


def builders(source: str):
    if source in ("torchvision", "both"):
        for name in sorted(torchvision.models.list_models(module=torchvision.models)):
            yield f"torchvision:{name}", lambda name=name: torchvision.models.get_model(name, weights=None,
                                                                                         num_classes=10)
    if source in ("timm", "both"):
        import timm

        for name in TIMM:
            yield f"timm:{name}", lambda name=name: timm.create_model(name, pretrained=False, num_classes=10)


def run_cswap(model, x, y, limit: float) -> dict:
    """A default C-SWAP analysis at ``samples_per_class=4``, stopped once it has run ``limit`` seconds: its
    seconds, the share of the parameters removed and the outcome (``pruned``, or ``over the limit``)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        session = cs.PruneSession(model, (x, y), samples_per_class=4, progress=False)
        done = 0
        for _ in session.steps():
            done += 1
            if time.perf_counter() - t0 > limit:
                return {"cswap_seconds": round(time.perf_counter() - t0, 1),
                        "cswap_outcome": f"over the limit: {done} tests in {limit:.0f} s"}
        res = session.finish()
    return {"cswap_seconds": round(time.perf_counter() - t0, 1), "cswap_analysis_s": round(res.analysis_seconds, 1),
            "cswap_removed_pct": round(res.params_removed_pct, 2), "cswap_outcome": "pruned",
            "cswap_engine": res.engine["path"] or res.engine["name"]}


def measure(label: str, build, size: int, max_params: float, cswap_limit: float | None = None) -> dict:
    row = {"model": label}
    t0 = time.perf_counter()
    try:
        torch.manual_seed(0)
        model = build().eval()
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return {**row, "status": f"build: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"}
    n = sum(p.numel() for p in model.parameters())
    row["params_M"] = round(n / 1e6, 2)
    if n > max_params:
        return {**row, "status": f"skipped: over {max_params / 1e6:.0f}M parameters"}
    side = 224 if any(k in label for k in NEEDS_224) else size
    if "inception" in label:
        side = max(side, 75)
    row["input"] = side
    try:
        x = torch.randn(40, 3, side, side)
        with torch.no_grad():
            out = model(x)
        if not isinstance(out, torch.Tensor):  # GoogLeNet/Inception in eval mode return tensors; others may not
            raise TypeError(f"the model returns {type(out).__name__}, not a logits tensor")
        y = out.argmax(1)
        example = x[:1]
        layers, cov = survey_units(model, example, scope="internal")
        row["unit_layers"], row["units"] = len(layers), sum(layer.size for layer in layers)
        row["in_units_pct"] = round(100 * cov.share, 2)
        reasons = cov.reasons
        row["left_out_mainly"] = next(iter(reasons), None)
        row["cswap_tests"] = len(visiting_plan(layers, CSwapConfig()))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = cs.prune(model, (x, y), "l1", ratio=0.3, scope="all", samples_per_class=2, progress=False)
            row["in_units_all_pct"] = round(100 * res.coverage.share, 2)
            row["l1_removed_pct"] = round(res.params_removed_pct, 2)
            row["masked_vs_pruned"] = float(f"{res.equivalence_max_abs_diff:.2g}")
            row["max_logit"] = float(f"{res.equivalence_logit_scale:.2g}")
            row["status"] = "ok"
        except UnsupportedModel as exc:  # refused at scope="all": C-SWAP still runs at its default scope
            row["status"] = f"UnsupportedModel: {str(exc).strip().splitlines()[0][:120]}"
        if cswap_limit is not None:
            xc = torch.randn(120, 3, side, side, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                yc = torch.cat([model(xc[i:i + 40]) for i in range(0, 120, 40)]).argmax(1)
            labels, counts = yc.unique(return_counts=True)
            keep = torch.isin(yc, labels[counts >= 4])  # the classes the model predicts at least 4 times
            try:
                row.update(run_cswap(model, xc[keep], yc[keep], cswap_limit))
            except Exception as exc:  # noqa: BLE001 - reported in the table
                row["cswap_outcome"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:100]}"
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row["status"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:120] if str(exc).strip() else where(exc, t0)}"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def where(exc: BaseException, t0: float) -> str:
    """For an error without a message (a MemoryError): the function it was raised in, and the last of this
    toolkit's on the way, with the seconds since the model's row began."""
    frames = traceback.extract_tb(exc.__traceback__)
    inner = frames[-1] if frames else None
    ours = next((f for f in reversed(frames) if "/cswap_nb/" in f.filename), None)
    said = f"raised in {inner.name} ({inner.filename.split('site-packages/')[-1]})" if inner else "raised"
    if ours is not None and ours is not inner:
        said += f", called from cswap_nb's {ours.name}"
    return f"{said}, after {time.perf_counter() - t0:.0f} s"


def markdown(rows: list[dict]) -> str:
    cols = ["model", "params_M", "unit_layers", "units", "in_units_pct", "left_out_mainly", "in_units_all_pct",
            "l1_removed_pct", "masked_vs_pruned", "max_logit", "cswap_tests", "seconds", "status"]
    if any("cswap_outcome" in r for r in rows):
        cols[-1:-1] = ["cswap_seconds", "cswap_removed_pct", "cswap_outcome"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="torchvision", choices=["torchvision", "timm", "both"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--max-params", type=float, default=150e6)
    p.add_argument("--only", default=None, help="comma-separated names (without the source prefix)")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--cswap", type=float, default=None, metavar="SECONDS",
                   help="also run a default C-SWAP analysis (k = 4, 120 images with the model's own labels), "
                        "stopped after SECONDS: its time, share removed and outcome")
    p.add_argument("--merge", default=None, metavar="JSON",
                   help="a previous --json: its rows are kept, and replaced by this run's rows of the same models")
    p.add_argument("--memory-gb", type=float, default=None,
                   help="cap the address space at this many GiB: a model that would fill the memory fails alone")
    args = p.parse_args(argv)
    if args.memory_gb is not None:
        resource.setrlimit(resource.RLIMIT_AS, (int(args.memory_gb * 2**30), resource.getrlimit(resource.RLIMIT_AS)[1]))
    torch.set_grad_enabled(True)
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for label, build in builders(args.source):
        if only is not None and label.split(":", 1)[1] not in only:
            continue
        row = measure(label, build, args.size, args.max_params, args.cswap)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.merge:
        with open(args.merge) as f:
            new = {r["model"]: r for r in rows}
            old = json.load(f)
            rows = [new.pop(r["model"], r) for r in old] + list(new.values())
    ok = [r for r in rows if r.get("status") == "ok"]
    tried = [r for r in rows if not str(r.get("status", "")).startswith("skipped")]
    real = [r for r in ok if r.get("l1_removed_pct", 0) >= 5
            and r.get("masked_vs_pruned", 1) <= equivalence_tolerance(r.get("max_logit", 0.0))]
    print(f"\n{len(rows)} models, {len(tried)} tried: {len(ok)} ran, {len(real)} pruned by l1 at ratio 0.3 (>= 5% of "
          f"the parameters removed, masked == pruned to float32 rounding: core.result.equivalence_tolerance)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(rows))


if __name__ == "__main__":
    main()
