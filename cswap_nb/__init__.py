"""cswap_nb: a Jupyter-first toolkit for C-SWAP, causal one-shot structured pruning.

>>> import cswap_nb as cs
>>> model, data = cs.zoo.load("resnet18-digits")
>>> res = cs.prune(model, data.calib, alpha=0.05, eval_data=data.test)
>>> res.summary()["params_removed_pct"]
"""
from . import (causal, cityscapes, compare, criteria, data, ddrnet, descent, effects, models, plots, scenes, surgery,
               training, units, widgets, zoo)
from .api import PruneResult, load_pruned, prune, select_calibration
from .metrics import evaluate, evaluate_segmentation

__version__ = "0.1.0"

__all__ = ["prune", "evaluate", "evaluate_segmentation", "load_pruned", "select_calibration", "PruneResult",
           "zoo", "data", "models", "units", "causal", "descent", "surgery", "criteria", "compare",
           "plots", "training", "widgets", "ddrnet", "scenes", "cityscapes", "effects", "__version__"]
