"""Training from scratch on in-memory splits (the shipped checkpoints' recipes, and notebooks' toy models)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..core.causal import upsample_logits
from ..data.labels import IGNORE_INDEX
from ..data import Split, load_digits
from ..models import mlp

OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class Recipe:
    """One-cycle schedule peaking at ``lr``, random shifts of image inputs, and an optimizer:

    ``"sgd"`` (default): SGD with Nesterov momentum ``momentum``, L2 ``weight_decay``;
    ``"adamw"``: AdamW (decoupled ``weight_decay``; ``momentum`` unused), for transformers.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    shift: int = 3  # random translation in pixels (zero padding); 0 for non-image inputs
    seed: int = 0
    optimizer: str = "sgd"
    hflip: bool = False  # random horizontal flips (of images and label masks alike)
    aux_weight: float = 0.4  # weight of an auxiliary head's loss (models returning [main, aux] in training)

    # Fields added after the first checkpoints were shipped: recorded in a checkpoint only
    # when they differ from their default, so retraining an older entry gives the same file.
    _LATER_FIELDS: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "hflip": False, "aux_weight": 0.4}

    def as_dict(self) -> dict[str, Any]:
        """The recipe as written into a checkpoint (later fields only when not at their default)."""
        d = asdict(self)
        for name, default in self._LATER_FIELDS.items():
            if d.get(name) == default:
                d.pop(name)
        return d

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        """The optimizer this recipe names, over ``params``."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=True,
                                   weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        raise ValueError(f"Recipe.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")


def shift_batch(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translations by up to ``shift`` pixels, filling with the background value."""
    if shift == 0:
        return x
    n, _, h, w = x.shape
    background = float(x.min())
    padded = F.pad(x, (shift, shift, shift, shift), value=background)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def task_loss(output, y: torch.Tensor, aux_weight: float = 0.4) -> torch.Tensor:
    """Mean cross-entropy for class labels (N,) or label masks (N, H, W).

    Dense logits are upsampled bilinearly (``align_corners=False``) to the mask size and
    label 255 is ignored. A list ``[main, aux, ...]`` (a segmentation model's auxiliary
    heads in training mode) adds ``aux_weight`` times each extra head's loss.
    """
    if isinstance(output, (list, tuple)):
        main, *extra = output
        return task_loss(main, y) + sum(aux_weight * task_loss(o, y) for o in extra)
    if output.ndim == 4 and y.ndim == 3:
        return F.cross_entropy(upsample_logits(output, y.shape[-2:]), y, ignore_index=IGNORE_INDEX)
    return F.cross_entropy(output, y)


def fit(model: nn.Module, train: Split, recipe: Recipe = Recipe(), desc: str = "train", progress: bool = True) -> nn.Module:
    """Train ``model`` in place on ``train`` with ``recipe``; returns it in eval mode."""
    from tqdm.auto import tqdm

    r = recipe
    gen = torch.Generator().manual_seed(r.seed)
    opt = r.make_optimizer(model.parameters())
    x, y = train
    steps_per_epoch = math.ceil(len(y) / r.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=r.epochs * steps_per_epoch)
    bar = tqdm(range(r.epochs), desc=desc, disable=not progress)
    try:  # an error or an interrupt leaves no dead bar behind
        for _ in bar:
            model.train()
            perm = torch.randperm(len(y), generator=gen)
            total = 0.0
            for i in range(0, len(y), r.batch_size):
                idx = perm[i : i + r.batch_size]
                xb, yb = x[idx], y[idx]
                if r.hflip:
                    flip = torch.rand(len(idx), generator=gen) < 0.5
                    xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
                    if yb.ndim == 3:
                        yb = torch.where(flip[:, None, None], yb.flip(-1), yb)
                if yb.ndim == 1:
                    xb = shift_batch(xb, r.shift, gen)
                elif r.shift:
                    raise ValueError("Recipe.shift translates images only; use shift=0 (and hflip) with label masks")
                loss = task_loss(model(xb), yb, r.aux_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{total / len(y):.4f}")
    finally:
        bar.close()
    return model.eval()


def train_digits_mlp(hidden: tuple[int, ...] = (32, 32), seed: int = 0, epochs: int = 40,
                     progress: bool = False) -> tuple[nn.Module, "object"]:
    """A small MLP on the 8x8 digits, trained in seconds: the toy model of the strategy notebook."""
    data = load_digits(size=8)
    torch.manual_seed(seed)
    model = mlp(3 * 8 * 8, hidden, 10)
    fit(model, data.train, Recipe(epochs=epochs, lr=0.05, shift=1, seed=seed), desc="train MLP", progress=progress)
    return model, data
