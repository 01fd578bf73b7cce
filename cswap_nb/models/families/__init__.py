"""What is special about each model family, in one adapter per family (cswap_nb/METHOD.md §4).

An adapter knows how to split a model into parts for the parts engine (:meth:`Family.parts`; the
fast engine traces any model and falls back to these parts), describe and rebuild it for saving
(:meth:`Family.describe`, :meth:`Family.build`), which of its units C-SWAP tests with
``scope="internal"`` (:meth:`Family.internal_units`), which heads run only in training
(:meth:`Family.auxiliary_heads`), whether its unit outputs are token-shaped
(:attr:`Family.token_outputs`) and which LRP canonizers fit it (:meth:`Family.lrp_canonizers`).
:func:`family_of` finds a model's adapter, :func:`family_for_spec` a spec's; models no adapter
knows get :data:`GENERIC`, a plain :class:`Family` (whatever Torch-Pruning's dependency graph finds; the fast engine's
traced graph, or full passes where it cannot be traced).

Adding a family is one adapter module here whose class is decorated with :func:`register` (and imported
below, in order: most specific first), and its tests.
"""
from __future__ import annotations

from .base import (ADAPTERS, GENERIC, Family, Part, Sequential, Spec, family_for_spec, family_of, module_part, register,
                   same_tree, stem_conv, structure)

# each module registers its adapters; the order is the matching order, most specific first
from . import ddrnet  # noqa: E402,F401,I001  isort: skip
from . import mobilenet  # noqa: E402,F401  isort: skip
from . import vit  # noqa: E402,F401  isort: skip
from . import resnet  # noqa: E402,F401  isort: skip

register(Sequential)

__all__ = ["ADAPTERS", "GENERIC", "Family", "Part", "Sequential", "Spec", "family_for_spec", "family_of",
           "module_part", "register", "same_tree", "stem_conv", "structure"]
