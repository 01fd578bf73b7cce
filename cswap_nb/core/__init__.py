"""The core: the causal test (:mod:`.causal`), the options (:mod:`.config`), units and their masks
(:mod:`.units`), their physical removal (:mod:`.surgery`), calibration sets (:mod:`.calibration`),
metrics (:mod:`.metrics`), the result and its file format (:mod:`.result`) and the memory layout
(:mod:`.layout`). It builds on :mod:`cswap_nb.data` and :mod:`cswap_nb.models` only."""
from . import calibration, causal, config, layout, metrics, result, surgery, units

__all__ = ["calibration", "causal", "config", "layout", "metrics", "result", "surgery", "units"]
