"""A non-editable install (a built wheel) carries the checkpoints, their manifest, the Fashion-MNIST
subset and METHOD.md, and finds them through importlib.resources, from any working directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_lists_and_loads_the_shipped_checkpoints(tmp_path):
    src = tmp_path / "src"  # build from a copy: an in-tree build would leave build/ and egg-info behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("cswap_nb", "data"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(src)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("cswap_nb-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"cswap_nb/_data/{p.name}" for p in (ROOT / "data").iterdir() if p.suffix in (".pt", ".json", ".npz")}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "cswap_nb/METHOD.md" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, text=True)
    code = ("import cswap_nb, cswap_nb.zoo as z; print(cswap_nb.__file__); print(z.data_dir()); "
            "print(','.join(sorted(z.read_manifest()))); m, d = z.load('resnet18-digits'); "
            "print(cswap_nb.evaluate(m, d.test)); print(cswap_nb.data.load_fashion('subset').source)")
    env = {k: v for k, v in os.environ.items() if k != "CSWAP_NB_DATA"}
    env["PYTHONPATH"] = str(site)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    module, data_dir, manifest, accuracy, source = run.stdout.strip().splitlines()[-5:]
    assert module.startswith(str(site)) and data_dir.startswith(str(site))  # the wheel's copy, not the source tree
    assert "resnet18-digits" in manifest.split(",")
    assert float(accuracy) > 95.0
    assert source.startswith("subset") and str(site) in source


def test_every_subpackage_is_listed_for_the_wheel():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cswap_nb").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def test_layers_import_only_downward_without_cycles():
    """Every module imports only from its own layer and the layers below (cswap_nb.LAYERS, lowest first), with
    no cycle and no in-function import of the package's own modules. A module moved to the wrong layer, or
    an import added upward (say, the core reading a widget), fails here."""
    import importlib.util

    import cswap_nb

    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "benchmarks" / "import_cycles.py")
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    assert checker.LAYERS == cswap_nb.LAYERS
    mods = checker.module_names()
    assert all(checker.layer_of(m) is not None for m in mods if m not in ("cswap_nb", "cswap_nb.__main__")), \
        [m for m in mods if checker.layer_of(m) is None]
    edges, inner = checker.imports(mods)
    assert checker.cycles(edges, mods) == []
    assert checker.upward(edges) == []
    assert inner == []
    assert checker.upward({"cswap_nb.core.units": {"cswap_nb.ui.widgets"}}) == [("cswap_nb.core.units", "cswap_nb.ui.widgets")]
