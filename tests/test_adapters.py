"""Family adapters: each family's quirks in one place, a generic adapter for everything else."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import cswap_nb as cs
from cswap_nb.models import families
from cswap_nb.engines.passes import sequential_parts


def _run_parts(model, x):
    h = x
    for _, fn, _ in sequential_parts(model):
        h = fn(h)
    return h


@pytest.mark.parametrize("make,name", [
    (lambda: cs.models.resnet_digits(channels=(4, 8, 8, 8), num_classes=3), "timm.resnet"),
    (lambda: torchvision.models.resnet18(num_classes=3), "torchvision.resnet"),
    (lambda: cs.models.mobilenet_v2_digits(width_mult=0.25, num_classes=3), "torchvision.mobilenet_v2"),
    (lambda: cs.models.vit_digits(embed_dim=16, depth=2, num_heads=2, num_classes=3), "timm.vit"),
    (lambda: cs.models.ddrnet23_slim(num_classes=3, width=4), "ddrnet"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5), nn.ReLU(), nn.Linear(5, 3)), "sequential"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_each_family_has_its_adapter_and_its_parts_reproduce_the_forward(make, name):
    torch.manual_seed(0)
    model = make().eval()
    adapter = families.family_of(model)
    assert adapter.name == name
    x = torch.randn(2, 3, 32, 32) if name != "ddrnet" else torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(_run_parts(model, x), model(x), atol=1e-5)
    parts = sequential_parts(model)
    inside = {n for _, _, names in parts for n in names}
    leaves = {n for n, m in model.named_modules() if n and not list(m.children())}
    assert leaves <= inside, sorted(leaves - inside)[:5]  # every layer runs in some part
    if name != "sequential":
        spec = cs.models.describe(model)
        assert families.family_for_spec(spec) is adapter
    assert adapter.token_outputs == (name == "timm.vit")


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_unknown_models_get_the_generic_adapter():
    model = Custom()
    adapter = families.family_of(model)
    assert adapter is families.GENERIC and adapter.parts(model) is None
    with pytest.raises(ValueError, match="cannot describe a Custom.*cs.load_pruned\\(path, model="):
        cs.models.describe(model)
    with pytest.raises(ValueError, match="lrp is available for torchvision and timm ResNets only"):
        adapter.lrp_canonizers(model)
    with pytest.raises(ValueError, match="unknown architecture family 'keras'"):
        families.family_for_spec({"family": "keras"})


def test_a_model_may_list_its_own_parts_and_auxiliary_heads():
    class OwnParts(Custom):
        def __init__(self):
            super().__init__()
            self.aux = nn.Linear(8, 3)  # trained, never in the eval output

        def sequential_parts(self):
            return [("a", lambda x: torch.relu(self.a(x)), ["a"]), ("b", self.b, ["b"])]

        def auxiliary_heads(self):
            return [self.aux]

    model = OwnParts().eval()
    assert [p[0] for p in sequential_parts(model)] == ["a", "b"]
    assert families.family_of(model).auxiliary_heads(model) == [model.aux]
    x = torch.randn(40, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    keep = torch.isin(y, torch.tensor([c for c in y.unique().tolist() if int((y == c).sum()) >= 3]))
    res = cs.prune(model, (x[keep], y[keep]), samples_per_class=3, progress=False)
    assert res.engine["name"] == "fast" and res.engine["fallback"] is None
    assert {layer["name"] for layer in res.layers} == {"a"}  # the aux head is never a unit


def test_mobilenet_adapter_narrows_internal_units_to_the_expansions():
    model = cs.models.mobilenet_v2_digits(width_mult=0.25, num_classes=3).eval()
    expanded = families.family_of(model).internal_units(model)
    assert expanded and all(n.endswith(".conv.0.0") for n in expanded)
    layers = cs.core.units.find_unit_layers(model, torch.randn(1, 3, 32, 32), scope="internal")
    assert {layer.name for layer in layers} == expanded
