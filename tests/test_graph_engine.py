"""The general (torch.fx) engine: the naive engine's decisions on models no adapter knows, and work skipped."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision.models as tvm
from torch import nn

import cswap_nb as cs
from _helpers import assert_same_decisions
from cswap_nb.engines.passes import FullPasses
from cswap_nb.engines.graph import GraphEngine
from cswap_nb.core.units import Masker, find_unit_layers

COLS = ["layer", "unit", "label", "pruned"]


class BranchyNet(nn.Module):
    """A user model no adapter knows: two branches, a concatenation, a residual add (written in place
    on a value the engine caches), a per-channel chain through a max-pool, and a wide head MLP."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.MaxPool2d(3, stride=1, padding=1))
        self.proj, self.skip = nn.Conv2d(16, 16, 1, bias=False), nn.Conv2d(8, 16, 1, bias=False)
        self.conv1, self.bn1 = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24)
        self.conv2, self.bn2 = nn.Conv2d(24, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.down = nn.Conv2d(16, 16, 1, stride=2, bias=False)
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, classes)

    def forward(self, x):
        s = self.stem(x)
        h = torch.cat([self.a(s), self.b(s)], dim=1)
        r = self.skip(s)
        r += self.proj(h)  # in place on a value the engine caches while it analyses the branches
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(r)))))
        y = torch.relu(y + self.down(r))
        z = torch.nn.functional.gelu(self.fc1(y.mean((2, 3))))
        return self.fc2(z)


class DataDependent(nn.Module):
    """Control flow on the values of a tensor: ``torch.fx`` cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h if h.sum() > 0 else -h)


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _both(model, data, **kwargs):
    kwargs.setdefault("progress", False)
    return {e: cs.prune(model, data, engine=e, **kwargs) for e in ("fast", "naive")}


def _assert_same(runs):
    fast, naive = runs["fast"], runs["naive"]
    assert fast.engine["path"] == "graph" and fast.engine["fallback"] is None
    assert fast.engine["layers_on_full_passes"] == {}
    assert_same_decisions(fast, naive)
    assert set(fast.labels.label) >= {"critical"} and fast.labels.pruned.any()  # decisions of both kinds


def test_a_user_model_gets_the_general_engine_identical_labels_and_a_third_of_the_work(own_label_data):
    torch.manual_seed(0)
    model = _random_bn(BranchyNet(), seed=1)
    x, y = own_label_data(model, n=120, shape=(3, 16, 16), min_per_class=4)
    runs = _both(model, (x, y), samples_per_class=6, alpha=0.2)
    _assert_same(runs)
    fast, naive = (runs[e].engine["forward_equivalents"] for e in ("fast", "naive"))
    assert naive == len(runs["naive"].labels) + 1
    assert naive / fast >= 3.0  # counted in FLOPs: the share of the network each candidate recomputes


def test_the_plans_of_the_user_model_use_the_cache_everywhere():
    model = _random_bn(BranchyNet())
    x = torch.randn(1, 3, 16, 16)
    layers = find_unit_layers(model, x)
    masker = Masker(model, layers)
    try:
        engine = GraphEngine(model, masker, x)
        plans = {name: p for name, p in engine._plans.items()}
        assert all(p is not None for p in plans.values()) and engine.layer_fallbacks == {}
        # the head MLP: fc1 -> gelu -> fc2 is corrected at fc2, nothing else is recomputed
        assert [c.node.target for c in plans["fc1"].corrections] == ["fc2"]
        assert [n.op for n in plans["fc1"].dirty] == ["output"]
        # the second branch reaches the concatenation through a max-pool: read from the cache
        assert [r.target for r in plans["b.0"].materialize] == ["b.3"]
        # the first branch feeds the concatenation directly; the stem feeds both branches and the skip
        assert [r.target for r in plans["a.0"].materialize] == ["a.2"]
        assert sorted(c.node.target for c in plans["stem.0"].corrections) == ["a.0", "b.0", "skip"]
    finally:
        masker.remove()


def _graph_and_full(model: nn.Module, x: torch.Tensor):
    """The model's own labels of ``x``, its unit layers, a masker, and a graph engine and full passes over it."""
    y = model(x).argmax(1)
    layers = find_unit_layers(model, x[:1])
    masker = Masker(model, layers)
    return y, layers, masker, GraphEngine(model, masker, x[:1]), FullPasses(model, masker)


def _bottleneck():
    from test_engine import small_torchvision_bottleneck

    return small_torchvision_bottleneck()


@pytest.mark.parametrize("which", ["branchy", "torchvision-bottleneck"])
def test_graph_scores_equal_full_passes_with_masks_everywhere(which):
    """Every layer's candidates, whole and on a slice of rows, through kept removals folded into the cache. The
    torchvision Bottleneck adds its shortcut in place to a norm's output and runs in-place ReLUs: where the norm
    is folded into a correction (the cache holds its output), a candidate must not change the cached value."""
    model, size = (_random_bn(BranchyNet(), seed=2), 16) if which == "branchy" else (_bottleneck(), 32)
    x = torch.randn(24, 3, size, size)
    y, layers, masker, engine, full_passes = _graph_and_full(model, x)
    g = torch.Generator().manual_seed(0)
    rows = ((3, 9),)
    try:
        for layer in layers:  # masks spread over the whole network
            masker.set(layer.name, torch.randperm(layer.size, generator=g)[: layer.size // 3], True)
        for layer in layers:  # then each layer analysed: one unit removed, kept, a second one, one restored
            alive = (~masker.removed[layer.name]).nonzero().flatten().tolist()
            for step in ([alive[0]], [alive[1]], []):
                if step:
                    masker.set(layer.name, step, True)
                else:
                    masker.set(layer.name, [alive[0]], False)  # undo a kept removal (as the guard does)
                full = full_passes.scores(x, y, "prob")
                if engine.can_slice(layer, x):  # a slice first, then the whole set from the same candidate
                    part = engine.rows_scores(x, y, "prob", layer, rows)
                    assert torch.allclose(part, full[3:9], atol=1e-6), (layer.name, step)
                fast = engine.scores(x, y, "prob", layer)
                assert torch.allclose(fast, full, atol=1e-6), (layer.name, step)
        plans = [engine._plan(layer) for layer in layers]
        assert all(p is not None for p in plans) and engine.layer_fallbacks == {}
        assert any(p.folds for p in plans) and any(c.norm is not None for p in plans for c in p.corrections)
        assert which == "branchy" or (any(p.shared for p in plans) and any(p.reuse for p in plans))
    finally:
        masker.remove()


def test_folded_norms_change_no_decision(own_label_data):
    """Runs with BatchNorms folded into the convs before them (GraphEngine.fold_norms) and without take the
    same decisions, with p-values equal to float reassociation."""
    model = _bottleneck()
    x, y = own_label_data(model, n=60, shape=(3, 32, 32), min_per_class=4)
    runs = {}
    for fold in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(GraphEngine, "fold_norms", fold)
            runs[fold] = cs.prune(model, (x, y), samples_per_class=4, alpha=0.2, compaction="off", progress=False)
    on, off = runs[True].labels, runs[False].labels
    assert on[COLS].equals(off[COLS]) and on.classes.equals(off.classes)
    assert (on.p_lower - off.p_lower).abs().max() < 1e-4


def _tiny_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=32, depth=2,
                             num_heads=4, mlp_ratio=2.0).eval()


LIBRARY_MODELS = {
    "torchvision-mobilenet_v3_small": lambda: _random_bn(tvm.mobilenet_v3_small(width_mult=0.25, num_classes=3)),
    "torchvision-densenet": lambda: _random_bn(tvm.DenseNet(growth_rate=8, block_config=(2, 2),
                                                           num_init_features=16, num_classes=3)),
    "timm-vit": _tiny_vit,
}


@pytest.mark.parametrize("name", list(LIBRARY_MODELS))
def test_library_models_no_adapter_knows_take_the_naive_decisions(name, own_label_data):
    model = LIBRARY_MODELS[name]()
    size = 16 if name == "timm-vit" else 32
    x, y = own_label_data(model, n=60, shape=(3, size, size), min_per_class=4)
    runs = _both(model, (x, y), samples_per_class=4, alpha=0.2, group_size=1)
    assert runs["fast"].labels[COLS].equals(runs["naive"].labels[COLS])
    assert runs["fast"].engine["path"] == "graph" and runs["fast"].engine["layers_on_full_passes"] == {}
    assert runs["fast"].engine["forward_equivalents"] < 0.5 * runs["naive"].engine["forward_equivalents"]


def test_the_guard_and_the_current_reference_take_the_naive_decisions(own_label_data):
    model = _random_bn(BranchyNet(), seed=3)
    x, y = own_label_data(model, n=160, shape=(3, 16, 16), min_per_class=4)
    calib, val = (x[::2], y[::2]), (x[1::2], y[1::2])
    runs = _both(model, calib, samples_per_class=6, alpha=0.01, reference="current", max_drop=2.0, guard_data=val)
    assert runs["fast"].guard == runs["naive"].guard
    assert runs["fast"].guard["checks"] >= 2
    assert runs["fast"].labels[COLS + ["note"]].equals(runs["naive"].labels[COLS + ["note"]])


def test_a_model_fx_cannot_trace_falls_back_to_full_passes_and_says_why():
    torch.manual_seed(0)
    model = DataDependent().eval()
    x = torch.randn(90, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = cs.prune(model, (x, y), samples_per_class=None, progress=False, evaluation="full")
    assert res.engine["path"] == "full"
    assert "torch.fx could not trace DataDependent" in res.engine["fallback"]
    assert res.engine["forward_equivalents"] == len(res.labels) + 1
    # early decisions on full passes: a first pass over a few classes' rows only, the same labels
    early = cs.prune(model, (x, y), samples_per_class=None, progress=False)
    assert early.labels[COLS].equals(res.labels[COLS])
    decided = early.labels.samples < early.calib_samples
    assert (early.labels.label[decided] == "critical").all()


def test_the_model_is_left_as_it_was(own_label_data, model_fingerprint, assert_same_fingerprint):
    model = _random_bn(BranchyNet(), seed=4)
    before = model_fingerprint(model)
    x, y = own_label_data(model, n=60, shape=(3, 16, 16), min_per_class=4)
    work = copy.deepcopy(model)
    layers = find_unit_layers(work, x[:1])
    masker = Masker(work, layers)
    engine = GraphEngine(work, masker, x[:1])
    for layer in layers:
        masker.set(layer.name, [0], True)
        engine.scores(x, y, "prob", layer)
    masker.remove()
    cs.prune(model, (x, y), samples_per_class=4, progress=False)
    assert_same_fingerprint(before, model_fingerprint(model))


def test_stacked_candidates_score_each_state_as_a_pass_with_its_own_masks(zoo_model):
    """stack_rows scores the current candidate and speculated ones (it restored, another removed) in one
    pass; each result must equal a real pass of the network with exactly that state's masks (internal
    layers and the coupled residual streams of scope="all", where later mask points refuse stacking)."""
    from cswap_nb.core.causal import true_class_scores
    from cswap_nb.pruning.session import PruneSession

    x, y = cs.data.load_digits().train
    s = PruneSession(zoo_model, (x, y), samples_per_class=5, progress=False, scope="all")
    e, m, rows = s.engine, s.masker, ((0, 5), (10, 15))
    xr, yr = torch.cat([s.x[a:b] for a, b in rows]), torch.cat([s.y[a:b] for a, b in rows])
    stacked = 0
    for layer in s.layers:
        m.set(layer.name, [5], True)  # a removal kept earlier
        e.rows_scores(s.x, s.y, "logit", layer, ((0, len(s.y)),))
        m.set(layer.name, [1], True)
        if e.can_stack(layer, s.x):
            stacked += 1
            e.stack_rows(s.x, s.y, "logit", layer, [[2, 5], [3, 5]], rows)  # complete states
        for cand in ([1], [2], [3]):
            m.set(layer.name, [1, 2, 3], False)
            m.set(layer.name, cand, True)
            got = e.rows_scores(s.x, s.y, "logit", layer, rows)
            with torch.inference_mode():
                want = true_class_scores(s.work(xr), yr, "logit")
            assert (got - want).abs().max() < 1e-4, (layer.name, cand)
        m.set(layer.name, [1, 2, 3, 5], False)
    assert stacked >= len([l for l in s.layers if l.kind == "internal"])


def test_stacked_candidates_with_their_own_masks_at_later_points(own_label_data):
    """A DenseNet's growth channels are mask points again in every later norm of their block (after the
    concatenations), which a candidate's pass recomputes: stacked, each block of rows gets its own masks there
    (Masker.row_keep). Each stacked result must equal a real pass with exactly that state's masks."""
    from cswap_nb.core.causal import true_class_scores
    from cswap_nb.pruning.session import PruneSession

    model = LIBRARY_MODELS["torchvision-densenet"]()
    x, y = own_label_data(model, n=60, shape=(3, 32, 32), min_per_class=4)
    s = PruneSession(model, (x, y), samples_per_class=4, progress=False, compaction="off")
    e, m = s.engine, s.masker
    n = len(s.y)  # the classes the random model predicts at least 4 times
    assert n >= 4
    rows = ((0, 1), (n - 2, n))
    xr, yr = torch.cat([s.x[a:b] for a, b in rows]), torch.cat([s.y[a:b] for a, b in rows])
    with_points = 0
    for layer in s.layers:
        if layer.size < 6:
            continue
        m.set(layer.name, [5], True)  # a removal kept earlier
        e.rows_scores(s.x, s.y, "logit", layer, ((0, len(s.y)),))
        m.set(layer.name, [1], True)
        assert e.can_stack(layer, s.x), layer.name
        with_points += bool(e._plan(layer).row_points)
        e.stack_rows(s.x, s.y, "logit", layer, [[2, 5], [3, 4, 5]], rows)  # complete states
        assert not m.row_keep  # the per-row masks live only during the stacked pass
        for cand in ([1], [2], [3, 4]):
            m.set(layer.name, [1, 2, 3, 4], False)
            m.set(layer.name, cand, True)
            taken = len(e._speculation.results)
            got = e.rows_scores(s.x, s.y, "logit", layer, rows)
            assert len(e._speculation.results) == taken - 1, (layer.name, cand)  # the stacked result was used
            with torch.inference_mode():
                want = true_class_scores(s.work(xr), yr, "logit")
            assert (got - want).abs().max() < 1e-4, (layer.name, cand)
        m.set(layer.name, [1, 2, 3, 4, 5], False)
    assert with_points >= 2  # the growth layers of both blocks, whose later norms are their mask points


def test_stacked_candidates_each_on_their_own_rows(own_label_data):
    """Stacked candidates may each be scored on their own first classes (stack_rows' others_rows), in blocks of
    different sizes, with per-row masks at later mask points (a DenseNet's): each result must equal a real pass
    on exactly those rows with exactly that state's masks, and be handed out for those rows only."""
    from cswap_nb.core.causal import true_class_scores
    from cswap_nb.pruning.session import PruneSession

    model = LIBRARY_MODELS["torchvision-densenet"]()
    x, y = own_label_data(model, n=60, shape=(3, 32, 32), min_per_class=4)
    s = PruneSession(model, (x, y), samples_per_class=4, progress=False, compaction="off")
    e, m = s.engine, s.masker
    n = len(s.y)
    assert n >= 4
    own = {(1,): ((0, 1), (n - 2, n)), (2,): ((1, 3),), (3, 4): ((0, n),)}  # 3, 2 and n rows
    checked = 0
    for layer in s.layers:
        if layer.size < 6 or not e.can_stack(layer, s.x):
            continue
        m.set(layer.name, [5], True)  # a removal kept earlier
        e.rows_scores(s.x, s.y, "logit", layer, ((0, len(s.y)),))
        m.set(layer.name, [1], True)
        e.stack_rows(s.x, s.y, "logit", layer, [[2, 5], [3, 4, 5]], own[(1,)], [own[(2,)], own[(3, 4)]])
        assert len(e._speculation.results) == 3
        for cand, rows in own.items():
            m.set(layer.name, [1, 2, 3, 4], False)
            m.set(layer.name, list(cand), True)
            assert e._speculation.take(e._token(layer, s.x), ((0, 1),)) is None  # other rows: not handed out
            taken = len(e._speculation.results)
            got = e.rows_scores(s.x, s.y, "logit", layer, rows)
            assert len(e._speculation.results) == taken - 1, (layer.name, cand)  # the stacked result was used
            xr, yr = torch.cat([s.x[a:b] for a, b in rows]), torch.cat([s.y[a:b] for a, b in rows])
            with torch.inference_mode():
                want = true_class_scores(s.work(xr), yr, "logit")
            assert (got - want).abs().max() < 1e-4, (layer.name, cand)
        m.set(layer.name, [1, 2, 3, 4, 5], False)
        checked += bool(e._plan(layer).row_points)
    assert checked >= 2  # layers whose later norms are mask points, stacked with blocks of 3, 2 and n rows


@pytest.mark.parametrize("which", ["torchvision-densenet", "timm-vit"])
def test_layers_after_removed_channels_run_on_the_kept_ones(which, own_label_data):
    """A conv or linear layer that a candidate recomputes, fed by a mask point through f(0) = 0 operations, runs
    on the channels the masks keep (Plan.thin): with a third of every layer's units removed, each layer's
    candidate scores must equal a real pass with those masks, and the thin runs must really happen."""
    from cswap_nb.core.causal import true_class_scores
    from cswap_nb.pruning.session import PruneSession

    model = LIBRARY_MODELS[which]()
    shape = (3, 32, 32) if which != "timm-vit" else (3, 16, 16)
    x, y = own_label_data(model, n=60, shape=shape, min_per_class=4)
    s = PruneSession(model, (x, y), samples_per_class=4, progress=False, compaction="off")
    e, m = s.engine, s.masker
    g = torch.Generator().manual_seed(0)
    for layer in s.layers:
        m.set(layer.name, torch.randperm(layer.size, generator=g)[: layer.size // 3].tolist(), True)
    assert any(e._plan(layer).thin for layer in s.layers)
    for layer in s.layers:
        cand = [u for u in range(layer.size) if not m.removed[layer.name][u]][:1]
        m.set(layer.name, cand, True)
        got = e.scores(s.x, s.y, "logit", layer)
        with torch.inference_mode():
            want = true_class_scores(s.work(s.x), s.y, "logit")
        assert (got - want).abs().max() < 1e-4, layer.name
        m.set(layer.name, cand, False)
    assert e.thinned > 0


def test_a_pointwise_conv_runs_as_a_matrix_product_with_its_hooks():
    """graph._pointwise: a plain 1x1 conv as a matrix product on the channels-last view gives the conv's output
    (its forward hooks applied: a mask point's mask), in the channels-last layout; over kept input channels it
    equals the conv of the input with the other channels zeroed. Convs it cannot stand for are left alone."""
    from cswap_nb.engines.graph import _is_pointwise, _pointwise, _pointwise_pays

    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 1, bias=True)
    conv.register_forward_hook(lambda m, i, o: o * torch.tensor([1.0, 1, 0, 1, 1]).view(1, -1, 1, 1))
    x = torch.randn(3, 6, 4, 4).contiguous(memory_format=torch.channels_last)
    assert _is_pointwise(conv)
    got = _pointwise(conv, x)
    assert got.shape == (3, 5, 4, 4) and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got, conv(x), atol=1e-6) and bool((got[:, 2] == 0).all())
    kept = torch.tensor([0, 2, 5])
    zeroed = x.clone()
    zeroed[:, [1, 3, 4]] = 0
    assert torch.allclose(_pointwise(conv, x, kept), conv(zeroed), atol=1e-6)
    for other in (nn.Conv2d(6, 5, 1, stride=2), nn.Conv2d(6, 5, 3), nn.Conv2d(6, 6, 1, groups=2),
                  nn.Conv2d(6, 5, 1, padding=1)):
        assert not _is_pointwise(other)
    assert _pointwise_pays(x, 2048, conv) and not _pointwise_pays(x, 48, conv)  # 3 x 4 x 4 positions
    nchw = _pointwise(conv, x.contiguous())  # the layout a conv gives: contiguous from contiguous input
    assert nchw.is_contiguous() and torch.allclose(nchw, got, atol=1e-6)
    pre = nn.Conv2d(6, 5, 1)
    pre.register_forward_pre_hook(lambda m, i: None)
    assert _is_pointwise(pre) and not _pointwise_pays(x, 2048, pre)  # a pre-hook: the module is called


class GhostBlock(nn.Module):
    """GhostNet's module: a primary conv and a cheap depthwise conv computed from it, both concatenated. Both
    branches leave the primary conv's per-channel region, one after the other (a region read twice)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.primary = nn.Sequential(nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(12, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        p = self.primary(self.stem(x))
        h = torch.cat([p, self.cheap(p)], dim=1)
        return self.fc(self.out(h).mean((2, 3)))


def test_a_region_read_by_two_consumers_in_a_row_is_taken_from_the_cache_with_removals_elsewhere():
    model = _random_bn(GhostBlock(), seed=3)
    x = torch.randn(24, 3, 12, 12)
    y, layers, masker, engine, full_passes = _graph_and_full(model, x)
    try:
        plan = engine._plans["primary.0"]
        assert plan is not None and engine.layer_fallbacks == {}
        assert sorted(r.target for r in plan.materialize) == ["cheap.2", "primary.2"]
        assert not {"cheap.0", "cheap.1"} & {n.target for n in plan.dirty}  # the region is never recomputed
        for layer in layers:  # a removal everywhere: every cache is built by running the graph
            masker.set(layer.name, [0], True)
        for layer in layers:
            masker.set(layer.name, [1], True)
            assert torch.allclose(engine.scores(x, y, "prob", layer), full_passes.scores(x, y, "prob"), atol=1e-6)
    finally:
        masker.remove()


def test_an_engine_adopts_a_checked_plan_only_where_both_plans_name_the_same_nodes():
    """A compact copy's engine takes the masked network's checked plan of a layer (no check of its own) only when
    its own plan recomputes, reads and corrects the same nodes; a plan that differs is checked."""
    model = _random_bn(BranchyNet())
    x = torch.randn(1, 3, 16, 16)
    layers = find_unit_layers(model, x)
    checked = GraphEngine(model, Masker(model, layers), x)
    twin = copy.deepcopy(model)
    masker = Masker(twin, find_unit_layers(twin, x))
    try:
        same = GraphEngine(twin, masker, x, plan_now=False, checked_by=checked)
        a, b = layers[0], layers[-1]
        assert same.prepare(a) and same.adopted == 1
        assert same._plans[a.name].sliceable == checked._plans[a.name].sliceable
        checked._plans[b.name] = checked._plans[a.name]  # another layer's plan under b's name: not adopted
        assert same.prepare(b) and same.adopted == 1
        assert [n.name for n in same._plans[b.name].dirty] != [n.name for n in checked._plans[a.name].dirty]
    finally:
        masker.remove()
        checked.masker.remove()


def test_the_stem_before_every_mask_runs_once_for_all_cache_builds():
    """Nodes upstream of every mask point (a ResNet's stem) have one value for the whole analysis: the first
    cache build computes them, later builds (other layers, other removals) take a copy, and scores still equal
    full passes."""
    model = _bottleneck()
    x = torch.randn(24, 3, 32, 32)
    y, layers, masker, engine, full_passes = _graph_and_full(model, x)
    calls = []
    handle = model.conv1.register_forward_hook(lambda *_: calls.append(1))
    try:
        assert "conv1" in {n.target for n in engine._prefix.nodes}
        for layer in layers[:3]:
            masker.set(layer.name, [0], True)
            assert torch.allclose(engine.scores(x, y, "prob", layer), full_passes.scores(x, y, "prob"), atol=1e-6)
        assert len(calls) == 1 + 3  # one build's prefix, and the three full passes
    finally:
        handle.remove()
        masker.remove()


class _SumWithConstant(nn.Module):
    """A sum of a layer's output and a constant at the end (a hand-written shift): not summed in place."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.relu(y).mean((2, 3))) + 3


def test_norms_that_do_more_and_sums_with_constants_keep_the_fast_path():
    """A sum with a constant keeps every layer's plan (it is not summed in place), and a BatchNorm subclass whose
    forward does more than the norm (timm's BatchNormAct2d: an activation) is never folded into its conv."""
    from timm.layers import BatchNormAct2d

    from cswap_nb.engines.plan import GraphView, _foldable, trace

    model = _random_bn(_SumWithConstant(), seed=4)
    x = torch.randn(24, 3, 8, 8)
    y, layers, masker, engine, full_passes = _graph_and_full(model, x)
    try:
        for layer in layers:
            masker.set(layer.name, [0], True)
            assert torch.allclose(engine.scores(x, y, "prob", layer), full_passes.scores(x, y, "prob"), atol=1e-6)
            masker.set(layer.name, [0], False)
        assert engine.layer_fallbacks == {}
    finally:
        masker.remove()
    for norm, folds in ((nn.BatchNorm2d(8), True), (BatchNormAct2d(8), False)):
        net = nn.Sequential(nn.Conv2d(3, 8, 3), norm, nn.Conv2d(8, 4, 1)).eval()
        graph = trace(net)
        view = GraphView(list(graph.nodes), dict(net.named_modules()), {}, {}, set())
        conv = next(n for n in graph.nodes if n.target == "0")
        assert (_foldable(view, conv, set()) is not None) == folds
