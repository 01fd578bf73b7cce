"""DDRNet-23-slim and DDRNet-23: deep dual-resolution networks for semantic segmentation.

Hong, Pan, Sun, Jia, "Deep Dual-resolution Networks for Real-time and Accurate Semantic
Segmentation of Road Scenes" (2021). The module tree and state-dict keys follow the
authors' ``DualResNet`` (``DDRNet_23_slim.py`` / ``DDRNet_23.py``), so their published
Cityscapes checkpoints load into :func:`ddrnet23_slim` and :func:`ddrnet23` unchanged
(``tests/data/ddrnet_state_dicts.json`` is the contract).

The network, with ``P = planes`` (32 for 23-slim, 64 for 23)::

    stem conv1 (two 3x3 stride-2 convs, /4) -> layer1 (P) -> layer2 (2P, /8)
        low-resolution trunk : layer3 (4P, /16) -> layer4 (8P, /32) -> layer5 (Bottleneck, 16P, /64)
                               -> DAPPM spp (4P) -> upsampled to /8
        high-resolution trunk: layer3_ (2P, /8) -> layer4_ (2P) -> layer5_ (Bottleneck, 4P)
        bilateral fusions after stages 3 and 4: low += down(high); high += up(compression(low))
    final_layer (segmentation head) on (high + up(spp)) -> logits at output stride 8

Each stage's last block has no ReLU (``no_relu``); the ReLU is applied by the next consumer,
as in the official forward. Every ReLU here is out of place: several tensors are read
twice (the stage-2 output feeds both trunks), and the pruning toolkit hooks BN outputs.

Units for C-SWAP (cswap_nb/METHOD.md §4), as :func:`cswap_nb.core.units.find_unit_layers` finds
them: ``internal`` ones are the first conv of each BasicBlock, conv1/conv2 of the two
Bottlenecks, the stem's first conv, ``down4.0``, the last DAPPM branch (``spp.process4.2``)
and the head's ``conv1``; ``coupled`` ones are the residual streams (stem + layer1, the
high-resolution trunk from layer2 to layer5_, layer3 + down3, layer4 + down4, layer5),
the DAPPM branch pairs joined by its hierarchical sums, and the final fusion
(layer5_ + spp). The classifier ``final_layer.conv2`` is never a unit.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from os import PathLike
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Published widths of each variant: planes (stem/layer1 channels), DAPPM branch width, head width.
VARIANTS: dict[str, dict[str, int]] = {
    "23-slim": {"planes": 32, "spp_planes": 128, "head_planes": 64},
    "23": {"planes": 64, "spp_planes": 128, "head_planes": 128},
}
OUTPUT_STRIDE = 8
# checkpoint key prefixes stripped before loading (DataParallel's ``module.``, the official
# training wrapper's ``model.``) and top-level entries that are clearly not the model's
# (the official wrapper also saves its loss: ``loss.criterion.weight``)
STRIP_PREFIXES = ("module.", "model.")
IGNORED_PREFIXES = ("loss.",)


def _up(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def check_input(x: Tensor) -> None:
    """DDRNet's input check (a leaf of the torch.fx graph: it reads shapes as numbers)."""
    if x.ndim != 4:
        raise ValueError(f"DDRNet expects (N, C, H, W) inputs, got shape {tuple(x.shape)}")
    h, w = x.shape[-2], x.shape[-1]
    if h % OUTPUT_STRIDE or w % OUTPUT_STRIDE:
        raise ValueError(f"DDRNet expects H and W to be multiples of {OUTPUT_STRIDE}, got "
                         f"shape {tuple(x.shape)}; pad or resize the input (e.g. to "
                         f"{-(-h // OUTPUT_STRIDE) * OUTPUT_STRIDE}x{-(-w // OUTPUT_STRIDE) * OUTPUT_STRIDE})")


torch.fx.wrap("check_input")


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual sum; ``no_relu`` leaves the sum un-activated."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 no_relu: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out = out + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else self.relu(out)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 conv-BN layers (output ``planes * 2``) with a residual sum; no final ReLU."""

    expansion = 2

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 no_relu: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else self.relu(out)


def _make_layer(block: type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """``blocks`` blocks; a 1x1 conv-BN shortcut on the first when the shape changes; the last has no ReLU."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample)]  # a Bottleneck keeps its default no_relu=True
    inplanes = planes * block.expansion
    for i in range(1, blocks):
        layers.append(block(inplanes, planes, no_relu=(i == blocks - 1)))
    return nn.Sequential(*layers)


def _pre_act(cin: int, cout: int, kernel: int, pool: nn.Module | None = None) -> nn.Sequential:
    """[pool ->] BN -> ReLU -> conv (no bias), the pre-activation branch of DAPPM."""
    parts = ([pool] if pool is not None else []) + [
        nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)]
    return nn.Sequential(*parts)


class DAPPM(nn.Module):
    """Deep Aggregation Pyramid Pooling Module.

    Five branches see the input at full size (``scale0``), average-pooled by 2, 4, 8
    (``scale1..3``) and globally (``scale4``); each pooled branch is upsampled and added to
    the previous branch's output before its 3x3 ``process`` conv (hierarchical fusion). The
    five ``branch_planes`` maps are concatenated, compressed by a 1x1 conv and added to a
    1x1 shortcut. (N, inplanes, h, w) -> (N, outplanes, h, w).
    """

    def __init__(self, inplanes: int, branch_planes: int, outplanes: int):
        super().__init__()
        self.scale1 = _pre_act(inplanes, branch_planes, 1, nn.AvgPool2d(5, stride=2, padding=2))
        self.scale2 = _pre_act(inplanes, branch_planes, 1, nn.AvgPool2d(9, stride=4, padding=4))
        self.scale3 = _pre_act(inplanes, branch_planes, 1, nn.AvgPool2d(17, stride=8, padding=8))
        self.scale4 = _pre_act(inplanes, branch_planes, 1, nn.AdaptiveAvgPool2d((1, 1)))
        self.scale0 = _pre_act(inplanes, branch_planes, 1)
        self.process1 = _pre_act(branch_planes, branch_planes, 3)
        self.process2 = _pre_act(branch_planes, branch_planes, 3)
        self.process3 = _pre_act(branch_planes, branch_planes, 3)
        self.process4 = _pre_act(branch_planes, branch_planes, 3)
        self.compression = _pre_act(branch_planes * 5, outplanes, 1)
        self.shortcut = _pre_act(inplanes, outplanes, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = (x.shape[-2], x.shape[-1])
        branches = [self.scale0(x)]
        pooled = (self.scale1, self.scale2, self.scale3, self.scale4)
        process = (self.process1, self.process2, self.process3, self.process4)
        for scale, proc in zip(pooled, process):
            branches.append(proc(_up(scale(x), size) + branches[-1]))
        return self.compression(torch.cat(branches, 1)) + self.shortcut(x)


class SegmentHead(nn.Module):
    """BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1 conv (with bias) to class logits, same resolution.

    The authors call it ``segmenthead``; the attribute names match theirs.
    """

    def __init__(self, inplanes: int, interplanes: int, num_classes: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, interplanes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(interplanes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(interplanes, num_classes, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.relu(self.bn1(x)))
        return self.conv2(self.relu(self.bn2(x)))


class DualResNet(nn.Module):
    """DDRNet-23(-slim): two BasicBlocks per stage, a Bottleneck stage 5 on both trunks, DAPPM, head.

    ``variant`` is ``"23-slim"`` or ``"23"`` (a name only: the widths come from ``planes``,
    ``spp_planes`` and ``head_planes``). ``aux=True`` adds the authors' auxiliary head
    ``seghead_extra`` on the high-resolution trunk after stage 3.

    Input (N, 3, H, W) with H and W multiples of 8; output (N, num_classes, H/8, W/8)
    logits (no final upsampling). With ``aux=True`` a model in training mode returns
    ``[main, aux]`` (both (N, num_classes, H/8, W/8)), as the official code does, for a deep
    supervision loss; in eval mode it returns only the main logits tensor, so inference
    code and the pruning toolkit (which traces in eval mode) see one tensor.
    :meth:`forward_all` returns every head in any mode; :mod:`cswap_nb.core.units` traces the
    model through it, so pruning the high-resolution trunk (``scope="all"``) resizes the
    aux head's input as well, and :meth:`auxiliary_heads` keeps the aux head's own channels
    out of the units. A model whose aux head was left at the wrong width by other pruning
    code raises a clear ValueError in training mode; :func:`strip_aux` drops the head.
    """

    def __init__(self, num_classes: int = 19, planes: int = 64, spp_planes: int = 128, head_planes: int = 128,
                 aux: bool = False, variant: str = "23"):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("planes", planes), ("spp_planes", spp_planes),
                            ("head_planes", head_planes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        self.variant, self.num_classes, self.aux = variant, num_classes, bool(aux)
        self.planes, self.spp_planes, self.head_planes = planes, spp_planes, head_planes
        high = planes * 2  # high-resolution trunk width
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, planes, 3, stride=2, padding=1), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, planes, 3, stride=2, padding=1), nn.BatchNorm2d(planes), nn.ReLU(),
        )
        self.layer1 = _make_layer(BasicBlock, planes, planes, 2)
        self.layer2 = _make_layer(BasicBlock, planes, planes * 2, 2, stride=2)
        self.layer3 = _make_layer(BasicBlock, planes * 2, planes * 4, 2, stride=2)
        self.layer4 = _make_layer(BasicBlock, planes * 4, planes * 8, 2, stride=2)
        self.compression3 = nn.Sequential(*_conv_bn(planes * 4, high, 1))
        self.compression4 = nn.Sequential(*_conv_bn(planes * 8, high, 1))
        self.down3 = nn.Sequential(*_conv_bn(high, planes * 4, 3, stride=2))
        self.down4 = nn.Sequential(*_conv_bn(high, planes * 4, 3, stride=2), nn.ReLU(),
                                   *_conv_bn(planes * 4, planes * 8, 3, stride=2))
        self.layer3_ = _make_layer(BasicBlock, planes * 2, high, 2)
        self.layer4_ = _make_layer(BasicBlock, high, high, 2)
        self.layer5_ = _make_layer(Bottleneck, high, high, 1)
        self.layer5 = _make_layer(Bottleneck, planes * 8, planes * 8, 1, stride=2)
        self.spp = DAPPM(planes * 16, spp_planes, planes * 4)
        if self.aux:
            self.seghead_extra = SegmentHead(high, head_planes, num_classes)
        self.final_layer = SegmentHead(planes * 4, head_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def spec(self) -> dict[str, Any]:
        """The plain description :func:`cswap_nb.models.build` rebuilds this module tree from."""
        return {"family": "ddrnet", "variant": self.variant, "num_classes": self.num_classes, "aux": self.aux,
                "planes": self.planes, "spp_planes": self.spp_planes, "head_planes": self.head_planes}

    def describe_build(self) -> str:
        """A one-line description of what was built, for error messages."""
        return (f"DDRNet-{self.variant} (planes={self.planes}, spp_planes={self.spp_planes}, "
                f"head_planes={self.head_planes}, num_classes={self.num_classes}, aux={self.aux})")

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        outputs = self._forward(x, with_aux=self.aux and self.training)
        return outputs if len(outputs) > 1 else outputs[0]

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """Every head's logits in any mode: ``[main]``, or ``[main, aux]`` with ``aux=True``."""
        return self._forward(x, with_aux=self.aux)

    def auxiliary_heads(self) -> list[nn.Module]:
        """Heads outside the eval-mode output (``[seghead_extra]`` with ``aux=True``): never pruning units."""
        return [self.seghead_extra] if self.aux else []

    def sequential_parts(self) -> list[tuple[str, Callable, list[str]]]:
        """The forward pass (main head) as a chain of parts ``(name, fn, module prefixes inside)``.

        Each part maps the previous part's state to the next: the stem returns
        ``(features, size)``, stages 3 and 4 carry ``(low, high, size)`` (both trunks after
        their fusion), the head returns the main logits. :meth:`forward` runs this chain
        itself, and the prefix-caching engine of :mod:`cswap_nb.engines.passes` caches the state
        before the part it analyses.
        """

        def stem(x: Tensor):
            check_input(x)
            return self.conv1(x), (x.shape[-2] // OUTPUT_STRIDE, x.shape[-1] // OUTPUT_STRIDE)

        def block(module: nn.Module, relu_first: bool):
            def fn(state):
                t, size = state
                return module(F.relu(t) if relu_first else t), size
            return fn

        def stage3(state):
            x2, size = state
            return (*self._fuse(x2, x2, self.layer3, self.layer3_, self.down3, self.compression3, size), size)

        def stage4(state):
            low, high, size = state
            return (*self._fuse(low, high, self.layer4, self.layer4_, self.down4, self.compression4, size), size)

        def high5(state):
            low, high, size = state
            return low, self.layer5_(F.relu(high)), size

        def low5(state):
            low, high, size = state
            return _up(self.spp(self.layer5(F.relu(low))), size), high, size

        def head(state):
            low, high, _ = state
            return self.final_layer(low + high)

        return [("conv1", stem, ["conv1"]),
                ("layer1.0", block(self.layer1[0], False), ["layer1.0"]),
                *[(f"layer1.{i}", block(b, False), [f"layer1.{i}"]) for i, b in enumerate(self.layer1) if i > 0],
                ("layer2.0", block(self.layer2[0], True), ["layer2.0"]),
                *[(f"layer2.{i}", block(b, False), [f"layer2.{i}"]) for i, b in enumerate(self.layer2) if i > 0],
                ("stage3", stage3, ["layer3", "layer3_", "down3", "compression3"]),
                ("stage4", stage4, ["layer4", "layer4_", "down4", "compression4"]),
                ("layer5_", high5, ["layer5_"]),
                ("layer5+spp", low5, ["layer5", "spp"]),
                ("head", head, ["final_layer"])]

    @staticmethod
    def _fuse(low: Tensor, high: Tensor, layer: nn.Module, layer_: nn.Module, down: nn.Module,
              compression: nn.Module, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """One stage of both trunks and the bilateral fusion: low += down(high), high += up(compression(low))."""
        x = layer(F.relu(low))
        high = layer_(F.relu(high))
        return x + down(F.relu(high)), high + _up(compression(F.relu(x)), size)

    def _forward(self, x: Tensor, with_aux: bool) -> list[Tensor]:
        state, aux_in = x, None
        for name, fn, _ in self.sequential_parts():  # the one definition of the forward pass
            state = fn(state)
            if name == "stage3":
                aux_in = state[1]  # the high-resolution trunk after the first fusion
        out = state
        if not with_aux:
            return [out]
        head = self.seghead_extra
        if head.bn1.num_features != aux_in.shape[1]:
            raise ValueError(
                f"the aux head takes {head.bn1.num_features} channels but the high-resolution trunk now has "
                f"{aux_in.shape[1]}: the trunk was pruned by code that did not trace the aux head (cswap_nb "
                "traces forward_all and resizes it). Call cswap_nb.models.ddrnet.strip_aux(model) to drop it, or "
                "set model.aux = False to train without the aux loss")
        return [out, head(aux_in)]


def strip_aux(model: DualResNet) -> DualResNet:
    """Remove the auxiliary head in place (``aux=False``); the main output is unchanged. Returns ``model``."""
    if getattr(model, "aux", False):
        del model.seghead_extra
        model.aux = False
    return model


def _published(variant: str, width: int | None) -> dict[str, int]:
    base = VARIANTS[variant]
    if width is None:
        return dict(base)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be None (the published planes={base['planes']}) or a positive int, "
                         f"got {width!r}")
    scale = width / base["planes"]
    return {"planes": width, "spp_planes": max(1, round(base["spp_planes"] * scale)),
            "head_planes": max(1, round(base["head_planes"] * scale))}


def _build(variant: str, num_classes: int, aux: bool, width: int | None,
           weights: str | PathLike | Mapping | None) -> DualResNet:
    model = DualResNet(num_classes=num_classes, aux=aux, variant=variant, **_published(variant, width))
    if weights is not None:
        load_weights(model, weights)
    return model


def ddrnet23_slim(num_classes: int = 19, aux: bool = False, width: int | None = None,
                  weights: str | PathLike | Mapping | None = None) -> DualResNet:
    """DDRNet-23-slim (5.7 M parameters at the published width, 19 classes).

    ``width`` sets ``planes`` (published: 32); the DAPPM width (128) and head width (64)
    scale in proportion. ``weights``: a checkpoint path or a loaded dict (see
    :func:`load_weights`), e.g. the authors' Cityscapes checkpoint with ``aux=True``.
    """
    return _build("23-slim", num_classes, aux, width, weights)


def ddrnet23(num_classes: int = 19, aux: bool = False, width: int | None = None,
             weights: str | PathLike | Mapping | None = None) -> DualResNet:
    """DDRNet-23 (20.1 M parameters at the published width, 19 classes).

    ``width`` sets ``planes`` (published: 64); the DAPPM width (128) and head width (128)
    scale in proportion. ``weights`` as in :func:`ddrnet23_slim`.
    """
    return _build("23", num_classes, aux, width, weights)


def _unwrap(blob: Any, source: str) -> dict[str, Tensor]:
    """The state dict inside a checkpoint: bare, or under ``"state_dict"`` / ``"model"``."""
    for _ in range(3):
        if not isinstance(blob, Mapping):
            break
        inner = next((blob[k] for k in ("state_dict", "model") if isinstance(blob.get(k), Mapping)), None)
        if inner is None:
            break
        blob = inner
    if not isinstance(blob, Mapping) or not all(isinstance(v, Tensor) for v in blob.values()):
        raise ValueError(f"{source} holds no state dict (expected a dict of tensors, possibly under 'state_dict' "
                         f"or 'model'); got {type(blob).__name__}")
    state = {}
    for key, value in blob.items():
        changed = True
        while changed:
            changed = False
            for prefix in STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        if not key.startswith(IGNORED_PREFIXES):
            state[key] = value
    return state


def _mismatch_message(model: DualResNet, state: dict[str, Tensor], source: str) -> str | None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return None

    def first(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

    lines = [f"{source} does not match the model built, {model.describe_build()}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {first(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {first(unexpected)}")
    if shapes:
        detail = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)} here" for k in shapes]
        lines.append(f"  shape mismatches ({len(shapes)}): {first(detail)}")
    aux_only = all(k.startswith("seghead_extra.") for k in missing + unexpected + shapes)
    if aux_only and unexpected and not missing:
        lines.append("  -> the checkpoint has the auxiliary head: build with aux=True (then strip_aux() if unwanted)")
    elif aux_only and missing and not unexpected:
        lines.append("  -> the checkpoint has no auxiliary head: build with aux=False")
    cls = state.get("final_layer.conv2.weight")
    if cls is not None and cls.shape[0] != model.num_classes:
        lines.append(f"  -> the checkpoint predicts {cls.shape[0]} classes: build with num_classes={cls.shape[0]}")
    stem = state.get("conv1.0.weight")
    if stem is not None and stem.shape[0] != model.planes:
        hint = {32: "ddrnet23_slim()", 64: "ddrnet23()"}.get(stem.shape[0], f"width={stem.shape[0]}")
        lines.append(f"  -> the checkpoint has planes={stem.shape[0]}: build {hint}")
    return "\n".join(lines)


def load_weights(model: DualResNet, weights: str | PathLike | Mapping) -> DualResNet:
    """Load a checkpoint into ``model`` strictly; returns ``model``.

    ``weights`` is a path (read with ``torch.load(weights_only=True, map_location="cpu")``)
    or an already-loaded dict: a bare state dict, or one under ``"state_dict"`` or
    ``"model"``. Key prefixes ``module.`` (DataParallel) and ``model.`` (the authors'
    training wrapper) are stripped, and ``loss.*`` entries (the wrapper's loss weights) are
    ignored. Any other difference -- missing or unexpected keys, other shapes -- raises a
    ValueError naming the first offending keys, what was built, and the likely fix.
    """
    if isinstance(weights, Mapping):
        source, blob = "the given state dict", weights
    else:
        source = f"checkpoint {str(weights)!r}"
        blob = torch.load(weights, map_location="cpu", weights_only=True)
    state = _unwrap(blob, source)
    message = _mismatch_message(model, state, source)
    if message:
        raise ValueError(message)
    model.load_state_dict(state, strict=True)
    return model


def _shape_free(model: nn.Module) -> str:
    """The module tree as text with channel counts left out (kernel sizes, strides, eps... stay)."""
    text = re.sub(r"Conv2d\(\d+, \d+,", "Conv2d(C, C,", repr(model))
    return re.sub(r"BatchNorm2d\(\d+,", "BatchNorm2d(C,", text)


def describe_ddrnet(model: DualResNet) -> dict[str, Any]:
    """Spec of a :class:`DualResNet`, dense or pruned (the widths recorded at construction).

    A pruned model keeps its spec: :func:`cswap_nb.models.reshape_to` takes the channel
    counts from its state-dict shapes. Raises ValueError if the module tree is not the one
    the spec builds (e.g. a layer was swapped after construction).
    """
    spec = model.spec()
    with torch.device("meta"):
        rebuilt = build_ddrnet(spec)
    if list(rebuilt.state_dict()) != list(model.state_dict()) or _shape_free(rebuilt) != _shape_free(model):
        raise ValueError(f"describe: this DualResNet's modules differ from those of {model.describe_build()} (a "
                         "layer was replaced or added after construction); save its state_dict yourself")
    return spec


SPEC_KEYS = ("variant", "num_classes", "aux", "planes", "spp_planes", "head_planes")


def build_ddrnet(spec: Mapping[str, Any]) -> DualResNet:
    """A freshly initialised :class:`DualResNet` from a ``{"family": "ddrnet", ...}`` spec."""
    unknown = sorted(set(spec) - {"family", *SPEC_KEYS})
    if unknown:
        raise ValueError(f"ddrnet spec has unknown key(s) {unknown}; known: {list(SPEC_KEYS)}")
    variant = spec.get("variant", "23")
    widths = {**VARIANTS.get(variant, {}), **{k: spec[k] for k in ("planes", "spp_planes", "head_planes") if k in spec}}
    return DualResNet(num_classes=spec.get("num_classes", 19), aux=spec.get("aux", False), variant=variant, **widths)


BRANCHES = ("stem (shared)", "low-resolution branch", "high-resolution branch", "DAPPM", "head")


def branch_of(name: str) -> str:
    """Which part of DDRNet a module (or unit layer) named ``name`` belongs to (one of :data:`BRANCHES`).

    A coupled unit layer is named after its first producer, so a residual stream that
    runs through several stages is reported where it starts.
    """
    top = name.split(".", 1)[0]
    if top in ("conv1", "layer1", "layer2"):
        return BRANCHES[0]
    if top in ("layer3", "layer4", "layer5", "down3", "down4"):
        return BRANCHES[1]
    if top in ("layer3_", "layer4_", "layer5_", "compression3", "compression4"):
        return BRANCHES[2]
    if top == "spp":
        return BRANCHES[3]
    if top in ("final_layer", "seghead_extra"):
        return BRANCHES[4]
    raise ValueError(f"{name!r} is not a DDRNet module name")
