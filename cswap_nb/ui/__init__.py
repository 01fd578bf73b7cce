"""What people look at and type: plots (:mod:`.plots`), the α explorer widget (:mod:`.widgets`)
and the command line (:mod:`.cli`). Each is imported when first used (matplotlib and ipywidgets
are heavy): ``from cswap_nb.ui import plots``."""
from __future__ import annotations

import importlib

__all__ = ["plots", "widgets", "cli"]


def __getattr__(name: str):
    if name in __all__:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
