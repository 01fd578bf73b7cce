"""DDRNet (:mod:`cswap_nb.ddrnet`): the model lists its own parts and auxiliary heads (the generic
protocol of :class:`~cswap_nb.families.Family`); this adapter adds its spec."""
from __future__ import annotations

from torch import nn

from . import Family, Spec


class DDRNet(Family):
    name = "ddrnet"
    spec_families = ("ddrnet",)

    def matches(self, model: nn.Module) -> bool:
        from ..ddrnet import DualResNet

        return isinstance(model, DualResNet)

    def describe(self, model: nn.Module) -> Spec:
        from ..ddrnet import describe_ddrnet

        return describe_ddrnet(model)

    def build(self, spec: Spec) -> nn.Module:
        from ..ddrnet import build_ddrnet

        return build_ddrnet(spec)
