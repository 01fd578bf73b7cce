"""Training recipes: the optimizer option, and checkpoints of older recipes staying bit-identical."""
from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from cswap_nb.data import Split
from cswap_nb.models import mlp
from cswap_nb.training import Recipe, fit


def test_recipe_dict_written_into_checkpoints_omits_later_default_fields():
    sgd = Recipe()
    assert "optimizer" not in sgd.as_dict()  # the resnet18-digits file predates the field
    assert sgd.as_dict() == {k: v for k, v in asdict(sgd).items() if k != "optimizer"}
    assert Recipe(optimizer="adamw").as_dict()["optimizer"] == "adamw"


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
