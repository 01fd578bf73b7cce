"""Compaction while pruning (cswap_nb/engines/compact.py): candidates scored on a copy with the other layers'
removed units sliced out take exactly the decisions of the masked network at full width."""
from __future__ import annotations

import time

import pytest
import torch
import torchvision.models as tvm
from torch import nn

import cswap_nb as cs
from cswap_nb.core.surgery import count_macs
from cswap_nb.engines.compact import CompactingEngine
from cswap_nb.experiments.bench import engine_options
from cswap_nb.pruning.session import PruneSession
from test_engine import small_torchvision_bottleneck
from test_graph_engine import BranchyNet, _random_bn, _tiny_vit

COLS = ["layer", "unit", "label", "pruned", "note"]

MODELS = {  # (model, input size)
    "branchy": (lambda: _random_bn(BranchyNet(), seed=3), 16),
    "timm-vit": (_tiny_vit, 16),
    "torchvision-bottleneck": (small_torchvision_bottleneck, 32),
}


@pytest.fixture
def every_layer(monkeypatch):
    """A compact copy for every layer that has a removal to slice (the default waits for 32 units, for a cut
    that drops a fifth of the MACs, and keeps the copies within a tenth of the analysis time)."""
    monkeypatch.setattr(CompactingEngine, "min_units", 1)
    monkeypatch.setattr(CompactingEngine, "time_share", None)
    monkeypatch.setattr(CompactingEngine, "copy_cost", None)


def _on_and_off(model, data, **kwargs):
    kwargs.setdefault("progress", False)
    return {c: cs.prune(model, data, compaction=c, **kwargs) for c in ("on", "off")}


@pytest.mark.parametrize("name", list(MODELS))
def test_compact_copies_take_the_decisions_of_the_masked_network(name, own_label_data, every_layer):
    build, size = MODELS[name]
    model = build()
    x, y = own_label_data(model, n=80, shape=(3, size, size), min_per_class=4)
    runs = _on_and_off(model, (x, y), samples_per_class=4, alpha=0.2, group_size=1)
    on, off = runs["on"], runs["off"]
    assert on.labels.pruned.any() and (on.labels.label == "critical").any()  # decisions of both kinds
    assert on.labels[COLS].equals(off.labels[COLS])
    assert on.labels.classes.equals(off.labels.classes)  # early decisions stopped at the same class
    assert (on.labels.p_lower - off.labels.p_lower).abs().max() < 1e-4
    assert on.pruned_units == off.pruned_units and on.params_after == off.params_after
    assert on.engine["compaction"]["copies"] >= 1 and on.engine["compaction"]["failed"] is None
    assert off.engine["compaction"] is None
    # the copies did less work than the masked network at full width
    assert on.engine["forward_equivalents"] < off.engine["forward_equivalents"]


def test_a_compact_copy_scores_like_the_masks_on_random_cuts(own_label_data, every_layer):
    """The property under the decisions: for random removals in several layers, the compact copy's scores
    of a candidate equal the masked network's (and a copy that sliced the wrong units would not)."""
    model = _random_bn(BranchyNet(), seed=3)
    x, y = own_label_data(model, n=80, shape=(3, 16, 16), min_per_class=4)
    session = PruneSession(model, (x, y), samples_per_class=4, progress=False)
    engine = session.engine
    assert isinstance(engine, CompactingEngine)
    g = torch.Generator().manual_seed(0)
    layers = list(session.layers)
    for trial in range(3):
        for layer in layers:  # a random cut everywhere
            session.masker.set(layer.name, range(layer.size), False)
            cut = torch.randperm(layer.size, generator=g)[: layer.size // 2].tolist()
            session.masker.set(layer.name, cut, True)
        under_test = layers[trial % len(layers)]
        engine._layer = None  # as when a new layer is first scored
        got = engine.scores(session.x, session.test_y, "prob", under_test)
        assert engine._use is not None, "no compact copy was used"
        assert engine._use.engine.adopted >= 1  # the copy took the masked network's checked plan, unchecked
        want = engine.inner.scores(session.x, session.test_y, "prob", under_test)
        assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
        # the copy is not the dense network: the scores of a network without the cut differ
        for layer in layers:
            if layer is not under_test:
                session.masker.set(layer.name, range(layer.size), False)
        uncut = engine.inner.scores(session.x, session.test_y, "prob", under_test)
        assert not torch.allclose(got, uncut, atol=1e-3)


SYNC_MODELS = {  # (model, input size): plain channels, heads, and norms shared by several layers' units
    "branchy": (lambda: _random_bn(BranchyNet(), seed=3), 16),
    "timm-vit": (_tiny_vit, 16),
    "torchvision-densenet": (lambda: _random_bn(tvm.DenseNet(growth_rate=8, block_config=(2, 2),
                                                             num_init_features=16, num_classes=3)), 32),
}


def _sync_walk(copy, g: torch.Generator):
    """States for each layer of ``copy``: random ones of any size, one unit more, one unit fewer, none."""
    now = {n: set(copy.masker.removed_units[n]) for n in copy.layers}
    for step in range(7):
        for name, layer in copy.layers.items():
            units = now[name]
            if step < 3 or step == 6:
                size = int(torch.randint(0, layer.size, (), generator=g))
                units = set(torch.randperm(layer.size, generator=g)[:size].tolist())
            elif step == 3 and len(units) < layer.size - 1:
                units = units | {min(set(range(layer.size)) - units)}
            elif step == 4 and units:
                units = units - {min(units)}
            elif step == 5:
                units = set()
            now[name] = units
        yield {n: tuple(sorted(u)) for n, u in now.items()}


@pytest.mark.parametrize("name", list(SYNC_MODELS))
def test_a_copy_synced_from_one_state_to_another_masks_as_if_set_afresh(name, own_label_data, every_layer):
    """``_Compact.sync`` changes only the units that differ between the copy's masks and the session's: from
    any state to any other (more units, fewer, one more, one fewer, none), the copy's masks then hold the
    session's units, and its masker and network are what a masker reset and set to those units gives."""
    build, size = SYNC_MODELS[name]
    model = build()
    x, y = own_label_data(model, n=60, shape=(3, size, size), min_per_class=4)
    session = PruneSession(model, (x, y), samples_per_class=4, progress=False)
    engine, layers = session.engine, list(session.layers)
    session.masker.set(layers[-1].name, [0, 1], True)
    engine.scores(session.x, session.test_y, "prob", layers[0])
    copy = engine._use
    assert copy is not None and set(copy.layers) == {layer.name for layer in layers[:-1]}
    masker = copy.masker
    for wanted in _sync_walk(copy, torch.Generator().manual_seed(1)):
        copy.sync({**session.masker.removed_units, **wanted})
        assert {n: masker.removed_units[n] for n in copy.layers} == wanted
        synced = ({n: masker.removed[n].clone() for n in copy.layers}, set(masker._masked))
        with torch.inference_mode():
            got = copy.engine.model(session.x)
        for n, layer in copy.layers.items():  # afresh: every unit restored, then the wanted ones removed
            masker.set(n, range(layer.size), False)
            masker.set(n, list(wanted[n]), True)
        assert all(torch.equal(synced[0][n], masker.removed[n]) for n in copy.layers)
        assert synced[1] == masker._masked
        with torch.inference_mode():
            assert torch.equal(got, copy.engine.model(session.x))


def test_a_removal_undone_under_a_copy_is_scored_on_the_masked_network(own_label_data, every_layer):
    """A unit sliced out of the copy and then restored (what a guard's roll-back does) cannot be served by
    that copy: the masked network scores it, and the copy is dropped."""
    model = _random_bn(BranchyNet(), seed=3)
    x, y = own_label_data(model, n=80, shape=(3, 16, 16), min_per_class=4)
    session = PruneSession(model, (x, y), samples_per_class=4, progress=False)
    engine, layers = session.engine, list(session.layers)
    under_test, other = layers[0], layers[-1]
    session.masker.set(other.name, [0, 1], True)
    engine.scores(session.x, session.test_y, "prob", under_test)
    assert engine._use is not None and engine._use.sliced == {other.name: (0, 1)}
    session.masker.set(other.name, [1], False)  # undone while the layer under test is scored
    got = engine.scores(session.x, session.test_y, "prob", under_test)
    assert engine._use is None and engine._compact is None
    want = engine.inner.scores(session.x, session.test_y, "prob", under_test)
    assert torch.equal(got, want)


def test_the_bench_engine_specs_name_the_evaluation_and_compaction():
    assert engine_options("fast") == {"engine": "fast"}
    assert engine_options("fast-full") == {"engine": "fast", "evaluation": "full"}
    assert engine_options("fast-static") == {"engine": "fast", "compaction": "off"}
    assert engine_options("fast-full-static") == {"engine": "fast", "evaluation": "full", "compaction": "off"}
    for bad in ("quick", "fast-slow", "fast-full-early", "fast-static-compact"):
        with pytest.raises(ValueError, match="engine spec"):
            engine_options(bad)


class ConcatNorm(nn.Module):
    """A norm after a concatenation (DenseNet, DDRNet's DAPPM): its channels belong to several unit layers,
    so slicing one of them renumbers the others' channels at that norm."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12), nn.ReLU())
        self.norm = nn.BatchNorm2d(24)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(24, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        s = self.stem(x)
        h = self.norm(torch.cat([self.a(s), self.b(s)], dim=1))
        return self.fc(self.head(h).mean((2, 3)))


ORDERS = {  # (model, input size, options): copies reused across layers, norms shared across a concatenation
    "concat-norm, input-to-output": (lambda: _random_bn(ConcatNorm(), seed=5), 16, {"layer_order": "input-to-output"}),
    "densenet, input-to-output": (lambda: _random_bn(tvm.DenseNet(growth_rate=8, block_config=(2, 2),
                                                                  num_init_features=16, num_classes=3)), 32,
                                  {"layer_order": "input-to-output"}),
    "branchy, scope all, current reference": (lambda: _random_bn(BranchyNet(), seed=3), 16,
                                              {"scope": "all", "reference": "current"}),
}


@pytest.mark.parametrize("name", list(ORDERS))
def test_copies_reused_across_layers_and_shared_norms_take_the_same_decisions(name, own_label_data, every_layer):
    build, size, options = ORDERS[name]
    model = build()
    x, y = own_label_data(model, n=80, shape=(3, size, size), min_per_class=4)
    runs = _on_and_off(model, (x, y), samples_per_class=4, alpha=0.2, group_size=1, **options)
    on, off = runs["on"], runs["off"]
    assert on.labels.pruned.any() and (on.labels.label == "critical").any()
    assert on.labels[COLS].equals(off.labels[COLS])
    assert (on.labels.p_lower - off.labels.p_lower).abs().max() < 1e-4
    assert on.engine["compaction"]["copies"] >= 1 and on.engine["compaction"]["failed"] is None, on.engine


def test_copies_beyond_their_time_share_are_skipped_with_the_same_decisions(own_label_data, monkeypatch):
    """With no time for copies, only the first is built; the later layers are scored on it (newer removals
    masked) or on the masked network, and the decisions stay those of the masked network."""
    monkeypatch.setattr(CompactingEngine, "min_units", 1)
    monkeypatch.setattr(CompactingEngine, "time_share", 0.0)
    monkeypatch.setattr(CompactingEngine, "copy_cost", None)
    model = _random_bn(BranchyNet(), seed=3)
    x, y = own_label_data(model, n=80, shape=(3, 16, 16), min_per_class=4)
    runs = _on_and_off(model, (x, y), samples_per_class=4, alpha=0.2, group_size=1)
    on, off = runs["on"], runs["off"]
    assert on.labels.pruned.any() and (on.labels.label == "critical").any()
    assert on.labels[COLS].equals(off.labels[COLS])
    assert on.engine["compaction"]["copies"] == 1 and on.engine["compaction"]["skipped"] >= 1, on.engine
    monkeypatch.setattr(CompactingEngine, "time_share", None)
    free = cs.prune(model, (x, y), samples_per_class=4, alpha=0.2, group_size=1, progress=False)
    assert free.engine["compaction"]["copies"] > 1 and free.engine["compaction"]["skipped"] == 0
    assert free.labels[COLS].equals(off.labels[COLS])


def test_a_copy_is_built_only_where_its_cut_drops_enough_of_the_macs(own_label_data, monkeypatch):
    """CompactingEngine._slices_enough: the share of the dense MACs the first copy drops, times the layer's
    candidates left, must reach copy_cost; the MACs are counted from the cut
    (the footprints and each weight's output positions) without a surgery, so that the same run takes the
    same decisions. The estimate equals the copy's own count once built."""
    monkeypatch.setattr(CompactingEngine, "min_units", 1)
    model = _random_bn(BranchyNet(), seed=3)
    x, y = own_label_data(model, n=80, shape=(3, 16, 16), min_per_class=4)
    s = PruneSession(model, (x, y), samples_per_class=4, progress=False)
    e = s.engine
    assert isinstance(e, CompactingEngine)
    first, other = s.layers[0], s.layers[-1]
    assert e._estimate({}) == pytest.approx(1.0)
    half = list(range(other.size // 2))
    share = e._estimate({other.name: half})
    assert 0.0 < share < 1.0
    e.masker.set(other.name, half, True)
    worth = (1 - share) * first.size  # in candidates: the share dropped, times the candidates left
    monkeypatch.setattr(CompactingEngine, "copy_cost", worth * (1 - 1e-6))
    assert e._slices_enough(first)
    monkeypatch.setattr(CompactingEngine, "copy_cost", worth * (1 + 1e-6))
    assert not e._slices_enough(first)  # the copy costs more than it saves: none
    assert not e._worth(first)
    monkeypatch.setattr(CompactingEngine, "copy_cost", None)
    assert e._worth(first)
    e._build(first)  # the copy's own MAC count is what the estimate said
    assert e.rebuilds == 1 and e._compact.share == pytest.approx(share, rel=1e-9)
    # later copies answer to the time share alone
    monkeypatch.setattr(CompactingEngine, "copy_cost", worth * 2)
    assert e._slices_enough(first)


def test_later_copies_and_kept_copies_answer_to_the_macs_their_cut_drops_downstream(own_label_data, monkeypatch):
    """After the first copy, a new copy is built for a layer where the MACs it drops from the modules run after
    the layer, over the layer's candidates left, reach copy_cost (counted, so the same run takes the same
    decisions), against the network that would score the layer otherwise; a kept copy checks its plan for a new
    layer where its cut drops at least check_cost of them. (Below those, the time share may still allow them:
    set to 0 here.)"""
    monkeypatch.setattr(CompactingEngine, "min_units", 1)
    monkeypatch.setattr(CompactingEngine, "time_share", 0.0)
    model = _random_bn(BranchyNet(), seed=3)
    x, y = own_label_data(model, n=80, shape=(3, 16, 16), min_per_class=4)
    s = PruneSession(model, (x, y), samples_per_class=4, progress=False)
    e = s.engine
    first, other = s.layers[0], s.layers[-1]
    assert first.position < other.position
    est = e._estimate
    # only the modules after the layer count: a cut before it changes nothing there, a cut after it does
    assert est({first.name: [0, 1]}, other.position) == pytest.approx(est({}, other.position))
    assert est({other.name: [0, 1]}, first.position) < est({}, first.position) < est({})
    e.masker.set(other.name, [0, 1], True)
    monkeypatch.setattr(CompactingEngine, "copy_cost", None)
    e._started = time.perf_counter()
    e._build(first)  # the first copy, cut by other's two units
    c = e._compact
    assert e.rebuilds == 1 and c.sliced == {other.name: (0, 1)}
    e.masker.set(other.name, [2, 3], True)  # removed since the copy: it no longer serves
    monkeypatch.setattr(CompactingEngine, "copy_cost", 16.0)
    gain = e._gain(first, {})
    left = first.size
    assert gain == pytest.approx((est({}, first.position) - est({other.name: [0, 1, 2, 3]}, first.position)) * left)
    assert gain > 0
    monkeypatch.setattr(CompactingEngine, "copy_cost", gain * (1 - 1e-6))
    assert e._worth(first)
    monkeypatch.setattr(CompactingEngine, "copy_cost", gain * (1 + 1e-6))
    assert not e._worth(first)
    # a kept copy that serves the layer: its check is worth it only where its own cut drops enough
    e.masker.set(other.name, [2, 3], False)
    kept = e._gain(first, {}, c.sliced)
    assert 0 < kept < gain
    monkeypatch.setattr(CompactingEngine, "check_cost", kept * (1 + 1e-6))
    assert not e._checked_on_copy(c, first, built=False)
    monkeypatch.setattr(CompactingEngine, "check_cost", kept * (1 - 1e-6))
    assert e._checked_on_copy(c, first, built=False)
    # the first copy's counted share equalled the estimate, so a later copy's share is the estimate, still its count
    assert e._estimate_agrees is True
    e.masker.set(other.name, [2, 3], True)
    e._build(first)
    assert e._compact.sliced == {other.name: (0, 1, 2, 3)}
    counted = count_macs(e._compact.engine.model, e.example) / e._dense_macs
    assert e._compact.share == pytest.approx(counted, rel=1e-12) and counted < c.share


def test_a_copy_is_cut_in_one_sweep_as_layer_by_layer_removal_cuts_it():
    """CutSurgery reads every unit layer's group once from the dense model and cuts a copy in one handler call per
    parameter: the copy must equal remove_units's, layer after layer, in every shape and every output, on a
    concatenation network (DenseNet), grouped convs (RegNet: slots), LayerNorm channels (ConvNeXt) and residual
    streams (scope="all")."""
    import copy

    import timm
    import torchvision

    from cswap_nb.core.surgery import CutSurgery, remove_units
    from cswap_nb.core.units import find_unit_layers

    torch.manual_seed(0)
    for model, size in ((torchvision.models.densenet121(num_classes=10), 32),
                        (torchvision.models.regnet_x_400mf(num_classes=10), 32),
                        (timm.create_model("convnext_atto", pretrained=False, num_classes=10), 32)):
        model = _random_bn(model.eval(), seed=1)
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
        layers = find_unit_layers(model, x, scope="all")
        g = torch.Generator().manual_seed(3)
        cut = {layer.name: torch.randperm(layer.size, generator=g)[: max(1, (2 * layer.size) // 5)].tolist()
               for i, layer in enumerate(layers) if i % 3 != 2 and layer.size > 1}
        surgery = CutSurgery(model, x, [layer.name for layer in layers])
        fast = surgery.apply(copy.deepcopy(model), x, cut)
        slow = remove_units(copy.deepcopy(model), x, cut)
        shapes = {n: p.shape for n, p in fast.named_parameters()}
        assert shapes == {n: p.shape for n, p in slow.named_parameters()}, type(model).__name__
        assert shapes != {n: p.shape for n, p in model.named_parameters()}
        with torch.inference_mode():
            assert torch.equal(fast(x), slow(x)), type(model).__name__
        with pytest.raises(KeyError):
            surgery.apply(copy.deepcopy(model), x, {"no.such.layer": [0]})


def test_the_greedy_strategy_scores_without_copies(own_label_data, every_layer):
    model = _random_bn(BranchyNet(), seed=3)
    x, y = own_label_data(model, n=80, shape=(3, 16, 16), min_per_class=4)
    res = cs.prune(model, (x, y), "greedy", ratio=0.2, samples_per_class=4, progress=False)
    assert res.engine["compaction"] is None  # a copy per layer and step would cost more than it saves
