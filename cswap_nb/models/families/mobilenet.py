"""torchvision's MobileNetV2: feature blocks and head as parts, the expanded channels of the inverted
residuals as its internal units, ``width_mult`` (and a small-input stem) in its spec."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Family, Part, Spec, module_part, register, same_tree, stem_conv

# the default inverted-residual setting: (expansion, channels, blocks, stride)
_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


@register
class MobileNetV2(Family):
    name = "torchvision.mobilenet_v2"
    spec_families = ("torchvision.mobilenet_v2",)

    def matches(self, model: nn.Module) -> bool:
        from torchvision.models.mobilenetv2 import MobileNetV2 as TvMobileNetV2

        return isinstance(model, TvMobileNetV2)

    def parts(self, model: nn.Module) -> list[Part]:
        def head(x: Tensor) -> Tensor:
            x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
            return model.classifier(torch.flatten(x, 1))

        return [module_part(model, b) for b in model.features] + [("head", head, ["classifier"])]

    def internal_units(self, model: nn.Module) -> set[str]:
        """The expand 1x1 convs of the inverted residuals (expand, depthwise, project, BN)."""
        from torchvision.models.mobilenetv2 import InvertedResidual

        return {f"{name}.conv.0.0" for name, block in model.named_modules()
                if isinstance(block, InvertedResidual) and len(block.conv) == 4}

    def build(self, spec: Spec) -> nn.Module:
        from torchvision.models import MobileNetV2 as TvMobileNetV2

        model = TvMobileNetV2(num_classes=spec["num_classes"], width_mult=spec.get("width_mult", 1.0),
                              dropout=spec.get("dropout", 0.2))
        model.features[0][0] = stem_conv(model.features[0][0], 3, spec.get("stem_stride", 2), spec.get("in_chans", 3))
        return model

    def describe(self, model: nn.Module) -> Spec:
        """The spec of a MobileNetV2 with the default block setting; ``width_mult`` is recovered from
        the channel counts (the first of the usual values, then a 0.01 grid, that reproduces them)."""
        from torchvision.models.mobilenetv2 import _make_divisible

        base = [32] + [c for _, c, n, _ in _SETTING for _ in range(n)]
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
            spec = {"family": self.name, "width_mult": w, "num_classes": linear.out_features,
                    "dropout": float(model.classifier[0].p)}
            stem = blocks[0][0]
            if stem.stride[0] != 2:
                spec["stem_stride"] = stem.stride[0]
            if stem.in_channels != 3:
                spec["in_chans"] = stem.in_channels
            if same_tree(spec, model):
                return spec
        if matched:
            raise ValueError("describe: this MobileNetV2 uses a block, norm layer or setting other than torchvision's "
                             "defaults (only num_classes, width_mult and dropout are described)")
        raise ValueError("describe: this MobileNetV2's channel counts match no width_mult of the default setting")
