"""Where the files shipped with the package live (checkpoints, their manifest, the Fashion-MNIST subset).

They are package data of ``cswap_nb._data`` (the repository's ``data/`` folder, mapped in
``pyproject.toml``), so an editable install, a wheel and a source tree all find them through
:mod:`importlib.resources`. ``$CSWAP_NB_DATA`` points the zoo at another folder.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import os
from pathlib import Path


def data_dir() -> Path:
    """The folder of shipped files: ``$CSWAP_NB_DATA``, else the installed package data, else the
    ``data/`` folder beside the package in a source tree that was not installed."""
    env = os.environ.get("CSWAP_NB_DATA")
    if env:
        return Path(env).expanduser()
    try:
        return Path(str(importlib.resources.files("cswap_nb._data")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "data"


def sha256_of(path: Path) -> str:
    """The sha256 of a file, hex (what ``data/README.md`` and ``zoo.json`` record)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
