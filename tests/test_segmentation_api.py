"""C-SWAP on dense predictions: scores per (image, class), calibration choice, planted units."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cswap_nb as cs
from cswap_nb.pruning.api import select_segmentation_calibration
from cswap_nb.core.causal import class_pixel_scores, pixel_classes, true_class_scores
from cswap_nb.experiments.comparison import curves, retention_auc, tradeoff_scores


def _scenes(n: int = 40, seed: int = 0, size: int = 16):
    """Smooth random 3-channel images; a pixel's label is its strongest channel, border ignored."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.randn(n, 3, size, size, generator=g), 3, 1, 1) * 3
    y = x.argmax(1)
    y[:, :, :1] = 255
    return x, y


class Planted(nn.Module):
    """Hidden 1x1 conv with 4 units: unit c copies input channel c (c < 3), unit 3 is dead;
    class c's logit is 4 x unit c, computed at stride 2 (upsampled by the scorer)."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 3, 1)
        with torch.no_grad():
            self.hidden.weight.zero_()
            self.hidden.bias.zero_()
            for c in range(3):
                self.hidden.weight[c, c] = 1.0
            self.head.weight.zero_()
            self.head.bias.zero_()
            for c in range(3):
                self.head.weight[c, c] = 4.0

    def forward(self, x):
        return self.head(self.bn(self.hidden(x[:, :, ::2, ::2])))


def test_class_pixel_scores_match_a_direct_computation():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 4, 8)
    masks = torch.randint(0, 5, (3, 32, 64))
    masks[0, :5] = 255
    masks[1][masks[1] == 2] = 255  # class 2 absent from image 1
    got = class_pixel_scores(logits, masks)
    # the once-computed pixel index (what the engines pass on every candidate) gives the same values
    assert torch.equal(class_pixel_scores(logits, masks, index=pixel_classes(masks, 5)).nan_to_num(-1),
                       got.nan_to_num(-1))
    # built where the masks are (the engines keep masks and logits on the model's device)
    assert all(t.device.type == "meta" for t in pixel_classes(masks.to("meta"), 5))
    probs = F.interpolate(logits, size=(32, 64), mode="bilinear", align_corners=False).softmax(1)
    for i in range(3):
        for c in range(5):
            sel = masks[i] == c
            if sel.any():
                assert float(got[i, c]) == pytest.approx(float(probs[i, c][sel].mean()), abs=1e-6)
            else:
                assert torch.isnan(got[i, c])
    # the per-image score averages the true-class probability over all labelled pixels
    per_image = true_class_scores(logits, masks)
    for i in range(3):
        valid = masks[i] != 255
        ref = probs[i].gather(0, masks[i].clamp(max=4)[None])[0][valid].mean()
        assert float(per_image[i]) == pytest.approx(float(ref), abs=1e-6)


def test_segmentation_calibration_covers_every_class():
    x, y = _scenes(60)
    y[:50][y[:50] == 2] = 0  # class 2 only in the last 10 images
    xs, ys, pairs = select_segmentation_calibration(x, y, samples_per_class=5, num_classes=3, seed=1)
    per_class = torch.bincount(pairs[:, 1], minlength=3)
    assert (per_class >= 5).all()
    assert len(xs) < 60  # stopped once every class had its images
    # pairs point at (kept image, class) with at least MIN_CLASS_PIXELS pixels of that class
    for i, c in pairs.tolist():
        assert int((ys[i] == c).sum()) >= cs.pruning.api.MIN_CLASS_PIXELS
    # all images with None
    xa, _, _ = select_segmentation_calibration(x, y, samples_per_class=None, num_classes=3)
    assert len(xa) == 60


def test_a_class_in_too_few_images_is_left_out_with_a_warning():
    x, y = _scenes(30)
    y[1:][y[1:] == 2] = 0  # class 2 in one image only
    with pytest.warns(UserWarning, match=r"\[2\]"):
        _, _, pairs = select_segmentation_calibration(x, y, samples_per_class=None, num_classes=3, min_per_class=2)
    assert 2 not in pairs[:, 1].tolist()


@pytest.mark.parametrize("inference", ["per-class", "general"])
def test_planted_units_in_a_segmentation_model(inference):
    x, y = _scenes(40)
    model = Planted().eval()
    before = copy.deepcopy(model.state_dict())
    res = cs.prune(model, (x, y), alpha=0.05, samples_per_class=10, inference=inference, scope="all",
                   progress=False, eval_data=(x, y))
    labels = {int(r.unit): r.label for r in res.labels.itertuples()}
    assert labels[3] == "neutral"  # the dead unit
    assert all(labels[c] == "critical" for c in range(3))
    assert res.pruned_units == {"bn": [3]} or res.pruned_units == {"hidden": [3]}
    assert res.metric_name == "miou_pct" and res.metric_after == pytest.approx(res.metric_before)
    assert res.equivalence_max_abs_diff <= 1e-5
    for k, v in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k])


def test_fast_and_naive_engines_agree_on_a_trained_fcn():
    x, y = _scenes(60, seed=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1), nn.BatchNorm2d(12), nn.ReLU(),
                          nn.Conv2d(12, 12, 3, 1, 1), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 3, 1))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        loss = cs.zoo.training.task_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    runs = {e: cs.prune(model, (x, y), alpha=0.05, samples_per_class=15, engine=e, progress=False)
            for e in ("fast", "naive")}
    assert runs["fast"].labels.label.tolist() == runs["naive"].labels.label.tolist()
    assert runs["fast"].engine["forward_equivalents"] < runs["naive"].engine["forward_equivalents"]
    # taylor on masks runs and ranks; the Captum criteria refuse masks clearly
    res = cs.prune(model, (x, y), "taylor", ratio=0.25, progress=False)
    assert 0 < res.params_removed_pct < 100
    with pytest.raises(ValueError, match="segmentation masks"):
        cs.prune(model, (x, y), "gradxact", ratio=0.25, progress=False)


def test_mask_labels_out_of_range_and_wrong_outputs_are_refused():
    x, y = _scenes(10)
    y[0, 5, 5] = 7
    with pytest.raises(ValueError, match="mask labels must lie in"):
        cs.prune(Planted().eval(), (x, y), progress=False)
    x, y = _scenes(10)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    with pytest.raises(ValueError, match=r"\(N, classes, h, w\)"):
        cs.prune(flat, (x, y), progress=False)


def test_retention_auc_and_tradeoff_scores():
    assert retention_auc([(0, 1), (0.5, 1), (1, 0)], 1.0) == pytest.approx(0.75, abs=1e-6)
    assert retention_auc([(0, 1), (0.5, 0.5)], 0.5) == pytest.approx(0.75, abs=1e-6)
    with pytest.raises(ValueError, match="largest compression"):
        retention_auc([(0, 1), (0.5, 0.5)], 0.6)
    records = [
        {"method": "a", "budget": "alpha=0.05", "params_removed_pct": 40.0, "metric_before": 80.0, "metric_after": 80.0},
        {"method": "a", "budget": "alpha=0.01", "params_removed_pct": 60.0, "metric_before": 80.0, "metric_after": 40.0},
        {"method": "b", "budget": "ratio=0.5", "params_removed_pct": 50.0, "metric_before": 80.0, "metric_after": 40.0},
        {"method": "b", "budget": "same-per-layer-counts", "params_removed_pct": 40.0, "metric_before": 80.0,
         "metric_after": 80.0},
    ]
    assert curves(records)["b"] == [(0.0, 1.0), (0.5, 0.5)]
    scores = tradeoff_scores(records)
    assert scores["a"]["upto_removed_pct"] == pytest.approx(50.0)  # the range every method reached
    # a: flat at 1 to 0.4, then down to 0.75 at 0.5 -> (0.4 + 0.5*0.1*(1+0.75)) / 0.5
    assert scores["a"]["retention_auc"] == pytest.approx((0.4 + 0.0875) / 0.5, abs=1e-4)
    assert scores["b"]["retention_auc"] == pytest.approx(0.75, abs=1e-4)
    assert scores["a"]["retention_auc"] > scores["b"]["retention_auc"]
    assert np.isfinite(scores["a"]["retention_auc"])


@pytest.mark.slow  # two DDRNet analyses: ~21 s
def test_ddrnet_fast_engine_reproduces_the_naive_decisions():
    from cswap_nb.models.ddrnet import branch_of

    torch.manual_seed(0)
    model = cs.models.ddrnet23_slim(num_classes=4, width=4).eval()
    x, y = cs.data.scenes.road_scenes(10, size=(32, 64), seed=1)
    y = torch.where(y == 255, y, y % 4)  # 4 coarse classes
    parts = cs.engines.passes.sequential_parts(model)
    with torch.no_grad():
        chained = x[:2]
        for _, fn, _ in parts:
            chained = fn(chained)
        assert torch.allclose(chained, model(x[:2]), atol=1e-6)
    runs = {e: cs.prune(model, (x, y), alpha=0.2, samples_per_class=None, engine=e, scope="all", progress=False)
            for e in ("fast", "naive")}
    assert runs["fast"].engine["fallback"] is None
    assert runs["fast"].labels.label.tolist() == runs["naive"].labels.label.tolist()
    assert runs["fast"].engine["forward_equivalents"] < 0.8 * runs["naive"].engine["forward_equivalents"]
    assert runs["fast"].equivalence_max_abs_diff <= 1e-4
    parts_seen = {branch_of(layer["name"]) for layer in runs["fast"].layers}
    assert parts_seen == set(cs.models.ddrnet.BRANCHES)
    with pytest.raises(ValueError, match="not a DDRNet module"):
        branch_of("fc")


@pytest.mark.parametrize("score", ["prob", "logprob"])
def test_pixel_scores_survive_logits_far_below_their_image_maximum(score):
    """The scores shift each image by its largest logit before upsampling; a region whose every class lies
    ~200 below that maximum would underflow to exp(-200) = 0 and must be scored the safe way."""
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 4, 8)
    logits[0, :, :, :4] -= 200.0  # the left half of image 0: every class far below the right half
    masks = torch.randint(0, 4, (2, 32, 64))
    z = F.interpolate(logits, size=(32, 64), mode="bilinear", align_corners=False)
    want = z.log_softmax(1).gather(1, masks[:, None]).squeeze(1)
    got = true_class_scores(logits, masks, score)
    ref = want.flatten(1).mean(1) if score == "logprob" else want.exp().flatten(1).mean(1)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("score", ["prob", "logprob", "logit"])
def test_pixel_scores_in_groups_of_images_equal_one_group_bit_for_bit(score, monkeypatch):
    """_own_pixel_scores upsamples, exponentiates (in place) and sums a few images at a time, so that each step
    works in the CPU's cache. The groups must change nothing: every score equals the one-group computation
    exactly. An underflowing image sends its group to the per-pixel logsumexp (one group: every image), so
    there the scores agree to rounding."""
    from cswap_nb.core import causal

    torch.manual_seed(2)
    logits = torch.randn(5, 4, 4, 8).contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, 4, (5, 32, 64))
    same_size = torch.randint(0, 4, (5, 4, 8))  # masks at the logits' size: nothing to upsample
    before = logits.clone()
    for chunk in (1, 10**9):
        monkeypatch.setattr(causal, "PIXEL_CHUNK", chunk)
        direct = logits.log_softmax(1).gather(1, same_size[:, None]).squeeze(1).flatten(1).mean(1)
        got = true_class_scores(logits, same_size, "logprob")
        assert torch.allclose(got, direct, atol=1e-6)
    assert torch.equal(logits, before)  # the in-place exp never reaches the caller's logits
    for underflow in (False, True):
        if underflow:
            logits[1, :, :, :4] -= 200.0
        monkeypatch.setattr(causal, "PIXEL_CHUNK", 10**9)
        whole = true_class_scores(logits, masks, score)
        pairs = class_pixel_scores(logits, masks, score).nan_to_num(-1)
        for chunk in (1, 2 * 4 * 32 * 64):  # one image a group; two
            monkeypatch.setattr(causal, "PIXEL_CHUNK", chunk)
            got, got_pairs = true_class_scores(logits, masks, score), class_pixel_scores(logits, masks, score)
            if underflow:
                assert torch.allclose(got, whole, atol=1e-6) and torch.isfinite(got).all()
            else:
                assert torch.equal(got, whole) and torch.equal(got_pairs.nan_to_num(-1), pairs)
