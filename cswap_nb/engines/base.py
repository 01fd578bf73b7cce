"""The one interface of the scoring engines, and the base of the engines that wrap another.

An engine computes the scores ``q(x)`` of the calibration set under the masks set now on its
:class:`~cswap_nb.core.units.Masker`: :meth:`ScoreEngine.scores` for every sample, with a candidate of
``layer`` removed or with none (``layer=None``), and, where :meth:`ScoreEngine.can_slice` says so,
:meth:`ScoreEngine.rows_scores` for some sample ranges only (the early decisions of
cswap_nb/METHOD.md §10). Everything the pruning loop, the criteria and the effects ask of an engine is
declared here, with the answer of an engine that cannot do more.

The engines are composed, not derived from one another (:func:`cswap_nb.engines.build.make_engine`):

* :class:`~cswap_nb.engines.passes.FullPasses`: one full forward pass per call, the reference;
* :class:`~cswap_nb.engines.passes.PartsEngine`: the family's parts, with a :class:`FullPasses` for what the
  parts cannot serve;
* :class:`~cswap_nb.engines.graph.GraphEngine`: the traced graph, with a :class:`FullPasses` for the layers
  it has no checked plan for;

and wrappers add to an engine without changing its answers (:class:`EngineWrapper`): compaction
(:class:`~cswap_nb.engines.compact.CompactingEngine`), sharding over processes
(:class:`~cswap_nb.engines.sharded.ShardedEngine`) and the α explorer's score cache
(:class:`~cswap_nb.engines.cached.CachedEngine`).
"""
from __future__ import annotations

from torch import Tensor, nn

from ..core.causal import PixelClasses, class_pixel_scores, pixel_classes, true_class_scores
from ..core.foresight import predicted_harm
from ..core.units import Masker, UnitLayer

Rows = tuple[tuple[int, int], ...]  # sample ranges (start, stop) of the calibration set
SEGMENTATION_PIXELS = 64 * 64 * 128  # label pixels scored in one batch of a segmentation model, at most


class ScoreEngine:
    """What every scoring engine offers (module docstring).

    ``name`` is the option value it was built for (``"fast"``, ``"naive"``, ``"parts"``), ``path`` how it
    scores candidates (``"graph"``, ``"parts"`` or ``"full"`` passes) and ``fallback`` why a faster path was
    not used (None when it was, or none was asked for). :attr:`forward_equivalents` counts the work so far in
    full passes over the calibration set. The base class also turns logits into scores, for classification
    or, after :meth:`segmentation`, for label masks.
    """

    path = "full"
    full: ScoreEngine | None = None
    """The engine of full passes this one leaves what it cannot serve to (None: it serves everything itself);
    its work counts in :attr:`forward_equivalents` and it scores the same label masks."""

    def __init__(self, model: nn.Module, masker: Masker, batch_size: int = 512, name: str = "naive",
                 fallback: str | None = None):
        self.model, self.masker, self.batch_size = model, masker, batch_size
        self.name, self.fallback = name, fallback
        self._work = 0.0  # full passes over the calibration set computed by this engine itself
        self.masks: Tensor | None = None
        self.pairs: Tensor | None = None
        self._pixel_index: dict[tuple[int, int], PixelClasses] = {}

    # -- what an engine says of itself ------------------------------------------------------------------
    @property
    def forward_equivalents(self) -> float:
        """The work so far, in full forward passes over the calibration set (with :attr:`full`'s)."""
        return self._work + (self.full.forward_equivalents if self.full is not None else 0.0)

    @property
    def layer_fallbacks(self) -> dict[str, str]:
        """Unit layers scored with full passes although the engine has a faster path, with the reason."""
        return {}

    @property
    def compaction(self) -> dict | None:
        """What compaction did (:class:`~cswap_nb.engines.compact.CompactingEngine`); None: not asked for."""
        return None

    @property
    def local_samples(self) -> int | None:
        """The calibration samples this process scores (:class:`~cswap_nb.engines.sharded.ShardedEngine`);
        None: all of them, in one process."""
        return None

    @property
    def segmenting(self) -> bool:
        """Whether scores are computed against label masks (:meth:`segmentation`)."""
        return self.masks is not None

    # -- the scores -------------------------------------------------------------------------------------
    def segmentation(self, masks: Tensor, pairs: Tensor | None) -> None:
        """Score dense predictions against label ``masks`` (N, H, W) instead of ``y``.

        ``pairs`` None: one score per image (mean over its labelled pixels). ``pairs``
        (P, 2) of (image, class): one score per pair, the class's probability averaged
        over that class's pixels in that image (:func:`~cswap_nb.core.causal.class_pixel_scores`);
        the ``y`` handed to :meth:`scores` is then ignored.
        """
        self.masks, self.pairs = masks, pairs
        # dense outputs are large: at most SEGMENTATION_PIXELS label pixels a batch (64 scenes of 64x128;
        # one chunk instead of two for notebook 05's 42 scenes, 12% faster per analysis than 32 scenes)
        per_image = max(1, masks.shape[-2] * masks.shape[-1])
        self.batch_size = min(self.batch_size, max(1, SEGMENTATION_PIXELS // per_image))
        self._pixel_index = {}  # (batch start, classes) -> pixel_classes
        if self.full is not None:
            self.full.segmentation(masks, pairs)
            self.full._pixel_index = self._pixel_index  # one index of the masks' pixels for both

    def _score(self, logits: Tensor, y: Tensor, i: int, score: str) -> Tensor:
        """The scores of the batch of samples ``i, i + 1, ...`` whose logits are ``logits``."""
        n = logits.shape[0]
        if self.masks is None:
            return true_class_scores(logits, y[i : i + n], score)
        masks = self.masks[i : i + n]
        if self.pairs is None:
            return true_class_scores(logits, masks, score)
        key = (i, logits.shape[1])  # the masks are the same on every pass: index their pixels once
        if key not in self._pixel_index:
            self._pixel_index[key] = pixel_classes(masks, logits.shape[1])
        return class_pixel_scores(logits, masks, score, self._pixel_index[key])

    def _finish(self, q: Tensor) -> Tensor:
        return q if self.pairs is None else q[self.pairs[:, 0], self.pairs[:, 1]]

    def scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer | None = None) -> Tensor:
        """The scores of every calibration sample under the present masks; ``layer``: the layer whose candidate
        is removed now (None: no candidate, e.g. the reference scores)."""
        raise NotImplementedError

    def can_slice(self, layer: UnitLayer, x: Tensor) -> bool:
        """Whether :meth:`rows_scores` computes only the rows asked for."""
        return False

    def rows_scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, rows: Rows) -> Tensor:
        """The scores of the calibration samples in ``rows`` (``(start, stop)`` ranges) alone (needs
        :meth:`can_slice`)."""
        raise NotImplementedError(f"the {self.name!r} engine scores the whole calibration set only")

    def can_stack(self, layer: UnitLayer, x: Tensor) -> bool:
        """Whether :meth:`stack_rows` can score several candidates in one pass."""
        return False

    def stack_rows(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, others: list[list[int]],
                   rows: Rows, others_rows: list[Rows] | None = None) -> None:
        """Score ``rows`` ahead for the present candidate and for the states ``others``, each the complete list of
        ``layer``'s removed units in a state to come, on its own rows of ``others_rows`` (default: ``rows``)
        (needs :meth:`can_stack`)."""
        raise NotImplementedError(f"the {self.name!r} engine scores one candidate per pass")

    def clear_stacked(self) -> None:
        """Forget results scored ahead (none here)."""

    def predicted_harm(self, x: Tensor, y: Tensor, classes: list[int], score: str) -> dict | None:
        """:func:`~cswap_nb.core.foresight.predicted_harm` of the network in its present state: how early
        decisions order the classes they score first (cswap_nb/METHOD.md §10)."""
        return predicted_harm(self.masker.model, list(self.masker.layers.values()), x, y, classes, score)


class EngineWrapper(ScoreEngine):
    """An engine that adds to another, :attr:`inner`: every part of the interface is the inner engine's
    unless the wrapper redefines it (each part is forwarded by name here, not by attribute lookup)."""

    def __init__(self, inner: ScoreEngine):
        self.inner = inner

    name = property(lambda self: self.inner.name)
    path = property(lambda self: self.inner.path)
    fallback = property(lambda self: self.inner.fallback)
    model = property(lambda self: self.inner.model)
    masker = property(lambda self: self.inner.masker)
    batch_size = property(lambda self: self.inner.batch_size)
    masks = property(lambda self: self.inner.masks)
    pairs = property(lambda self: self.inner.pairs)

    @property
    def forward_equivalents(self) -> float:
        return self.inner.forward_equivalents

    @property
    def layer_fallbacks(self) -> dict[str, str]:
        return self.inner.layer_fallbacks

    @property
    def compaction(self) -> dict | None:
        return self.inner.compaction

    @property
    def local_samples(self) -> int | None:
        return self.inner.local_samples

    @property
    def segmenting(self) -> bool:
        return self.inner.segmenting

    def segmentation(self, masks: Tensor, pairs: Tensor | None) -> None:
        self.inner.segmentation(masks, pairs)

    def scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer | None = None) -> Tensor:
        return self.inner.scores(x, y, score, layer)

    def can_slice(self, layer: UnitLayer, x: Tensor) -> bool:
        return self.inner.can_slice(layer, x)

    def rows_scores(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, rows: Rows) -> Tensor:
        return self.inner.rows_scores(x, y, score, layer, rows)

    def can_stack(self, layer: UnitLayer, x: Tensor) -> bool:
        return self.inner.can_stack(layer, x)

    def stack_rows(self, x: Tensor, y: Tensor, score: str, layer: UnitLayer, others: list[list[int]],
                   rows: Rows, others_rows: list[Rows] | None = None) -> None:
        self.inner.stack_rows(x, y, score, layer, others, rows, others_rows)

    def clear_stacked(self) -> None:
        self.inner.clear_stacked()

    def predicted_harm(self, x: Tensor, y: Tensor, classes: list[int], score: str) -> dict | None:
        return self.inner.predicted_harm(x, y, classes, score)


__all__ = ["ScoreEngine", "EngineWrapper", "Rows", "SEGMENTATION_PIXELS"]
