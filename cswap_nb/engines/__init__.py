"""How the scores of the calibration set are computed for each candidate: full passes and parts
(:mod:`.passes`), the traced graph with its cache and correction (:mod:`.graph`, planned by
:mod:`.plan`). :func:`make_engine` builds the engine an option names."""
from . import graph, passes, plan
from .graph import make_engine

__all__ = ["graph", "passes", "plan", "make_engine"]
