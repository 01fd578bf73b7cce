"""Architecture builders and plain (pickle-free) architecture descriptions.

Models are the real library classes (timm's ``ResNet`` and ``VisionTransformer``,
torchvision's ``ResNet`` and ``MobileNetV2``) and this package's DDRNet
(:mod:`cswap_nb.models.ddrnet`, re-exported here: :func:`ddrnet23_slim`, :func:`ddrnet23`); an
architecture is described by a small JSON-able dict (a *spec*) so that checkpoints and
pruned models can be saved as state dicts and rebuilt without unpickling modules.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .ddrnet import DualResNet, ddrnet23, ddrnet23_slim  # noqa: F401 (re-exported: cs.models.ddrnet23_slim)
from .families import ADAPTERS as _ADAPTERS
from .families import family_for_spec, family_of, stem_conv  # noqa: F401 (stem_conv re-exported)
from .families.attention import fit_heads_to_qkv
from .families.vit import VIT_KEYS  # noqa: F401 (re-exported)

Spec = dict[str, Any]


def build(spec: Spec) -> nn.Module:
    """Build a freshly initialised model from a spec produced by :func:`describe` (its family's adapter,
    :func:`cswap_nb.models.families.family_for_spec`)."""
    return family_for_spec(spec).build(spec)


FAMILIES = tuple(name for adapter in _ADAPTERS for name in adapter.spec_families)
"""The ``family`` values a spec may have."""


def resnet_digits(depth: int = 18, channels: tuple[int, ...] = (16, 32, 64, 128), num_classes: int = 10) -> nn.Module:
    """timm's ResNet at reduced stage widths (the shipped ``*-digits`` checkpoints)."""
    blocks = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
    block, layers = blocks[depth]
    return build({"family": "timm.resnet", "block": block, "layers": list(layers),
                  "channels": list(channels), "num_classes": num_classes})


def mobilenet_v2_digits(width_mult: float = 0.5, num_classes: int = 10) -> nn.Module:
    """torchvision's MobileNetV2 at a reduced width (the shipped ``mobilenetv2-digits``)."""
    return build({"family": "torchvision.mobilenet_v2", "width_mult": width_mult, "num_classes": num_classes})


def vit_digits(img_size: int = 32, patch_size: int = 4, embed_dim: int = 96, depth: int = 4, num_heads: int = 4,
               mlp_ratio: float = 4.0, num_classes: int = 10) -> nn.Module:
    """timm's VisionTransformer, small (the shipped ``vit-digits``)."""
    return build({"family": "timm.vit", "img_size": img_size, "patch_size": patch_size, "embed_dim": embed_dim,
                  "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio, "num_classes": num_classes})


def mlp(in_features: int, hidden: tuple[int, ...], num_classes: int) -> nn.Module:
    """Flatten -> (Linear -> ReLU) per hidden width -> Linear classifier."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def describe(model: nn.Module) -> Spec:
    """A plain description from which :func:`build` re-creates the same module tree.

    Supported (each by its adapter in :mod:`cswap_nb.models.families`): timm ``ResNet`` with a single-conv
    stem (any kernel and stride), torchvision ``ResNet``, torchvision ``MobileNetV2`` (default block
    setting, any ``width_mult``), timm ``VisionTransformer`` (uniform blocks; see
    :data:`~cswap_nb.models.families.vit.VIT_KEYS`) and DDRNet (:class:`cswap_nb.models.ddrnet.DualResNet`, dense
    or pruned: its spec holds the widths it was built with). Any other model raises ``ValueError``;
    such models are saved as state dict plus shapes and reloaded into a fresh instance.
    """
    return family_of(model).describe(model)


def shapes_of(model: nn.Module) -> dict[str, list[int]]:
    """Every parameter's and buffer's shape, by state-dict key."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _module_of(key: str) -> str:
    return key.rpartition(".")[0] or "<root>"


def check_resizable(model: nn.Module, shapes: dict[str, list[int]], what: str = "the saved model",
                    exact: bool = False) -> None:
    """Raise ``ValueError`` naming the first module of ``model`` that does not fit ``shapes``:
    a tensor the file lacks or has in excess, one of another rank, one larger than the model's
    in its first two (channel) dimensions (pruning only shrinks), one that differs elsewhere
    (a kernel size, say), or (``exact``) any difference at all, as left after :func:`reshape_to`."""
    own = shapes_of(model)
    missing = [k for k in shapes if k not in own]
    extra = [k for k in own if k not in shapes]
    if missing or extra:
        key = (missing or extra)[0]
        side = "is not in the model you passed" if missing else "is not in the saved file"
        raise ValueError(f"{what}: the architecture differs at module {_module_of(key)!r}: tensor {key!r} {side} "
                         f"({len(missing)} saved tensor(s) missing from the model, {len(extra)} model tensor(s) "
                         "missing from the file); pass a fresh instance of the architecture that was pruned")
    for key, shape in shapes.items():
        mine, theirs = own[key], list(shape)
        if (len(mine) != len(theirs) or mine[2:] != theirs[2:] or any(t > m for m, t in zip(mine[:2], theirs[:2]))
                or (exact and mine != theirs)):
            module = _module_of(key)
            kind = type(model.get_submodule(module)).__name__ if module != "<root>" else type(model).__name__
            hint = "cs.load_pruned cannot resize this kind of module" if exact else "another architecture?"
            raise ValueError(f"{what}: module {module!r} ({kind}) has {key!r} of shape {mine}, the file "
                             f"{theirs} ({hint})")


def reshape_to(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """Resize conv/linear/norm layers in place so their tensors take the given shapes.

    Used to rebuild a pruned network from a description: the module tree comes from
    :func:`build`, the channel counts from ``shapes``. Depthwise convs keep one group per
    channel; timm attention modules get ``num_heads`` and ``attn_dim`` from their resized
    ``qkv`` (``head_dim`` is unchanged). Weights are left uninitialised; load a state dict
    afterwards. The direct parameters and buffers of any other module (a user's own layer
    holding a per-channel scale, say) take their saved shapes too.
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        w = shapes.get(prefix + "weight")
        if isinstance(module, nn.Conv2d) and w is not None:
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            module.out_channels = w[0]
            module.in_channels = w[0] if depthwise else w[1] * module.groups
            if depthwise:
                module.groups = w[0]
        elif isinstance(module, nn.Linear) and w is not None:
            module.out_features, module.in_features = w[0], w[1]
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            n = shapes.get(prefix + "running_mean", w)
            if n is None:
                continue
            module.num_features = n[0]
        elif isinstance(module, nn.LayerNorm) and w is not None:
            module.normalized_shape = tuple(w)
        elif isinstance(module, nn.GroupNorm) and w is not None:
            module.num_channels = w[0]
        for pname, p in list(module.named_parameters(recurse=False)):
            if prefix + pname in shapes:
                setattr(module, pname, nn.Parameter(torch.empty(shapes[prefix + pname], dtype=p.dtype),
                                                    requires_grad=p.requires_grad))
        for bname, b in list(module.named_buffers(recurse=False)):
            if b is not None and prefix + bname in shapes:
                module._buffers[bname] = torch.empty(shapes[prefix + bname], dtype=b.dtype)
    fit_heads_to_qkv(model)  # attention: heads follow the resized qkv
    return model


ARCH_SOURCES = ("torchvision", "timm")


def from_state_dict(arch: str, weights, num_classes: int) -> nn.Module:
    """A library architecture (``"torchvision:resnet18"`` or ``"timm:resnet18"``) with ``num_classes``
    outputs and the weights of a local state dict file ``weights`` (read with ``weights_only=True``;
    a dict holding it under ``"state_dict"`` or ``"model"`` is unwrapped), in eval mode.

    A file for another architecture or class count is an error naming the first key (in the
    model's order) that is missing, unexpected or of another shape.
    """
    source, _, name = arch.partition(":")
    if source not in ARCH_SOURCES or not name:
        raise ValueError(f"--arch must be SOURCE:NAME with SOURCE one of {list(ARCH_SOURCES)} "
                         f"(e.g. torchvision:resnet18), got {arch!r}")
    try:
        if source == "torchvision":
            import torchvision

            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        else:
            import timm

            model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ValueError(f"cannot build {arch} with {num_classes} classes: {exc}") from exc
    state = torch.load(weights, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{weights} does not hold a state dict (got {type(state).__name__})")
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            raise ValueError(f"{weights} does not fit {arch} ({num_classes} classes): key {key!r} "
                             f"{tuple(value.shape)} is missing from the file")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"{weights} does not fit {arch} ({num_classes} classes): key {key!r} has shape "
                             f"{tuple(state[key].shape)} in the file, {tuple(value.shape)} in the model")
    extra = [k for k in state if k not in own]
    if extra:
        raise ValueError(f"{weights} does not fit {arch} ({num_classes} classes): key {extra[0]!r} of the file "
                         f"is not in the model ({len(extra)} such key(s))")
    model.load_state_dict(state)
    return model.eval()
