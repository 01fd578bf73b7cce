"""Architecture builders and plain (pickle-free) architecture descriptions.

Models are the real library classes (timm's ``ResNet`` and ``VisionTransformer``,
torchvision's ``ResNet`` and ``MobileNetV2``) and this package's DDRNet
(:mod:`cswap_nb.ddrnet`, re-exported here: :func:`ddrnet23_slim`, :func:`ddrnet23`); an
architecture is described by a small JSON-able dict (a *spec*) so that checkpoints and
pruned models can be saved as state dicts and rebuilt without unpickling modules.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from .ddrnet import DualResNet, build_ddrnet, ddrnet23, ddrnet23_slim, describe_ddrnet  # noqa: F401 (re-exported)

Spec = dict[str, Any]


def build(spec: Spec) -> nn.Module:
    """Build a freshly initialised model from a spec produced by :func:`describe`."""
    family = spec.get("family")
    if family == "timm.resnet":
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet

        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[spec["block"]]
        model = ResNet(
            block=block,
            layers=tuple(spec["layers"]),
            channels=tuple(spec["channels"]),
            num_classes=spec["num_classes"],
            in_chans=spec.get("in_chans", 3),
            global_pool=spec.get("global_pool", "avg"),
            cardinality=spec.get("cardinality", 1),
            base_width=spec.get("base_width", 64),
        )
        model.conv1 = _stem_conv(model.conv1, spec.get("stem_kernel", 7), spec.get("stem_stride", 2))
        return model
    if family == "torchvision.resnet":
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[spec["block"]]
        return ResNet(
            block,
            list(spec["layers"]),
            num_classes=spec["num_classes"],
            groups=spec.get("groups", 1),
            width_per_group=spec.get("width_per_group", 64),
        )
    if family == "torchvision.mobilenet_v2":
        from torchvision.models import MobileNetV2

        model = MobileNetV2(num_classes=spec["num_classes"], width_mult=spec.get("width_mult", 1.0),
                            dropout=spec.get("dropout", 0.2))
        model.features[0][0] = _stem_conv(model.features[0][0], 3, spec.get("stem_stride", 2),
                                          spec.get("in_chans", 3))
        return model
    if family == "timm.vit":
        from timm.models.vision_transformer import VisionTransformer

        unknown = sorted(set(spec) - {"family", *VIT_KEYS})
        if unknown:
            raise ValueError(f"timm.vit spec has unknown key(s) {unknown}; known: {sorted(VIT_KEYS)}")
        return VisionTransformer(**{k: spec[k] for k in VIT_KEYS if k in spec})
    if family == "ddrnet":
        return build_ddrnet(spec)
    raise ValueError(f"unknown architecture family {family!r} in spec {spec}; known: {', '.join(FAMILIES)}")


def _stem_conv(conv: nn.Conv2d, kernel: int, stride: int, in_chans: int | None = None) -> nn.Conv2d:
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


FAMILIES = ("timm.resnet", "torchvision.resnet", "torchvision.mobilenet_v2", "timm.vit", "ddrnet")

# VisionTransformer arguments a ``timm.vit`` spec may hold (everything else at timm's default)
VIT_KEYS = ("img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth",
            "num_heads", "mlp_ratio", "qkv_bias", "qk_norm", "init_values", "class_token", "no_embed_class",
            "reg_tokens", "pre_norm", "final_norm", "fc_norm")


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


def _structure(model: nn.Module) -> str:
    """The module tree as text, with the dropout rates (no effect in eval mode) left out."""
    text = re.sub(r"Dropout\(p=[^,)]*", "Dropout(", repr(model))
    return re.sub(r"DropPath\([^)]*\)", "Identity()", text)


def _same_shapes(spec: Spec, model: nn.Module, attrs: tuple[str, ...] = ()) -> bool:
    """Whether ``build(spec)`` (on the meta device) is ``model``'s module tree: the same state-dict
    shapes, the same layers and settings (activations, norm eps, ...) and the same ``attrs``."""
    with torch.device("meta"):
        rebuilt = build(spec)
    return (shapes_of(rebuilt) == shapes_of(model) and _structure(rebuilt) == _structure(model)
            and all(getattr(rebuilt, a, None) == getattr(model, a, None) for a in attrs))


def _describe_mobilenet_v2(model: nn.Module) -> Spec:
    """Spec of a torchvision MobileNetV2 with the default block setting; ``width_mult`` is recovered
    from the channel counts (the first of the usual values, then a 0.01 grid, that reproduces them)."""
    from torchvision.models.mobilenetv2 import _make_divisible

    base = [32] + [c for _, c, n, _ in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                                           [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]] for _ in range(n)]
    blocks = list(model.features)
    if len(blocks) != len(base) + 1:
        raise ValueError("describe: only torchvision MobileNetV2s with the default block setting are supported")
    observed = [blocks[0][0].out_channels] + [b.out_channels for b in blocks[1:-1]] + [blocks[-1][0].out_channels]
    linear = model.classifier[-1]
    candidates = [1.0, 0.75, 0.5, 0.35, 0.25, 1.3, 1.4, 1.5, 2.0] + [k / 100 for k in range(5, 401)]
    matched = False
    for w in candidates:
        expected = [_make_divisible(c * w, 8) for c in base] + [_make_divisible(1280 * max(1.0, w), 8)]
        if expected != observed:
            continue
        matched = True
        spec = {"family": "torchvision.mobilenet_v2", "width_mult": w, "num_classes": linear.out_features,
                "dropout": float(model.classifier[0].p)}
        stem = blocks[0][0]
        if stem.stride[0] != 2:
            spec["stem_stride"] = stem.stride[0]
        if stem.in_channels != 3:
            spec["in_chans"] = stem.in_channels
        if _same_shapes(spec, model):
            return spec
    if matched:
        raise ValueError("describe: this MobileNetV2 uses a block, norm layer or setting other than torchvision's "
                         "defaults (only num_classes, width_mult and dropout are described)")
    raise ValueError("describe: this MobileNetV2's channel counts match no width_mult of the default setting")


def _describe_vit(model: nn.Module) -> Spec:
    """Spec of a timm VisionTransformer built from the :data:`VIT_KEYS` arguments (uniform blocks)."""
    from timm.layers import LayerScale

    blocks = list(model.blocks)
    attn, mlp_ = blocks[0].attn, blocks[0].mlp
    to_int = lambda v: int(v[0]) if isinstance(v, (tuple, list)) and len(set(v)) == 1 else v  # noqa: E731
    img, patch = model.patch_embed.img_size, model.patch_embed.patch_size
    spec = {
        "family": "timm.vit",
        "img_size": to_int(list(img)), "patch_size": to_int(list(patch)),
        "in_chans": model.patch_embed.proj.in_channels, "num_classes": model.num_classes,
        "global_pool": model.global_pool, "embed_dim": model.embed_dim, "depth": len(blocks),
        "num_heads": attn.num_heads, "mlp_ratio": mlp_.fc1.out_features / model.embed_dim,
        "qkv_bias": attn.qkv.bias is not None, "qk_norm": not isinstance(attn.q_norm, nn.Identity),
        "init_values": 1e-5 if isinstance(blocks[0].ls1, LayerScale) else None,
        "class_token": model.cls_token is not None, "no_embed_class": bool(model.no_embed_class),
        "reg_tokens": int(model.num_reg_tokens), "pre_norm": not isinstance(model.norm_pre, nn.Identity),
        # timm: a final norm sits before pooling (``norm``) or, with ``fc_norm``, after it
        "final_norm": not (isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity)),
        "fc_norm": not isinstance(model.fc_norm, nn.Identity),
    }
    if float(spec["mlp_ratio"]).is_integer():
        spec["mlp_ratio"] = float(int(spec["mlp_ratio"]))
    flags = ("dynamic_img_size", "pool_include_prefix", "num_prefix_tokens", "global_pool")
    if not _same_shapes(spec, model, flags):
        raise ValueError("describe: this VisionTransformer is not one that timm builds from "
                         f"{', '.join(VIT_KEYS)} (e.g. its blocks differ from each other, or it uses another "
                         "activation, norm layer or setting)")
    return spec


def describe(model: nn.Module) -> Spec:
    """A plain description from which :func:`build` re-creates the same module tree.

    Supported: timm ``ResNet`` with a single-conv stem (any kernel and stride), torchvision ``ResNet``,
    torchvision ``MobileNetV2`` (default block setting, any ``width_mult``), timm
    ``VisionTransformer`` (uniform blocks; see :data:`VIT_KEYS`) and DDRNet
    (:class:`cswap_nb.ddrnet.DualResNet`, dense or pruned: its spec holds the widths it
    was built with).
    """
    from torchvision.models.mobilenetv2 import MobileNetV2

    if isinstance(model, DualResNet):
        return describe_ddrnet(model)

    if isinstance(model, MobileNetV2):
        return _describe_mobilenet_v2(model)
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        VisionTransformer = ()
    if isinstance(model, VisionTransformer):
        return _describe_vit(model)
    try:
        from timm.models.resnet import Bottleneck as TimmBottleneck
        from timm.models.resnet import ResNet as TimmResNet
    except ImportError:  # pragma: no cover - timm is a dependency
        TimmResNet = TimmBottleneck = ()
    from torchvision.models.resnet import Bottleneck as TvBottleneck
    from torchvision.models.resnet import ResNet as TvResNet

    if isinstance(model, (TimmResNet, TvResNet)):
        dilated = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and max(m.dilation) > 1]
        if dilated:
            raise ValueError(f"describe: dilated ResNets (e.g. {dilated[0]}) are not supported; save "
                             "res.model.state_dict() and rebuild the model yourself")
    if isinstance(model, TimmResNet):
        if not isinstance(model.conv1, nn.Conv2d):
            raise ValueError("describe: only timm ResNets with a single-conv stem are supported")
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        bottleneck = isinstance(stages[0][0], TimmBottleneck)
        channels = [
            (s[0].conv3.out_channels // 4) if bottleneck else s[0].conv2.out_channels for s in stages
        ]
        spec = {"family": "timm.resnet", "block": "bottleneck" if bottleneck else "basic",
                "layers": [len(s) for s in stages], "channels": channels,
                "num_classes": model.fc.out_features, "in_chans": model.conv1.in_channels}
        if (model.conv1.kernel_size[0], model.conv1.stride[0]) != (7, 2):
            spec.update(stem_kernel=model.conv1.kernel_size[0], stem_stride=model.conv1.stride[0])
        pool = getattr(model.global_pool, "pool_type", "avg")
        if pool != "avg":
            spec["global_pool"] = pool
        if bottleneck:
            block = stages[0][0]
            cardinality = block.conv2.groups
            base_width = block.conv1.out_channels * 64 // (channels[0] * cardinality)
            if (cardinality, base_width) != (1, 64):
                spec.update(cardinality=cardinality, base_width=base_width)
        return spec
    if isinstance(model, TvResNet):
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        bottleneck = isinstance(stages[0][0], TvBottleneck)
        return {"family": "torchvision.resnet", "block": "bottleneck" if bottleneck else "basic",
                "layers": [len(s) for s in stages], "num_classes": model.fc.out_features,
                "groups": model.groups, "width_per_group": model.base_width}
    raise ValueError(
        f"cannot describe a {type(model).__name__} as a plain spec; supported: timm and torchvision "
        "ResNets, torchvision MobileNetV2, timm VisionTransformer, DDRNet. Save res.model.state_dict() yourself "
        "and rebuild the model in your code."
    )


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
    for module in model.modules():  # attention: heads follow the resized qkv
        qkv, head_dim = getattr(module, "qkv", None), getattr(module, "head_dim", None)
        if isinstance(qkv, nn.Linear) and isinstance(head_dim, int) and hasattr(module, "num_heads"):
            heads, rest = divmod(qkv.out_features, 3 * head_dim)
            if rest:
                raise ValueError(f"qkv has {qkv.out_features} outputs, not a multiple of 3 x head_dim ({head_dim})")
            module.num_heads = heads
            if hasattr(module, "attn_dim"):
                module.attn_dim = heads * head_dim
    return model
