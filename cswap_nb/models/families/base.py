"""The adapter protocol (:class:`Family`), the registry and the helpers every family module uses."""
from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import nn

Spec = dict[str, Any]
Part = tuple[str, Callable, list[str]]  # (name, function, prefixes of the module names it runs)


class Family:
    """The generic adapter: the defaults every family starts from."""

    name = "generic"
    spec_families: tuple[str, ...] = ()  # the ``family`` values of the specs this adapter builds
    token_outputs = False  # unit outputs are (N, tokens, C) rather than channels-first

    def matches(self, model: nn.Module) -> bool:
        return True

    def parts(self, model: nn.Module) -> list[Part] | None:
        """The model's forward as parts run one after the other, or None (then full passes).

        Any model may list its own parts with a ``sequential_parts()`` method returning
        ``(name, function, module-name prefixes)`` triples (DDRNet does; parts may pass tuples)."""
        own = getattr(model, "sequential_parts", None)
        return list(own()) if callable(own) else None

    def describe(self, model: nn.Module) -> Spec:
        raise ValueError(
            f"cannot describe a {type(model).__name__} as a plain spec; supported: timm and torchvision ResNets, "
            "torchvision MobileNetV2, timm VisionTransformer, DDRNet. Save it with res.save(path) and reload it "
            "into a fresh instance: cs.load_pruned(path, model=MyNet(...)).")

    def build(self, spec: Spec) -> nn.Module:
        raise ValueError(f"the {self.name} adapter builds no spec")

    def internal_units(self, model: nn.Module) -> set[str] | None:
        """Anchor names of the units tested with ``scope="internal"`` (None: every internal group)."""
        return None

    def auxiliary_heads(self, model: nn.Module) -> list[nn.Module]:
        """Heads outside the eval-mode output (resized with their inputs, never units); a model may
        list them with an ``auxiliary_heads()`` method (DDRNet does)."""
        own = getattr(model, "auxiliary_heads", None)
        return list(own()) if callable(own) else []

    def lrp_canonizers(self, model: nn.Module) -> list:
        raise ValueError(f"lrp is available for torchvision and timm ResNets only (zennit canonizers); got "
                         f"{type(model).__name__}. Captum's LRP is not used: it is wrong on residual networks.")


class Sequential(Family):
    """An ``nn.Sequential``: its children are the parts."""

    name = "sequential"

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, nn.Sequential)

    def parts(self, model: nn.Module) -> list[Part]:
        return [(name, child, [name]) for name, child in model.named_children()]


def module_part(model: nn.Module, module: nn.Module, name: str | None = None) -> Part:
    """A part that runs one submodule of ``model`` (named by its qualified name)."""
    qualified = next(n for n, m in model.named_modules() if m is module)
    return (name or qualified, module, [qualified])


def structure(model: nn.Module) -> str:
    """The module tree as text, with the dropout rates (no effect in eval mode) left out."""
    text = re.sub(r"Dropout\(p=[^,)]*", "Dropout(", repr(model))
    return re.sub(r"DropPath\([^)]*\)", "Identity()", text)


def same_tree(spec: Spec, model: nn.Module, attrs: tuple[str, ...] = ()) -> bool:
    """Whether ``build(spec)`` (on the meta device) is ``model``'s module tree: the same state-dict
    shapes, the same layers and settings (activations, norm eps, ...) and the same ``attrs``."""
    with torch.device("meta"):
        rebuilt = family_for_spec(spec).build(spec)
    shapes = lambda m: {k: list(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    return (shapes(rebuilt) == shapes(model) and structure(rebuilt) == structure(model)
            and all(getattr(rebuilt, a, None) == getattr(model, a, None) for a in attrs))


ADAPTERS: list[Family] = []
"""The adapters, most specific first (registration order); :data:`GENERIC` is the fallback."""


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: add an instance of the adapter ``cls`` to :data:`ADAPTERS` (after those before it)."""
    ADAPTERS.append(cls())
    return cls


GENERIC = Family()


def family_of(model: nn.Module) -> Family:
    """The adapter of ``model``: the first of :data:`ADAPTERS` that matches, else the generic one."""
    return next((f for f in ADAPTERS if f.matches(model)), GENERIC)


def family_for_spec(spec: Spec) -> Family:
    """The adapter that builds ``spec`` (by its ``family`` key)."""
    name = spec.get("family")
    for f in ADAPTERS:
        if name in f.spec_families:
            return f
    known = [s for f in ADAPTERS for s in f.spec_families]
    raise ValueError(f"unknown architecture family {name!r} in spec {spec}; known: {', '.join(known)}")


def stem_conv(conv: nn.Conv2d, kernel: int, stride: int, in_chans: int | None = None) -> nn.Conv2d:
    """``conv`` itself when it already has this kernel, stride and input width, else a fresh
    bias-free replacement (He-initialised, as timm and torchvision initialise their stems).

    Small inputs (Fashion-MNIST's 28x28) need a stem that downsamples less than ImageNet's:
    with the standard 7x7/2 stem and max-pool a ResNet's last stage works at 1x1."""
    in_chans = conv.in_channels if in_chans is None else in_chans
    if (conv.kernel_size[0], conv.stride[0], conv.in_channels) == (kernel, stride, in_chans):
        return conv
    new = nn.Conv2d(in_chans, conv.out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    return new
