"""Command line: ``python -m cswap_nb {demo,prune,compare,variants,models,gallery,bench}``."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from .. import zoo
from ..experiments.bench import engine_options, format_report
from ..experiments.bench import run as run_bench
from ..experiments.comparison import (SAME_COUNTS, SAME_PARAMS, VARIANTS, compare_methods, compare_variants,
                                      spread_table, table, variant_summary, variant_table, verdict_lines)
from ..core.config import ENGINES, EVALUATIONS, OPTION_NAMES, CSwapConfig, make_config, option
from ..criteria import CRITERIA
from ..data import eval_transform, image_folder
from ..models import from_state_dict
from .gallery import make_gallery
from .plots import plot_accuracy_vs_removed, plot_layer_labels, plot_spread
from ..core.result import equivalence_tolerance
from ..pruning.session import PruneSession


# ---- the options as flags: names, defaults, choices and help from CSwapConfig (cswap_nb.core.config)

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _int_or_none(text: str) -> int | None:
    return None if text.lower() in ("none", "all") else int(text)


def _float_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "off") else float(text)


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] = OPTION_NAMES) -> None:
    """Add ``--name`` flags (dashes for underscores) for the given options, with their defaults,
    choices and help from :class:`CSwapConfig`."""
    for name in names:
        f = option(name)
        meta, default = f.metadata, f.default
        kwargs: dict[str, Any] = {"default": default, "dest": name,
                                  "help": f"{meta['help']} (default: {default})"}
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        elif meta.get("positive"):
            kwargs["type"] = positive_int
        elif meta.get("kind") == "float-or-none":
            kwargs["type"] = _float_or_none
        elif meta.get("kind") == "int-or-none":
            kwargs["type"] = _int_or_none
        elif isinstance(default, float):
            kwargs["type"] = float
        else:
            kwargs["type"] = int
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def from_arguments(args: argparse.Namespace, names: tuple[str, ...] = OPTION_NAMES) -> CSwapConfig:
    """The config of parsed :func:`add_arguments` flags."""
    return make_config(**{n: getattr(args, n) for n in names if hasattr(args, n)})


DEMO_MODEL = "resnet18-fashion"
METRIC_LABELS = {"top1_accuracy_pct": "test accuracy %", "miou_pct": "test mIoU %"}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, default=None, help="write the run summary as JSON here")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _table(summary: dict) -> str:
    s = summary
    rows = [
        ("parameters", f"{s['params_before']:,}", f"{s['params_after']:,}", f"-{s['params_removed_pct']:.1f}%"),
        ("MACs / image", f"{s['macs_before']:,}", f"{s['macs_after']:,}", f"-{s['macs_removed_pct']:.1f}%"),
    ]
    if s["metric_before"] is not None:
        rows.append((METRIC_LABELS.get(s["metric_name"], s["metric_name"]), f"{s['metric_before']:.2f}", f"{s['metric_after']:.2f}",
                     f"{s['metric_after'] - s['metric_before']:+.2f} pts"))
    lines = [f"{'':18s}{'before':>14s}{'after':>14s}{'change':>14s}"]
    lines += [f"{a:18s}{b:>14s}{c:>14s}{d:>14s}" for a, b, c, d in rows]
    counts = s["counts"]
    lines.append(f"units tested: {sum(counts.values())}  critical {counts['critical']}  neutral {counts['neutral']}  "
                 f"detrimental {counts['detrimental']}  |  {s['seconds']:.1f} s, {s['calib_samples']} calibration samples")
    lines.append("")
    header = (f"{'layer':22s}{'kind':>10s}{'units':>7s}{'tests':>7s}{'crit':>6s}{'neut':>6s}{'detr':>6s}"
              f"{'removed':>9s}{'kept':>6s}")
    lines.append(header)
    for r in s["per_layer"]:
        lines.append(f"{r['layer']:22s}{r['kind']:>10s}{r['units']:>7d}{r.get('tests', 0):>7d}{r['critical']:>6d}"
                     f"{r['neutral']:>6d}"
                     f"{r['detrimental']:>6d}{r['removed']:>9d}{r['kept']:>6d}")
    ok = "ok" if s["equivalence_max_abs_diff"] <= equivalence_tolerance(s.get("equivalence_logit_scale", 0.0)) else "MISMATCH"
    lines.append(f"\nmasked model == physically pruned model: max |Δ logits| = {s['equivalence_max_abs_diff']:.2e} ({ok})")
    return "\n".join(lines)


def _own_model(args: argparse.Namespace):
    """``--arch``, ``--weights``, ``--data-dir``: the researcher's model, image folder (read in batches), the
    folder's transform and what it does (:func:`cswap_nb.data.eval_transform`)."""
    if args.weights is None or args.data_dir is None:
        raise ValueError("--arch needs --weights FILE (a state dict) and --data-dir DIR (one sub-folder per class)")
    transform, how = eval_transform(args.arch, args.image_size, args.mean, args.std)
    data = image_folder(args.data_dir, transform=transform)
    num_classes = args.num_classes or len(data.classes)
    model = from_state_dict(args.arch, args.weights, num_classes)
    named = "class indices" if data.target_transform is not None else "sorted folder order"
    print(f"data: {args.data_dir}, {len(data):,} images in {len(data.classes)} class folders ({named}); "
          f"model {args.arch} with {num_classes} outputs")
    print(f"transform ({how['source']}): resize {how['resize']} ({how['interpolation']}), centre crop "
          f"{how['image_size']}, mean {_three(how['mean'])}, std {_three(how['std'])}")
    return model, data, transform, how


def _three(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def _three_floats(text: str) -> tuple[float, float, float]:
    """``--mean``/``--std``: three comma-separated numbers (one per RGB channel)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers (R,G,B), got {text!r}")
    return values


def run_device(text: str) -> torch.device:
    """``--device``: ``auto`` is this process's CUDA GPU when PyTorch sees one (under torchrun the rank's
    ``LOCAL_RANK`` GPU, set when the process group was made), else the CPU; or ``cpu``, ``cuda``, ``cuda:N``."""
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: this PyTorch sees no CUDA device (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def launched_ranks() -> bool:
    """Whether this process is one of several that ``torchrun`` started (``WORLD_SIZE`` > 1). The process group
    is then initialised here (``nccl`` with a GPU per rank, else ``gloo``) unless the caller did it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    if world <= 1:
        return False
    dist = torch.distributed
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world}, but this PyTorch has no torch.distributed")
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    return True


def run_prune(args: argparse.Namespace, out: Path | None, distributed: bool = False) -> dict:
    if (args.model is None) == (args.arch is None):
        raise ValueError("give --model NAME (a shipped checkpoint) or --arch SOURCE:NAME (with --weights and "
                         "--data-dir), not both")
    config = from_arguments(args)
    device = run_device(args.device)
    if args.arch is not None:
        model, calib, transform, how = _own_model(args)
        data_args = {}
        if args.val_dir is not None:  # held-out images: the metric before and after, and the guard's split
            val = image_folder(args.val_dir, transform=transform)
            print(f"validation: {args.val_dir}, {len(val):,} images in {len(val.classes)} class folders")
            data_args = {"eval_data": val, **({"guard_data": val} if config.max_drop is not None else {})}
        elif config.max_drop is not None:
            raise ValueError("--max-drop needs --val-dir DIR with --arch: held-out images (one sub-folder per class, "
                             "not the calibration folder) on which the guard measures the pruned network")
    else:
        if any(v is not None for v in (args.weights, args.data_dir, args.image_size, args.mean, args.std,
                                       args.num_classes, args.val_dir)):
            raise ValueError("--weights, --data-dir, --val-dir, --image-size, --mean, --std and --num-classes go "
                             "with --arch, not with --model")
        model, data = zoo.load(args.model)
        print(f"data: {data.name}, {data.source}; calibration pool {len(data.calib.y):,}, test {len(data.test.y):,} images")
        calib = data.calib
        data_args = {"eval_data": data.test, **({"guard_data": data.val} if config.max_drop is not None else {})}
    model = model.to(device)
    print(f"device: {device}")
    session = PruneSession(model, calib, config=config, progress=not args.no_progress, distributed=distributed,
                           model_name=args.model or args.arch, **data_args)  # cs.prune in two steps: set up, say the coverage, run
    print(session.coverage)
    res = session.finish()
    summary = res.summary()
    if args.arch is not None:
        summary["transform"] = {k: list(v) if isinstance(v, tuple) else v for k, v in how.items()}
    print(_table(summary))
    if distributed and torch.distributed.get_rank() != 0:
        return summary  # every rank has the same result; rank 0 alone writes it
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        res.save(out / "pruned.pt")
        ax = plot_layer_labels(res)
        ax.figure.savefig(out / "layers.png", dpi=120)
        print(f"saved {out / 'pruned.pt'} and {out / 'layers.png'}")
    if args.json is not None:
        _write_json(args.json, summary)
        print(f"wrote {args.json}")
    return summary


def _write_json(path: Path, obj, **dumps) -> None:
    """``obj`` as indented JSON at ``path``, its folder created if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, **dumps) + "\n")


def _floats(text: str | None) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()] if text else []


def run_compare(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m != "cswap" and m not in CRITERIA]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: cswap, {', '.join(CRITERIA)}")
    model, data = zoo.load(args.model)
    seeds = list(range(args.seeds))
    print(f"{args.model} on {data.name} ({data.source}); calibration draws (seeds): {seeds}")
    records = compare_methods(model, data, methods, config=from_arguments(args), per_layer=args.per_layer,
                              ratios=_floats(args.grid), alphas=_floats(args.alphas), model_name=args.model,
                              progress=not args.no_progress, seeds=seeds)
    if args.json is not None:  # first: a long run's records are never lost to a report below
        _write_json(args.json, records)
        print(f"wrote {args.json}")
    paired = [SAME_PARAMS] + ([SAME_COUNTS] if args.per_layer else [])  # baselines cut to C-SWAP's own runs
    others = [b for b in dict.fromkeys(r["budget"] for r in records) if b not in paired]  # ratio=, alpha=
    if len(seeds) == 1:
        print(table(records))
        if args.per_layer:
            print("\nat C-SWAP's per-layer unit counts:")
            print(table(records, SAME_COUNTS))
        for budget in others:
            print(f"\n{budget}:")
            print(table(records, budget))
    else:
        for budget in paired + others:
            print(f"\n{budget} (mean ± sd over {len(seeds)} calibration draws):")
            print(spread_table(records, budget))
            if budget in paired:  # elsewhere no C-SWAP run of that draw to pair a baseline with
                print(verdict_lines(records, budget))
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        ax = (plot_accuracy_vs_removed([r for r in records if r["budget"] != SAME_COUNTS]) if len(seeds) == 1
              else plot_spread(records))
        ax.figure.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")
    return 0


def run_gallery(args: argparse.Namespace) -> int:
    """``gallery``: the key figures of one run (and, with ``--notebooks``, of every notebook) into ``--out``."""
    notebooks = sorted(args.notebooks.glob("[0-9][0-9]_*.ipynb")) if args.notebooks is not None else None
    if notebooks is not None and not notebooks:
        raise ValueError(f"no numbered notebooks (NN_name.ipynb) in {args.notebooks}")
    made = make_gallery(args.out, args.model, fast=args.fast, progress=not args.no_progress, notebooks=notebooks)
    for name, caption in made["figures"]:
        print(f"{args.out / name}: {caption}")
    print(f"wrote {len(made['figures'])} figures and {args.out / 'index.md'} in {made['seconds']:.0f} s")
    return 0


def run_variants(args: argparse.Namespace) -> int:
    names = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else list(VARIANTS)
    model, data = zoo.load(args.model)
    if data.val is None:
        raise ValueError(f"{args.model}'s data ({data.name}) has no validation split to choose settings on")
    seeds = list(range(args.seeds))
    print(f"{args.model} on {data.name} ({data.source}); measured on the validation split "
          f"({len(data.val.y):,} samples); calibration draws (seeds): {seeds}; baseline {args.baseline} "
          "at each run's parameter count")
    rows = compare_variants(model, data, names, baseline=args.baseline, seeds=seeds, config=from_arguments(args),
                            model_name=args.model, progress=not args.no_progress)
    summary = variant_summary(rows)
    print(variant_table(summary, args.baseline))
    cols = [c for c in ("variant", "margin_vs_reference", "removed_vs_reference", "metric_vs_reference")
            if c in summary]
    print("\nagainst the default (paired over draws):")
    print(summary[cols].iloc[1:].to_string(index=False))
    if args.json is not None:
        _write_json(args.json, {"rows": rows.to_dict(orient="records"), "summary": summary.to_dict(orient="records")},
                    default=str)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cswap_nb",
                                     description="C-SWAP: causal one-shot structured pruning, no fine-tuning")
    sub = parser.add_subparsers(dest="cmd", required=True)
    demo = sub.add_parser("demo", help=f"prune the shipped {DEMO_MODEL} with C-SWAP (alpha={CSwapConfig().alpha})")
    demo.add_argument("--out", type=Path, default=Path("cswap_demo_out"), help="folder for pruned.pt and the figure")
    demo.add_argument("--json", type=Path, default=None)
    demo.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("prune", help="prune a shipped checkpoint, or your own with your images, with C-SWAP")
    p.add_argument("--model", default=None, help=f"a shipped checkpoint, one of: {', '.join(zoo.names())}")
    p.add_argument("--arch", default=None, help="instead of --model: your model's architecture, torchvision:NAME or "
                   "timm:NAME (e.g. torchvision:resnet18), with --weights and --data-dir")
    p.add_argument("--weights", type=Path, default=None, help="with --arch: a local state dict file")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="with --arch: calibration images, one sub-folder per class (sorted names = class order; "
                        "folders named 0, 1, 2, ... are those class indices)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="with --arch: centre crop N px after resizing the short side in the architecture's usual "
                        "ratio (default: the architecture's own size, e.g. 224, 299 for inception_v3)")
    p.add_argument("--mean", type=_three_floats, default=None,
                   help="with --arch: R,G,B means to normalise by (default: those recorded for the architecture's "
                        "pretrained weights; ImageNet's 0.485,0.456,0.406 where none are)")
    p.add_argument("--std", type=_three_floats, default=None,
                   help="with --arch: R,G,B standard deviations (default: as for --mean; ImageNet's 0.229,0.224,0.225)")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="with --arch: the model's outputs (default: the number of class folders)")
    p.add_argument("--val-dir", type=Path, default=None,
                   help="with --arch: held-out images (one sub-folder per class, same transform): the metric before "
                        "and after, and the split --max-drop's guard measures")
    p.add_argument("--device", default="auto",
                   help="auto (a CUDA GPU when PyTorch sees one; under torchrun the rank's LOCAL_RANK GPU), cpu, "
                        "cuda or cuda:N (default: auto)")
    p.add_argument("--out", type=Path, default=None, help="folder for pruned.pt and the figure")
    add_arguments(p)
    _add_common(p)
    sub.add_parser("models", help="list the shipped checkpoints")
    c = sub.add_parser("compare", help="C-SWAP vs rank-and-prune criteria at the same parameter count")
    c.add_argument("--model", required=True, help=f"one of: {', '.join(zoo.names())}")
    c.add_argument("--methods", default="cswap,l1,l2,random,bn-scale,activation,taylor,gradxact,ablation,lrp",
                   help="comma-separated: cswap and any of " + ", ".join(CRITERIA))
    add_arguments(c)
    c.add_argument("--per-layer", action="store_true", help="also prune each baseline to C-SWAP's per-layer counts")
    c.add_argument("--seeds", type=positive_int, default=1,
                   help="calibration draws (seeds 0..N-1): mean ± sd, and a paired verdict over seeds (default 1)")
    c.add_argument("--grid", default=None, help="comma-separated unit ratios for curves, e.g. 0.2,0.4,0.6")
    c.add_argument("--alphas", default=None, help="comma-separated extra alphas for C-SWAP points, e.g. 0.5,0.01")
    c.add_argument("--plot", type=Path, default=None)
    _add_common(c)
    v = sub.add_parser("variants", help="C-SWAP under option variants, each against a baseline at its own size, "
                                         "on the validation split")
    v.add_argument("--model", required=True, help=f"one of: {', '.join(zoo.names())}")
    v.add_argument("--variants", default=None, help="comma-separated names of cswap_nb.experiments.VARIANTS (default: all)")
    v.add_argument("--baseline", default="l1", help="the criterion cut to each run's parameter count (default: l1)")
    v.add_argument("--seeds", type=positive_int, default=3, help="calibration draws (seeds 0..N-1, default 3)")
    add_arguments(v)
    _add_common(v)
    g = sub.add_parser("gallery", help="the course's key figures, drawn from a fresh run, as PNGs and an index.md")
    g.add_argument("--model", default=DEMO_MODEL, help=f"a shipped classification checkpoint (default {DEMO_MODEL})")
    g.add_argument("--out", type=Path, default=Path("cswap_gallery"), help="folder for the figures and index.md")
    g.add_argument("--fast", action="store_true", help="k = 10 and 1,000 test images (else k = 20, the test split)")
    g.add_argument("--notebooks", type=Path, default=None,
                   help="also run the numbered notebooks of this folder (e.g. notebooks/) and keep each one's key figure")
    g.add_argument("--no-progress", action="store_true")
    b = sub.add_parser("bench", help="naive vs fast analysis engine, dense vs pruned latency")
    b.add_argument("--model", default="resnet18-digits", help=f"one of: {', '.join(zoo.names())}")
    b.add_argument("--rounds", type=int, default=2, help="alternating rounds per engine (median is reported)")
    b.add_argument("--engines", default="naive,fast",
                   help="comma-separated engines, the first is the reference (naive, fast, parts; each optionally with "
                        "-full or -early: every class per candidate, or decisions class by class; and -static: "
                        "no compaction)")
    b.add_argument("--device", default="cpu", help="where the analyses run: cpu (default), cuda, cuda:N or auto")
    b.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        distributed = launched_ranks()
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if distributed and args.cmd not in ("prune", "demo"):
        print(f"error: under torchrun only prune and demo share their analysis among the ranks; run {args.cmd!r} "
              "as one process", file=sys.stderr)
        return 2
    quiet = distributed and torch.distributed.get_rank() != 0  # one rank prints the run; all compute it
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            return _dispatch(args, p, distributed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _dispatch(args: argparse.Namespace, p: argparse.ArgumentParser, distributed: bool) -> int:
    """Run the command ``args.cmd`` (``p``: the prune command's parser, for the demo's defaults)."""
    if args.cmd == "models":
        manifest = zoo.read_manifest()
        for name in zoo.names():
            print(f"{name:20s} {zoo.metric_text(manifest.get(name, {}))}  {zoo.ZOO[name].description}")
        return 0
    if args.cmd == "compare":
        return run_compare(args)
    if args.cmd == "variants":
        return run_variants(args)
    if args.cmd == "gallery":
        return run_gallery(args)
    if args.cmd == "bench":
        engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
        for e in engines:
            engine_options(e)  # a ValueError naming the spec it does not accept
        if len(engines) < 2:
            raise ValueError(f"--engines takes two or more of {', '.join(ENGINES)} (each optionally with "
                             f"-{' or -'.join(EVALUATIONS)} and -static), got {args.engines!r}")
        report = run_bench(args.model, rounds=args.rounds, engines=engines, device=run_device(args.device))
        print(format_report(report))
        if args.json is not None:
            _write_json(args.json, report)
        return 0
    if args.cmd == "demo":
        # the prune command's own defaults, so that demo and prune cannot drift apart
        defaults = p.parse_args(["--model", DEMO_MODEL])
        defaults.json, defaults.no_progress = args.json, args.no_progress
        print(f"C-SWAP demo: shipped {DEMO_MODEL} (timm ResNet18, reduced width) on real Fashion-MNIST images, "
              f"alpha={defaults.alpha}")
        run_prune(defaults, args.out, distributed)
        return 0
    run_prune(args, args.out, distributed)
    return 0
