"""The fast engine (graph, or the family's parts) must take exactly the decisions of the naive one."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
import torchvision.models as tvm
from torchvision.models.resnet import Bottleneck, ResNet

import cswap_nb as cs
from _helpers import assert_same_decisions
from cswap_nb.experiments.bench import bench_engines
from cswap_nb.engines.build import make_engine
from cswap_nb.engines.passes import FullPasses, PartsEngine, PartsUnavailable, sequential_parts
from cswap_nb.core.units import Masker, find_unit_layers

COLS = ["layer", "unit", "label", "pruned"]


def own_labels(model: nn.Module, n: int = 60, seed: int = 0):
    """Random images labelled with the model's own prediction: every sample is 'correct'."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    keep = torch.isin(y, torch.tensor([c for c in y.unique().tolist() if int((y == c).sum()) >= 4]))
    return x[keep], y[keep]


def small_torchvision_bottleneck(groups: int = 1) -> nn.Module:
    torch.manual_seed(1)
    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=3, groups=groups, width_per_group=8 // groups * 2
                   if groups > 1 else 8).eval()
    with torch.no_grad():  # a less degenerate random network: spread the BN statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("which", [pytest.param("timm-resnet18-digits", marks=pytest.mark.slow),  # ~21 s
                                   "torchvision-bottleneck", "torchvision-resnext"])
def test_fast_and_naive_engines_take_identical_decisions(which, zoo_model):
    if which == "timm-resnet18-digits":  # with the coupled residual streams
        model, (x, y), k, scope = zoo_model, cs.data.load_digits().train, 5, "all"
    else:  # Bottleneck blocks: two internal layers per block (ResNeXt: units of one slot of the grouped conv)
        model = small_torchvision_bottleneck(4 if which == "torchvision-resnext" else 1)
        x, y = own_labels(model)
        k, scope = 4, "internal"
    kwargs = dict(samples_per_class=k, progress=False, scope=scope)
    fast = cs.prune(model, (x, y), engine="fast", **kwargs)
    naive = cs.prune(model, (x, y), engine="naive", **kwargs)
    assert fast.engine["fallback"] is None and fast.engine["path"] == "graph"
    assert_same_decisions(fast, naive)
    if which == "torchvision-resnext":
        slotted = {"layer1.0.conv1", "layer1.0.conv2"}  # feed / leave the grouped conv2: one slot per unit
        assert slotted <= set(fast.labels.layer) and fast.labels[fast.labels.layer.isin(slotted)].pruned.any()
    if len(naive.labels.classes.iloc[0]) > 1:
        assert (fast.labels.classes.map(len) < len(naive.labels.classes.iloc[0])).any()  # some decided early
    # the fast engine really skipped work
    assert fast.engine["forward_equivalents"] < naive.engine["forward_equivalents"]
    assert naive.engine["forward_equivalents"] == len(naive.labels) + 1


def test_parts_engine_scores_equal_full_passes_with_masks_everywhere(zoo_model):
    work = copy.deepcopy(zoo_model)
    x, y = cs.data.load_digits().train
    x, y = x[:40], y[:40]
    layers = find_unit_layers(work, x[:1], scope="all")
    masker = Masker(work, layers)
    engine = PartsEngine(work, masker, x[:1])
    full_passes = FullPasses(work, masker)
    g = torch.Generator().manual_seed(0)
    try:
        for layer in layers:  # masks spread over the whole network, then one layer analysed
            masker.set(layer.name, torch.randperm(layer.size, generator=g)[: layer.size // 3], True)
        for layer in layers:
            fast = engine.scores(x, y, "prob", layer)
            full = full_passes.scores(x, y, "prob")
            assert torch.allclose(fast, full, atol=1e-6), layer.name
    finally:
        masker.remove()


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_sequential_models_are_split_into_their_children():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    assert [name for name, _, _ in sequential_parts(model)] == ["0", "1", "2", "3"]


def test_a_model_without_parts_gets_full_passes_from_the_parts_option_and_the_graph_from_fast():
    torch.manual_seed(0)
    model = TwoLayer().eval()
    assert sequential_parts(model) is None
    x = torch.randn(90, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    layers = find_unit_layers(model, x[:1])
    masker = Masker(model, layers)
    try:
        with pytest.raises(PartsUnavailable, match="not a supported"):
            PartsEngine(model, masker, x[:1])
        engine = make_engine("parts", model, masker, x[:1])  # the option falls back to full passes, saying why
        assert isinstance(engine, FullPasses) and engine.name == "parts" and "not a supported" in engine.fallback
        assert engine.can_slice(layers[0], x) and not make_engine("naive", model, masker, x[:1]).can_slice(layers[0], x)
    finally:
        masker.remove()
    res = cs.prune(model, (x, y), samples_per_class=None, progress=False)
    assert res.engine["path"] == "graph" and res.engine["fallback"] is None
    assert res.engine["forward_equivalents"] < 0.5 * (len(res.labels) + 1)


def test_bench_reports_identical_labels_and_a_ratio():
    model = small_torchvision_bottleneck()
    x, y = own_labels(model)
    out = bench_engines(model, (x, y), rounds=1, samples_per_class=4)
    out.pop("_result")
    assert out["identical_labels"] is True
    assert out["speedup"] > 0 and out["matmul_gflops"] > 0
    assert out["fast"]["forward_equivalents"] < out["naive"]["forward_equivalents"]


@pytest.mark.parametrize("evaluation", ["full", "early"])
def test_chained_removals_scored_ahead_take_the_naive_decisions(evaluation, own_label_data):
    """Candidates scored whole (``evaluation="full"``; or a random DenseNet predicting one class, where no
    class decides early) chain the next ones of the layer in the same pass, each as if removed too
    (ClassByClass._whole). The decisions must equal the naive engine's, and the chain must really save passes."""
    from cswap_nb.pruning.session import PruneSession

    model = tvm.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=3).eval()
    x, y = own_label_data(model, n=60, shape=(3, 32, 32), min_per_class=4)
    kwargs = dict(samples_per_class=4, progress=False, evaluation=evaluation)
    s = PruneSession(model, (x, y), compaction="off", **kwargs)
    for _ in s.steps():
        pass
    fast = s.finish()
    naive = cs.prune(model, (x, y), engine="naive", **kwargs)
    assert_same_decisions(fast, naive)
    assert fast.labels.pruned.mean() > 0.5  # mostly removed: the chains' guess
    assert s.engine._speculation.taken > len(fast.labels) / 4


def test_chains_follow_the_removal_rate_and_survive_one_critical_candidate():
    """A chain scores the present candidate and each next one while the chance that every candidate before it
    is removed stays at least ``chain_floor``. Where 9 in 10 are removed, one critical candidate must not cut
    the chain back to one (the previous rule did, and a random DenseNet121 then took 1.15x the time:
    benchmarks/engine_levers.py --stepwise)."""
    from cswap_nb.core.causal import Verdict
    from cswap_nb.pruning.descent import ClassByClass

    c = ClassByClass.__new__(ClassByClass)
    c.removal_rate, c._chain = 0.5, None
    # 0.5 and 0.25 reach the floor, 0.125 does not: the present candidate and two more
    assert c._chain_length() == 3
    c.removal_rate = 0.2
    assert c._chain_length() == 1
    verdict = lambda label: Verdict(label, 0.5, 0.5, 0.5, 0.0, 0)  # noqa: E731
    for _ in range(30):
        c._chained(verdict("neutral"))
    assert c._chain_length() == ClassByClass.max_stack
    c._chained(verdict("critical"))
    assert 4 <= c._chain_length() < ClassByClass.max_stack
    for _ in range(10):  # where most candidates are critical, a chain would rarely be followed
        c._chained(verdict("critical"))
    assert c._chain_length() == 1


@pytest.mark.parametrize("rows, chained", [(200, 0), (64, 0), (12, 4)])
def test_a_set_larger_than_chain_rows_builds_no_chain(rows, chained):
    """ClassByClass._whole chains the next candidates only while the pass stays within ``chain_rows`` rows. A
    set over that bound once made the chain's length 0, and ``upcoming[: 0 - 1]`` then chained all but one of
    the upcoming candidates: passes of up to 7 x 200 rows on the shipped checkpoints, where chains do not pay
    (vit-fashion's analysis took 11.7 s with them, 6.4 s without; benchmarks/analysis_run.py)."""
    from types import SimpleNamespace

    from cswap_nb.pruning.descent import ClassByClass

    calls = []
    layer = SimpleNamespace(name="l")
    engine = SimpleNamespace(masker=SimpleNamespace(removed_units={"l": ()}), can_stack=lambda layer, x: True,
                             stack_rows=lambda x, y, score, layer, states, r: calls.append(states),
                             rows_scores=lambda x, y, score, layer, r: torch.zeros(len(y)))
    c = ClassByClass.__new__(ClassByClass)
    c.engine, c.x, c.y = engine, torch.zeros(rows, 1), torch.zeros(rows, dtype=torch.long)
    c.cfg = SimpleNamespace(score="prob")
    c.removal_rate, c._chain = 0.99, None
    c._whole(layer, [0], [[1], [2], [3], [4], [5], [6]])
    assert len(calls) == (1 if chained else 0)
    if chained:  # 64 // 12 = 5 candidates in the pass: the present one and 4 more, each with those before it
        assert calls[0] == [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]]
