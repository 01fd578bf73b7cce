"""One prepared run on a CUDA GPU: does the GPU path give the labels of the reference engine, how idle do the
analysis's small batches leave the device, do chains of whole candidates pay there, and what does a full-size
model cost. Each part runs as its own command with its own time limit, so that one failure leaves the others'
figures (cswap_nb/METHOD.md §10, "On a GPU").

    python benchmarks/gpu_check.py [--out DIR] [--parts env,bench,agree,batches,full,chains,bench-rest] [--quick]
                                   [--device cuda]

Parts:

* ``env``: the device, PyTorch, the float32 matmul rate (TF32 off, as the analysis runs);
* ``batches``: forward images per second at batches of 20 (one class's calibration images) up to 1,600, for
  two shipped checkpoints and a full-size torchvision ResNet50 at 224 px: how much a GPU gains from stacking;
* ``bench``: ``python -m cswap_nb bench --engines naive,fast --device cuda`` on ``resnet18-fashion`` (one
  round): seconds, speed-up, identical labels; ``bench-rest`` the same on the other shipped checkpoints;
* ``agree``: the fast engine's labels on the GPU against the same engine on the CPU (``resnet18-fashion``):
  the float sums differ, so borderline p-values may cross α; it counts the units whose label differs;
* ``chains``: ``benchmarks/engine_levers.py resnet50-fashion --stepwise`` with chains of whole candidates on
  the whole calibration set (``whole-chains``) beside the default and ``no-chain``;
* ``evaluations`` (not in the default parts): ``naive``, ``fast-full`` (every class in one pass) and ``fast``
  side by side on three checkpoints;
* ``full``: ``benchmarks/tests_in_time.py`` on a full-size random-weight torchvision ResNet50 at 224 px, k = 20:
  tests per second and the dense work's rate, to replace the assumed rate of METHOD.md's estimate.

Prints everything and writes it to ``DIR/gpu_check.log``. ``--quick --device cpu`` tries the script itself
on a machine without a GPU (smaller sizes, fewer parts' work).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
SHIPPED = ["resnet18-fashion", "mobilenetv2-fashion", "resnet50-fashion", "vit-fashion", "ddrnet23slim-roads"]

ENV = """
import os, torch, cswap_nb
from cswap_nb.experiments.bench import matmul_gflops
dev = os.environ["CHECK_DEVICE"]
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if dev == "cuda" else dev)
print("float32 matmul (TF32 off): %.1f TFLOP/s" % (matmul_gflops(device=dev) / 1e3))
"""

BATCHES = """
import os, statistics, time, torch, torchvision
import cswap_nb as cs
dev = os.environ["CHECK_DEVICE"]
sizes = (20, 60, 200, 800, 1600) if dev == "cuda" else (20, 60)
torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.benchmark = False
def rate(model, shape, n, repeats=20):
    x = torch.randn(n, *shape, device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        sync()
        times = []
        for _ in range(repeats if dev == "cuda" else 2):
            t0 = time.perf_counter(); model(x); sync(); times.append(time.perf_counter() - t0)
    return n / statistics.median(times)
models = []
for name in ("resnet18-fashion", "resnet50-fashion"):
    m, data = cs.zoo.load(name)
    models.append((name, m, tuple(data.calib.x.shape[1:])))
models.append(("torchvision resnet50 224px", torchvision.models.resnet50(num_classes=10), (3, 224, 224)))
for name, m, shape in models:
    m = m.to(dev).eval()
    rates = {n: rate(m, shape, n) for n in sizes}
    print(name, "images/s by batch:", "  ".join("%d: %.0f (%.1fx)" % (n, r, r / rates[20]) for n, r in rates.items()),
          flush=True)
"""

AGREE = """
import os, torch, cswap_nb as cs
dev = os.environ["CHECK_DEVICE"]
model, data = cs.zoo.load("resnet18-fashion")
cols = ["layer", "unit", "label"]
cpu = cs.prune(model, data.calib, progress=False)
gpu = cs.prune(model.to(dev), tuple(t.to(dev) for t in data.calib), progress=False)
a, b = cpu.labels.set_index(["layer", "unit"]).label, gpu.labels.set_index(["layer", "unit"]).label
print(("resnet18-fashion fast engine: cpu %.2f s, " + dev + " %.2f s; %d units, %d labels differ; params removed "
      "cpu %.2f%%, " + dev + " %.2f%%") % (cpu.analysis_seconds, gpu.analysis_seconds, len(a), int((a != b.reindex(a.index)).sum()),
      cpu.params_removed_pct, gpu.params_removed_pct))
p1, p2 = cpu.labels.p_lower.to_numpy(), gpu.labels.p_lower.to_numpy()
print("largest p-value difference: %.3g" % abs(p1 - p2).max())
"""


BENCH = """
import sys
from cswap_nb.experiments.bench import format_report, run
engines = tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else ("naive", "fast")
print(format_report(run(sys.argv[1], rounds=1, engines=engines, device=sys.argv[2])))
"""


def part_commands(quick: bool, device: str) -> dict[str, list[tuple[list[str], int]]]:
    """Each part's commands with their time limits in seconds."""
    def bench(m):  # the bench command's own code, without the command line's imports (nbformat, for the gallery)
        return [PY, "-c", BENCH, m, device]
    return {
        "env": [([PY, "-c", ENV], 60)],
        "bench": [(bench(SHIPPED[0]), 90)],
        "agree": [([PY, "-c", AGREE], 60)],
        "batches": [([PY, "-c", BATCHES], 60)],
        "full": [([PY, str(HERE / "tests_in_time.py"), "--model", "resnet50", "--size", "96" if quick else "224",
                   "--images", "400", "--k", "20", "--seconds", "10" if quick else "45", "--device", device], 100)],
        "chains": [([PY, str(HERE / "engine_levers.py"), "resnet18-fashion" if quick else "resnet50-fashion",
                     "--stepwise", "200", "--variants", "no-chain,both,same,whole-chains", "--device", device], 150)],
        "bench-rest": [(bench(m), 75) for m in ([] if quick else SHIPPED[1:])],
        "evaluations": [([PY, "-c", BENCH, m, device, "naive,fast-full,fast"], 80)
                        for m in (SHIPPED[:1] if quick else ["resnet50-fashion", "mobilenetv2-fashion", "resnet18-fashion"])],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    p.add_argument("--parts", default="env,bench,agree,batches,full,chains,bench-rest")
    p.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs, to try the script")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "gpu_check.log", "a")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CHECK_DEVICE": args.device, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    commands = part_commands(args.quick, args.device)
    failed = 0
    for part in args.parts.split(","):
        for cmd, limit in commands[part]:
            shown = " ".join(c if "\n" not in c else "<script>" for c in cmd[1:])
            head = f"=== {part}: {shown} (limit {limit} s)"
            print(head, flush=True)
            log.write(head + "\n")
            t0 = time.perf_counter()
            try:
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
                text, rc = done.stdout + done.stderr[-3000:], done.returncode
            except subprocess.TimeoutExpired as e:
                text, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
            tail = f"--- rc {rc}, {time.perf_counter() - t0:.1f} s"
            print(text + tail, flush=True)
            log.write(text + tail + "\n")
            log.flush()
            failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
