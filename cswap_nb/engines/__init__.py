"""How the scores of the calibration set are computed for each candidate: the one interface
(:mod:`.base`), full passes and the family's parts (:mod:`.passes`), the traced graph with its cache and
correction (:mod:`.graph`, planned by :mod:`.plan`), and the wrappers that add to an engine: compaction
(:mod:`.compact`), sharding over processes (:mod:`.sharded`) and the explorer's score cache (:mod:`.cached`).
:func:`make_engine` builds the engine an option names."""
from . import base, cached, graph, passes, plan
from .base import EngineWrapper, ScoreEngine
from .graph import make_engine

__all__ = ["base", "cached", "graph", "passes", "plan", "make_engine", "ScoreEngine", "EngineWrapper"]
