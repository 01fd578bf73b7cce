"""Which engine an option names, composed in one place (cswap_nb/METHOD.md §10): the traced graph, else the
family's parts, else full passes, and compaction around a graph engine when asked."""
from __future__ import annotations

from torch import Tensor, nn

from ..core.config import ENGINES
from ..core.units import Masker
from .base import ScoreEngine
from .compact import CompactingEngine
from .graph import GraphEngine, GraphUnavailable
from .passes import FullPasses, PartsEngine, PartsUnavailable


def make_engine(kind: str, model: nn.Module, masker: Masker, example: Tensor, compact_from: tuple | None = None
                ) -> ScoreEngine:
    """The scoring engine of the option ``engine`` (cswap_nb/METHOD.md §10), composed explicitly:

    * ``"fast"``: a :class:`GraphEngine`; for a model ``torch.fx`` cannot trace, the family's parts
      (:class:`~cswap_nb.engines.passes.PartsEngine`), else full passes
      (:class:`~cswap_nb.engines.passes.FullPasses`), with the engine's ``fallback`` saying why;
    * ``"naive"``: :class:`~cswap_nb.engines.passes.FullPasses`, one full pass per candidate on every sample
      (the reference: it takes no early decisions);
    * ``"parts"``: the family's parts, else full passes.

    ``compact_from``: ``(template, dense MACs or None[, estimate])`` wraps a graph engine in a
    :class:`~cswap_nb.engines.compact.CompactingEngine` (compaction, cswap_nb/METHOD.md §10); ``template`` is the
    dense network the compact copies are cut from, ``estimate`` the share of its MACs a cut keeps
    (:func:`~cswap_nb.engines.compact.mac_share_estimate`: whether a copy pays its checks).
    """
    if kind not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {kind!r}")
    if kind == "naive":
        return FullPasses(model, masker, name="naive", slicing=False)
    why = None
    if kind == "fast":
        try:
            graph = GraphEngine(model, masker, example)
        except GraphUnavailable as exc:
            why = str(exc)
        else:
            return graph if compact_from is None else CompactingEngine(graph, compact_from[0], example, *compact_from[1:])
    try:
        return PartsEngine(model, masker, example, name=kind, fallback=f"{why}; using the family's parts" if why else None)
    except PartsUnavailable as exc:
        return FullPasses(model, masker, name=kind, fallback=f"{why}; using full passes ({exc})" if why else str(exc))


__all__ = ["make_engine"]
