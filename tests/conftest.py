"""Shared fixtures for the cswap_nb test suite.

Everything runs offline on the CPU with random or shipped weights. Torch is pinned to one
intra-op thread (here and, through OMP_NUM_THREADS, in subprocesses): on a small shared
machine, two spinning OpenMP threads make a ResNet-50 forward pass 10-50x slower.
"""
from __future__ import annotations

import copy
import functools
import os

# Subprocesses (the CLI tests) inherit this: with two OpenMP threads on a busy two-core
# machine the demo run takes minutes instead of seconds.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import cswap_nb as cs  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn digits upsampled to 3x32x32 (1,437 train / 360 test)."""
    return cs.data.load_digits()


@functools.lru_cache(maxsize=None)
def _zoo_once(name: str):
    return cs.zoo.load(name)


@pytest.fixture(scope="session")
def zoo_load():
    """Factory: ``cs.zoo.load(name)`` read once per test session (checkpoint, sha256 check and data set).
    Each call returns its own copy of the model, so a test may prune it; the data set is shared, and
    tests must not modify it."""
    def load(name: str):
        model, data = _zoo_once(name)
        return copy.deepcopy(model), data
    return load


@pytest.fixture(scope="session")
def zoo_model(zoo_load):
    """The shipped ``resnet18-digits`` checkpoint (eval mode). Tests must not modify it."""
    return zoo_load("resnet18-digits")[0]


def _tiny_resnet(channels=(4, 8, 8, 8), num_classes: int = 4, seed: int = 0, depth: int = 18) -> nn.Module:
    torch.manual_seed(seed)
    return cs.models.resnet_digits(depth=depth, channels=tuple(channels), num_classes=num_classes).eval()


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters for every BatchNorm.

    A non-zero shift (``bias - mean * weight / std``) in every channel makes a mask applied
    at the conv (before its BN) observably different from removing the channel.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.6 + 0.4)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def _own_label_data(model: nn.Module, n: int = 96, shape=(3, 32, 32), seed: int = 0, min_per_class: int = 3):
    """Random inputs labelled with the model's own predictions (so every sample is "correct").

    Classes predicted fewer than ``min_per_class`` times are dropped.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    classes = [c for c in y.unique().tolist() if int((y == c).sum()) >= min_per_class]
    assert classes, "the random model predicts no class often enough"
    keep = torch.isin(y, torch.tensor(classes))
    return x[keep].contiguous(), y[keep].contiguous()


@pytest.fixture
def tiny_resnet():
    """Factory: a small timm ResNet (seeded random weights, eval mode)."""
    return _tiny_resnet


@pytest.fixture
def randomize_bn():
    """Function: randomize every BatchNorm's statistics and affine parameters in place."""
    return _randomize_bn


@pytest.fixture
def own_label_data():
    """Factory: ``(x, y)`` of random inputs labelled by the model's own argmax."""
    return _own_label_data


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def hook_counts(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {
        name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
               len(getattr(m, "_forward_hooks_with_kwargs", {})))
        for name, m in model.named_modules()
    }


@pytest.fixture
def model_fingerprint():
    """Function: everything about a model that :func:`cswap_nb.prune` must leave alone."""

    def fingerprint(model: nn.Module) -> dict:
        return {
            "state": state_snapshot(model),
            "hooks": hook_counts(model),
            "training": {name: m.training for name, m in model.named_modules()},
            "shapes": {k: tuple(v.shape) for k, v in model.state_dict().items()},
        }

    return fingerprint


@pytest.fixture
def assert_same_fingerprint():
    def check(before: dict, after: dict) -> None:
        assert before["shapes"] == after["shapes"]
        assert before["hooks"] == after["hooks"]
        assert before["training"] == after["training"]
        assert before["state"].keys() == after["state"].keys()
        changed = [k for k in before["state"] if not torch.equal(before["state"][k], after["state"][k])]
        assert not changed, f"tensors of the caller's model were modified: {changed[:5]}"

    return check
