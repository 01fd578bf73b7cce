"""Training recipes: the optimizer option, and checkpoints of older recipes staying bit-identical."""
from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from cswap_nb.data import Split
from cswap_nb.models import mlp
from cswap_nb.zoo.training import Recipe, fit


def test_recipe_dict_written_into_checkpoints_omits_later_default_fields():
    sgd = Recipe()
    assert "optimizer" not in sgd.as_dict()  # the resnet18-digits file predates the field
    later = ("optimizer", "hflip", "aux_weight")
    assert sgd.as_dict() == {k: v for k, v in asdict(sgd).items() if k not in later}
    assert Recipe(optimizer="adamw").as_dict()["optimizer"] == "adamw"
    assert Recipe(hflip=True).as_dict()["hflip"] is True and "aux_weight" not in Recipe(hflip=True).as_dict()


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_fit_uses_the_recipe_optimizer(name, cls):
    torch.manual_seed(0)
    model = mlp(4, (8,), 2)
    recipe = Recipe(epochs=2, batch_size=16, lr=0.01, optimizer=name, shift=0)
    assert isinstance(recipe.make_optimizer(model.parameters()), cls)
    x = torch.randn(64, 4)
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, Split(x, (x[:, 0] > 0).long()), recipe, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="Recipe.optimizer must be one of"):
        Recipe(optimizer="lion").make_optimizer(mlp(4, (8,), 2).parameters())


def test_hflip_flips_images_and_masks_together(monkeypatch):
    import cswap_nb.zoo.training as training

    torch.manual_seed(0)
    x = torch.randn(16, 2, 4, 6)
    y = x.argmax(1)  # each pixel's label is a function of that pixel's input

    class Oracle(torch.nn.Module):  # perfect per-pixel logits for whatever it is given
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, xb):
            return 50.0 * torch.nn.functional.one_hot(xb.argmax(1), 2).permute(0, 3, 1, 2).float() + self.w

    seen, losses = [], []
    real = training.task_loss

    def spy(output, yb, aux_weight=0.4):
        loss = real(output, yb, aux_weight)
        losses.append(float(loss.detach()))
        return loss

    monkeypatch.setattr(training, "task_loss", spy)
    model = Oracle()
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    fit(model, Split(x, y), Recipe(epochs=3, batch_size=4, lr=0.01, shift=0, hflip=True), progress=False)
    flipped = {tuple(xi.flip(-1).flatten().tolist()) for xi in x}
    assert any(tuple(xb.flatten().tolist()) in flipped for batch in seen for xb in batch)  # flips happened
    assert max(losses) < 1e-6  # and every flipped image came with its flipped mask
    with pytest.raises(ValueError, match="shift=0"):
        fit(model, Split(x, y), Recipe(epochs=1, shift=2), progress=False)
