"""cswap_nb: a Jupyter-first toolkit for C-SWAP, causal one-shot structured pruning.

>>> import cswap_nb as cs
>>> model, data = cs.zoo.load("resnet18-fashion")
>>> res = cs.prune(model, data.calib, alpha=0.05, eval_data=data.test)
>>> res.summary()["params_removed_pct"]
"""
from . import (causal, cityscapes, compare, config, criteria, data, ddrnet, descent, effects, families, layout, models,
               plots, scenes, session, surgery, training, units, widgets, zoo)
from .api import PruneResult, load_pruned, prune, select_calibration, stream_calibration
from .config import CSwapConfig
from .session import PruneSession
from .metrics import evaluate, evaluate_segmentation

__version__ = "0.1.0"

__all__ = ["prune", "PruneSession", "CSwapConfig", "evaluate", "evaluate_segmentation", "load_pruned", "select_calibration",
           "stream_calibration", "PruneResult",
           "zoo", "data", "models", "units", "causal", "descent", "surgery", "criteria", "compare",
           "plots", "training", "widgets", "ddrnet", "scenes", "cityscapes", "effects", "families", "config", "session", "layout",
           "__version__"]
