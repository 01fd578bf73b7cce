"""Architecture builders and plain (pickle-free) architecture descriptions.

Models are the real library classes (timm's ``ResNet``, torchvision's ``ResNet``); an
architecture is described by a small JSON-able dict (a *spec*) so that checkpoints and
pruned models can be saved as state dicts and rebuilt without unpickling modules.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

Spec = dict[str, Any]


def build(spec: Spec) -> nn.Module:
    """Build a freshly initialised model from a spec produced by :func:`describe`."""
    family = spec.get("family")
    if family == "timm.resnet":
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet

        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[spec["block"]]
        return ResNet(
            block=block,
            layers=tuple(spec["layers"]),
            channels=tuple(spec["channels"]),
            num_classes=spec["num_classes"],
            in_chans=spec.get("in_chans", 3),
        )
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
    raise ValueError(f"unknown architecture family {family!r} in spec {spec}; known: timm.resnet, torchvision.resnet")


def resnet_digits(depth: int = 18, channels: tuple[int, ...] = (16, 32, 64, 128), num_classes: int = 10) -> nn.Module:
    """timm's ResNet at reduced stage widths (the shipped ``*-digits`` checkpoints)."""
    blocks = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
    block, layers = blocks[depth]
    return build({"family": "timm.resnet", "block": block, "layers": list(layers),
                  "channels": list(channels), "num_classes": num_classes})


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

    Supported: timm ``ResNet`` with the default 7x7 stem and torchvision ``ResNet``.
    """
    try:
        from timm.models.resnet import Bottleneck as TimmBottleneck
        from timm.models.resnet import ResNet as TimmResNet
    except ImportError:  # pragma: no cover - timm is a dependency
        TimmResNet = TimmBottleneck = ()
    from torchvision.models.resnet import Bottleneck as TvBottleneck
    from torchvision.models.resnet import ResNet as TvResNet

    if isinstance(model, TimmResNet):
        if not isinstance(model.conv1, nn.Conv2d):
            raise ValueError("describe: only timm ResNets with the default 7x7 stem are supported")
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        bottleneck = isinstance(stages[0][0], TimmBottleneck)
        channels = [
            (s[0].conv3.out_channels // 4) if bottleneck else s[0].conv2.out_channels for s in stages
        ]
        return {"family": "timm.resnet", "block": "bottleneck" if bottleneck else "basic",
                "layers": [len(s) for s in stages], "channels": channels,
                "num_classes": model.fc.out_features, "in_chans": model.conv1.in_channels}
    if isinstance(model, TvResNet):
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        bottleneck = isinstance(stages[0][0], TvBottleneck)
        return {"family": "torchvision.resnet", "block": "bottleneck" if bottleneck else "basic",
                "layers": [len(s) for s in stages], "num_classes": model.fc.out_features,
                "groups": model.groups, "width_per_group": model.base_width}
    raise ValueError(
        f"cannot describe a {type(model).__name__} as a plain spec; supported: timm and torchvision "
        "ResNets. Save res.model.state_dict() yourself and rebuild the model in your code."
    )


def shapes_of(model: nn.Module) -> dict[str, list[int]]:
    """Every parameter's and buffer's shape, by state-dict key."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def reshape_to(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """Resize conv/linear/norm layers in place so their tensors take the given shapes.

    Used to rebuild a pruned network from a description: the module tree comes from
    :func:`build`, the channel counts from ``shapes``. Weights are left uninitialised;
    load a state dict afterwards.
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
        else:
            continue
        for pname, p in list(module.named_parameters(recurse=False)):
            if prefix + pname in shapes:
                setattr(module, pname, nn.Parameter(torch.empty(shapes[prefix + pname], dtype=p.dtype),
                                                    requires_grad=p.requires_grad))
        for bname, b in list(module.named_buffers(recurse=False)):
            if b is not None and prefix + bname in shapes:
                module._buffers[bname] = torch.empty(shapes[prefix + bname], dtype=b.dtype)
    return model
