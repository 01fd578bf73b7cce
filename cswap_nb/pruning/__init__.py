"""Pruning: the search strategies (:mod:`.descent`), the step-by-step :class:`PruneSession`
(:mod:`.session`) and the one-call :func:`prune` (:mod:`.api`)."""
from . import api, descent, session
from .api import PruneResult, load_pruned, prune
from .session import PruneSession

__all__ = ["api", "descent", "session", "prune", "load_pruned", "PruneResult", "PruneSession"]
