"""cswap_nb: a Jupyter-first toolkit for C-SWAP, causal one-shot structured pruning.

>>> import cswap_nb as cs
>>> model, data = cs.zoo.load("resnet18-fashion")
>>> res = cs.prune(model, data.calib, alpha=0.05, eval_data=data.test)
>>> res.summary()["params_removed_pct"]

The package is built in layers; a module imports only from its own layer and the layers listed
before it (``tests/test_packaging.py`` checks this):

* :mod:`cswap_nb.data`: the data sets (Fashion-MNIST, the digits, the road scenes, Cityscapes files)
  and the files shipped with the package;
* :mod:`cswap_nb.models`: the architectures (DDRNet) and what the toolkit knows of each model family
  (:mod:`cswap_nb.models.families`);
* :mod:`cswap_nb.core`: the causal test, the options, units and their removal, calibration, metrics,
  the result and its file format;
* :mod:`cswap_nb.engines`: how a candidate's scores are computed (full passes, parts, the traced graph);
* :mod:`cswap_nb.criteria`: the rank-and-prune baselines' scores;
* :mod:`cswap_nb.pruning`: the search strategies, :class:`PruneSession` and :func:`prune`;
* :mod:`cswap_nb.zoo`: the shipped checkpoints and how they were trained;
* :mod:`cswap_nb.experiments`: comparisons over calibration draws, the engine benchmark, unit effects;
* :mod:`cswap_nb.ui`: plots, the α explorer widget and the command line.

``import cswap_nb`` imports the layers up to :mod:`cswap_nb.pruning` (what :func:`prune` needs); ``cs.zoo``,
``cs.experiments`` and ``cs.ui`` (matplotlib, ipywidgets) are imported when first used. Nearly all of the import
time is PyTorch, Torch-Pruning, timm and torchvision, not this package's own modules.
"""
from __future__ import annotations

import importlib

from .core.config import CSwapConfig
from .core.metrics import evaluate, evaluate_segmentation
from .pruning.api import PruneResult, load_pruned, prune, select_calibration, stream_calibration
from .pruning.session import PruneSession

__version__ = "0.1.0"

LAYERS = ("data", "models", "core", "engines", "criteria", "pruning", "zoo", "experiments", "ui")

__all__ = ["prune", "PruneSession", "CSwapConfig", "evaluate", "evaluate_segmentation", "load_pruned",
           "select_calibration", "stream_calibration", "PruneResult", *LAYERS, "__version__"]


def __getattr__(name: str):
    """``cs.zoo``, ``cs.experiments``, ``cs.ui``, ...: a layer imported on first use."""
    if name in LAYERS:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(LAYERS))
