"""timm's and torchvision's ResNets: stem layers, residual blocks and head as parts; LRP through
zennit's ResNet canonizer (torchvision) or this package's :class:`TimmResNetCanonizer`."""
from __future__ import annotations

import torch
from torch import nn

from .base import Family, Part, Spec, module_part, register, stem_conv


def resnet_parts(model: nn.Module) -> list[Part] | None:
    """Stem layers (conv1, bn1, the activation, max-pool), every block of layer1-4, and the head."""
    stages = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if any(s is None or not isinstance(s, nn.Sequential) for s in stages):
        return None
    if not all(hasattr(model, a) for a in ("conv1", "bn1", "maxpool", "fc")):
        return None
    act = getattr(model, "act1", None) or getattr(model, "relu", None)
    if act is None:
        return None
    parts = [module_part(model, model.conv1, "conv1"), module_part(model, model.bn1, "bn1"), module_part(model, act),
             module_part(model, model.maxpool, "maxpool")]
    for s in stages:
        parts.extend(module_part(model, b) for b in s)
    if hasattr(model, "forward_head"):  # timm
        parts.append(("head", model.forward_head, ["global_pool", "fc", "head_drop"]))
    elif hasattr(model, "avgpool"):  # torchvision
        parts.append(("head", lambda x: model.fc(torch.flatten(model.avgpool(x), 1)), ["avgpool", "fc"]))
    else:
        return None
    return parts


def _refuse_dilation(model: nn.Module) -> None:
    dilated = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and max(m.dilation) > 1]
    if dilated:
        raise ValueError(f"describe: dilated ResNets (e.g. {dilated[0]}) are not supported; save it with "
                         "res.save(path) and reload it with cs.load_pruned(path, model=<a fresh instance>)")


class _ResNets(Family):
    """What timm's and torchvision's ResNets share: the split into parts."""

    def parts(self, model: nn.Module) -> list[Part] | None:
        return resnet_parts(model)


@register
class TimmResNet(_ResNets):
    name = "timm.resnet"
    spec_families = ("timm.resnet",)

    def matches(self, model: nn.Module) -> bool:
        from timm.models.resnet import ResNet

        return isinstance(model, ResNet)

    def build(self, spec: Spec) -> nn.Module:
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet

        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[spec["block"]]
        model = ResNet(block=block, layers=tuple(spec["layers"]), channels=tuple(spec["channels"]),
                       num_classes=spec["num_classes"], in_chans=spec.get("in_chans", 3),
                       global_pool=spec.get("global_pool", "avg"), cardinality=spec.get("cardinality", 1),
                       base_width=spec.get("base_width", 64))
        model.conv1 = stem_conv(model.conv1, spec.get("stem_kernel", 7), spec.get("stem_stride", 2))
        return model

    def describe(self, model: nn.Module) -> Spec:
        from timm.models.resnet import Bottleneck

        _refuse_dilation(model)
        if not isinstance(model.conv1, nn.Conv2d):
            raise ValueError("describe: only timm ResNets with a single-conv stem are supported")
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        bottleneck = isinstance(stages[0][0], Bottleneck)
        channels = [(s[0].conv3.out_channels // 4) if bottleneck else s[0].conv2.out_channels for s in stages]
        spec = {"family": self.name, "block": "bottleneck" if bottleneck else "basic",
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

    def lrp_canonizers(self, model: nn.Module) -> list:
        blocks = [m for m in model.modules() if type(m).__name__ in ("BasicBlock", "Bottleneck")]
        for b in blocks:
            extras = [getattr(b, a, None) for a in ("drop_block", "aa", "se", "drop_path")]
            if any(e is not None and not isinstance(e, nn.Identity) for e in extras):
                raise ValueError("lrp: timm ResNet blocks with drop-block, anti-aliasing, SE or drop-path are not "
                                 "supported by TimmResNetCanonizer")
        return [TimmResNetCanonizer()]


@register
class TorchvisionResNet(_ResNets):
    name = "torchvision.resnet"
    spec_families = ("torchvision.resnet",)

    def matches(self, model: nn.Module) -> bool:
        from torchvision.models.resnet import ResNet

        return isinstance(model, ResNet)

    def build(self, spec: Spec) -> nn.Module:
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[spec["block"]]
        return ResNet(block, list(spec["layers"]), num_classes=spec["num_classes"], groups=spec.get("groups", 1),
                      width_per_group=spec.get("width_per_group", 64))

    def describe(self, model: nn.Module) -> Spec:
        from torchvision.models.resnet import Bottleneck

        _refuse_dilation(model)
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        return {"family": self.name, "block": "bottleneck" if isinstance(stages[0][0], Bottleneck) else "basic",
                "layers": [len(s) for s in stages], "num_classes": model.fc.out_features,
                "groups": model.groups, "width_per_group": model.base_width}

    def lrp_canonizers(self, model: nn.Module) -> list:
        from zennit.torchvision import ResNetCanonizer

        return [ResNetCanonizer()]


class TimmResNetCanonizer:
    """Makes timm's BasicBlock/Bottleneck residual sum visible to zennit's LRP rules.

    Built on zennit's ``AttributeCanonizer``: each block's ``forward`` is replaced by one
    that adds the shortcut through a ``zennit.layer.Sum`` module (so the sum rule splits
    relevance proportionally), plus BatchNorm merging into the preceding convolution.
    """

    def __new__(cls):
        from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm
        from zennit.layer import Sum

        def forward(self, x):
            shortcut = x
            out = self.conv1(x)
            out = self.bn1(out)
            out = self.act1(out)
            if hasattr(self, "conv3"):
                out = self.conv2(out)
                out = self.bn2(out)
                out = self.act2(out)
                out = self.conv3(out)
                out = self.bn3(out)
                last_act = self.act3
            else:
                out = self.conv2(out)
                out = self.bn2(out)
                last_act = self.act2
            if self.downsample is not None:
                shortcut = self.downsample(shortcut)
            out = self.canonizer_sum(torch.stack([shortcut, out], dim=-1))
            return last_act(out)

        def attribute_map(name, module):
            from timm.models.resnet import BasicBlock, Bottleneck

            if isinstance(module, (BasicBlock, Bottleneck)):
                return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
            return None

        return CompositeCanonizer((SequentialMergeBatchNorm(), AttributeCanonizer(attribute_map)))
