"""DDRNet (:mod:`cswap_nb.models.ddrnet`): the model lists its own parts and auxiliary heads (the generic
protocol of :class:`~cswap_nb.models.families.Family`); this adapter adds its spec."""
from __future__ import annotations

from torch import nn

from ..ddrnet import DualResNet, build_ddrnet, describe_ddrnet
from .base import Family, Spec, register


@register
class DDRNet(Family):
    name = "ddrnet"
    spec_families = ("ddrnet",)

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, DualResNet)

    def describe(self, model: nn.Module) -> Spec:
        return describe_ddrnet(model)

    def build(self, spec: Spec) -> nn.Module:
        return build_ddrnet(spec)
