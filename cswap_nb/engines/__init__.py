"""How the scores of the calibration set are computed for each candidate: the one interface
(:mod:`.base`), full passes and the family's parts (:mod:`.passes`), the traced graph with its cache and
correction (:mod:`.graph`, planned by :mod:`.plan`), and the wrappers that add to an engine: compaction
(:mod:`.compact`), sharding over processes (:mod:`.sharded`) and the explorer's score cache (:mod:`.cached`).
:func:`make_engine` (:mod:`.build`) builds the engine an option names."""
from . import base, build, cached, compact, graph, passes, plan
from .base import EngineWrapper, ScoreEngine
from .build import make_engine

__all__ = ["base", "build", "cached", "compact", "graph", "passes", "plan", "make_engine", "ScoreEngine", "EngineWrapper"]
