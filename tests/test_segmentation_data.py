"""Segmentation data and metrics: road-scene generator, Cityscapes loader, mIoU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cswap_nb as cs
from cswap_nb import data
from cswap_nb.core import metrics
from cswap_nb.data import scenes
from cswap_nb.data import as_tensors, check_xy
from cswap_nb.core.metrics import confusion_matrix, evaluate_segmentation, iou_per_class, miou, pixel_accuracy

SMALL = (32, 64)


@pytest.fixture(scope="module")
def batch():
    """200 road scenes at 64x128 (about 2 s)."""
    return scenes.road_scenes(200, start=500)


# --- the generator ----------------------------------------------------------------------------

def test_shapes_dtypes_and_normalisation():
    x, y = scenes.road_scenes(3, size=SMALL)
    assert x.shape == (3, 3, *SMALL) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (3, *SMALL) and y.dtype == torch.int64
    assert torch.isfinite(x).all()
    rgb = scenes.denormalize(x)
    assert rgb.shape == x.shape and rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(scenes.normalize(rgb), x, atol=1e-5)  # the images lie in [0, 1] before normalising
    mean = torch.tensor(scenes.SCENE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(scenes.SCENE_STD).view(1, 3, 1, 1)
    assert torch.allclose(x, (rgb - mean) / std, atol=1e-5)
    x0, y0 = scenes.road_scenes(0, size=SMALL)
    assert x0.shape == (0, 3, *SMALL) and y0.shape == (0, *SMALL)


def test_each_image_depends_only_on_seed_and_index():
    x, y = scenes.road_scenes(6, size=SMALL, start=3)
    torch.manual_seed(123)
    np.random.seed(123)
    xw, yw = scenes.road_scenes(2, size=SMALL, start=5)  # another window of the same stream
    assert torch.equal(xw, x[2:4]) and torch.equal(yw, y[2:4])
    rgb, lab = scenes.road_scene(7, SMALL)
    assert torch.equal(torch.from_numpy(lab).long(), y[4])
    assert torch.allclose(scenes.normalize(torch.from_numpy(rgb).permute(2, 0, 1)), x[4])
    assert not torch.equal(x[0], x[1])
    other_x, _ = scenes.road_scenes(6, size=SMALL, start=3, seed=1)
    assert not torch.equal(other_x, x)


def test_labels_are_train_ids(batch):
    _, y = batch
    values = set(torch.unique(y).tolist())
    assert values <= set(range(19)) | {255}
    assert 255 in values  # the ego vehicle's bonnet and street clutter are ignored


def test_every_class_appears_with_a_useful_share(batch):
    _, y = batch
    freq = scenes.class_frequencies(y)
    assert freq.shape == (20,) and freq.sum().item() == pytest.approx(1.0)
    shares = dict(zip(scenes.CITYSCAPES_CLASSES, freq[:19].tolist()))
    assert all(s > 0.001 for s in shares.values()), shares  # every class, even the rare ones, >= 0.1 %
    for small in ("pole", "traffic sign", "person"):
        assert shares[small] > 0.003, shares
    assert shares["road"] == max(shares.values())
    images_with = (torch.stack([torch.bincount(m.flatten().clamp(max=19), minlength=20) for m in y]) > 0).float()
    assert (images_with[:, [scenes.ROAD, scenes.BUILDING, scenes.POLE, scenes.CAR]].mean(0) > 0.9).all()


def test_perspective_layout(batch):
    """Sky above buildings above road; the road widens towards the bottom of the image."""
    _, y = batch
    rows = torch.arange(y.shape[1]).view(1, -1, 1).expand_as(y).float()
    mean_row = {c: rows[y == c].mean().item() for c in (scenes.SKY, scenes.BUILDING, scenes.ROAD)}
    assert mean_row[scenes.SKY] < mean_row[scenes.BUILDING] < mean_row[scenes.ROAD]
    # share of road among the labelled pixels of each row (the ego vehicle's bonnet is ignored)
    road_per_row = (y == scenes.ROAD).float().sum((0, 2)) / (y != 255).float().sum((0, 2))
    lower = road_per_row[y.shape[1] // 2:]
    assert (lower[1:] >= lower[:-1] - 0.02).all() and lower[-8] > 2 * road_per_row[y.shape[1] // 2 - 2]


def test_colour_alone_does_not_identify_the_class(batch):
    """Single-pixel RGB classifiers fitted on 100 images and scored on 100 others stay far below 90 %."""
    x, y = batch
    rgb = scenes.denormalize(x).permute(0, 2, 3, 1)
    fit, ev = slice(0, 100), slice(100, 200)
    rf, lf = rgb[fit].reshape(-1, 3), y[fit].reshape(-1)
    re, le = rgb[ev].reshape(-1, 3), y[ev].reshape(-1)
    rf, lf, re, le = rf[lf != 255], lf[lf != 255], re[le != 255], le[le != 255]
    means = torch.stack([rf[lf == c].mean(0) for c in range(19)])
    nearest_mean = (torch.cdist(re, means).argmin(1) == le).float().mean().item()
    # the best colour-only rule at 16 levels per channel: the majority class of each colour bin
    code = lambda c: ((c * 16).long().clamp(max=15) * torch.tensor([256, 16, 1])).sum(1)  # noqa: E731
    table = torch.zeros(16 ** 3, 19)
    table.index_put_((code(rf), lf), torch.ones(len(lf)), accumulate=True)
    by_colour = (table.argmax(1)[code(re)] == le).float().mean().item()
    majority = torch.bincount(le).max().item() / len(le)
    assert nearest_mean < 0.4, nearest_mean
    assert by_colour < 0.6, by_colour  # measured about 0.47 (the majority class alone: about 0.3)
    assert by_colour > majority  # colour is a cue, just not a sufficient one


def test_size_and_argument_errors():
    for size in [(60, 128), (64, 100), (0, 64), (64,), "64x128", (64.5, 128)]:
        with pytest.raises(ValueError, match="multiples of 8"):
            scenes.road_scenes(1, size=size)
    with pytest.raises(ValueError, match="n must be an integer >= 0, got -1"):
        scenes.road_scenes(-1)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        scenes.road_scenes(1, seed=-2)
    with pytest.raises(ValueError, match="start must be an integer"):
        scenes.road_scenes(1, start=1.5)


def test_colorize_and_palette():
    assert len(scenes.CITYSCAPES_CLASSES) == 19 and len(scenes.CITYSCAPES_PALETTE) == 19
    assert scenes.CITYSCAPES_CLASSES[0] == "road" and scenes.CITYSCAPES_CLASSES[18] == "bicycle"
    assert scenes.CITYSCAPES_PALETTE[0] == (128, 64, 128) and scenes.CITYSCAPES_PALETTE[13] == (0, 0, 142)
    labels = torch.tensor([[[0, 13], [255, 18]]])
    img = scenes.colorize(labels)
    assert img.shape == (1, 2, 2, 3) and img.dtype == np.uint8
    assert img[0, 0, 0].tolist() == [128, 64, 128] and img[0, 0, 1].tolist() == [0, 0, 142]
    assert img[0, 1, 0].tolist() == [0, 0, 0] and img[0, 1, 1].tolist() == [119, 11, 32]
    assert scenes.colorize(np.array([[10]], dtype=np.uint8)).tolist() == [[[70, 130, 180]]]
    with pytest.raises(TypeError, match="integer labels"):
        scenes.colorize(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        scenes.colorize(torch.tensor([[-1, 0]]))
    with pytest.raises(ValueError, match="denormalize expects"):
        scenes.denormalize(torch.zeros(2, 1, 4, 4))


def test_load_road_scenes_splits_are_disjoint_and_stable():
    ds = data.load_road_scenes(train=4, test=3, size=SMALL)
    assert ds.name == "roads32x64" and ds.classes == scenes.CITYSCAPES_CLASSES and ds.num_classes == 19
    assert ds.train.x.shape == (4, 3, *SMALL) and ds.test.y.shape == (3, *SMALL)
    assert ds.calib is ds.train
    x0, y0 = scenes.road_scenes(1, size=SMALL, start=data.ROAD_TEST_START)
    assert torch.equal(ds.test.x[:1], x0) and torch.equal(ds.test.y[:1], y0)
    bigger = data.load_road_scenes(train=5, test=2, size=SMALL)
    assert torch.equal(bigger.test.x, ds.test.x[:2]) and torch.equal(bigger.train.x[:4], ds.train.x)
    assert data.DATASETS["roads"] is data.load_road_scenes
    # options reach the loader by name (notebook 05 draws a pool of 300 scenes this way)
    named = data.load_dataset("roads", train=4, test=3, val=1, size=SMALL)
    assert torch.equal(named.train.x, ds.train.x) and torch.equal(named.test.y, ds.test.y) and len(named.val.y) == 1
    with pytest.raises(ValueError, match=r"dataset 'roads' takes no option\(s\) \['pool'\]; it takes \[.*'train'"):
        data.load_dataset("roads", pool=300)
    with pytest.raises(ValueError, match="train must be a positive number of images, got 0"):
        data.load_road_scenes(train=0, test=1, size=SMALL)


# --- tensors and validation -------------------------------------------------------------------

def test_check_xy_accepts_masks_and_explains_mistakes():
    x = torch.zeros(2, 3, 8, 16)
    check_xy(x, torch.zeros(2, 8, 16, dtype=torch.long))
    check_xy(x, torch.full((2, 8, 16), 255, dtype=torch.uint8))
    check_xy(x, torch.zeros(2, 1, 2, dtype=torch.long))  # labels at another resolution are allowed
    with pytest.raises(ValueError, match=r"y must be a 1-D tensor of class indices or \(N, H, W\).*y\[:, 0\]"):
        check_xy(x, torch.zeros(2, 1, 8, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"masks y \(2, 8, 16\) need images x of shape \(N, C, H, W\)"):
        check_xy(torch.zeros(2, 8, 16), torch.zeros(2, 8, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="x has 2 samples but y has 3 labels"):
        check_xy(x, torch.zeros(3, 8, 16, dtype=torch.long))
    with pytest.raises(TypeError, match=r"integer per-pixel class indices \(masks\), got dtype torch.float32"):
        check_xy(x, torch.zeros(2, 8, 16))
    with pytest.raises(ValueError, match="empty side"):
        check_xy(x, torch.zeros(2, 0, 16, dtype=torch.long))


def test_as_tensors_with_masks():
    x, y = scenes.road_scenes(5, size=SMALL)
    ds = torch.utils.data.TensorDataset(x, y)

    class NumpyMasks(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return x[i], y[i].numpy().astype(np.uint8)

    class PILMasks(NumpyMasks):
        def __getitem__(self, i):
            return x[i], Image.fromarray(y[i].numpy().astype(np.uint8))

    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    for source in [(x, y), data.Split(x, y), ds, loader, NumpyMasks(), PILMasks()]:
        xx, yy = as_tensors(source)
        assert torch.equal(xx, x) and torch.equal(yy, y), type(source).__name__
        assert yy.dtype == torch.int64
    xx, yy = as_tensors(NumpyMasks(), max_samples=2)
    assert torch.equal(yy, y[:2])


# --- metrics ----------------------------------------------------------------------------------

def test_confusion_matrix_miou_and_pixel_accuracy_by_hand():
    target = torch.tensor([[0, 0, 1, 1],
                           [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1],
                         [2, 0, 3, 1]])  # the prediction under the ignored pixel does not count
    conf = confusion_matrix(pred, target, num_classes=4)
    expected = torch.tensor([[1, 1, 0, 0],   # class 0: one right, one taken for 1
                             [0, 3, 0, 0],   # class 1: all three right
                             [1, 0, 1, 0],   # class 2: one right, one taken for 0
                             [0, 0, 0, 0]])  # class 3: never labelled (its only prediction is ignored)
    assert torch.equal(conf, expected) and conf.dtype == torch.int64
    # IoU: class 0 = 1 / (2 + 2 - 1) = 1/3; class 1 = 3 / (3 + 4 - 3) = 3/4; class 2 = 1 / (2 + 1 - 1) = 1/2
    iou = iou_per_class(conf)
    assert iou[:3].tolist() == pytest.approx([1 / 3, 3 / 4, 1 / 2]) and iou[3].isnan()
    assert miou(conf) == pytest.approx(100 * (1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert pixel_accuracy(conf) == pytest.approx(100 * 5 / 7)
    # a class predicted but never labelled has IoU 0 and counts in the mean
    conf2 = confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 0]), num_classes=4)
    assert miou(conf2) == pytest.approx(100 * (1 / 2 + 0) / 2)


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 3\] or be 255"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match=r"predicted classes must lie in \[0, 3\]"):
        confusion_matrix(torch.tensor([0, 7]), torch.tensor([0, 1]), 4)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 4)
    with pytest.raises(TypeError, match="argmax"):
        confusion_matrix(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="no labelled"):
        miou(confusion_matrix(torch.tensor([1]), torch.tensor([255]), 4))


class _Oracle(torch.nn.Module):
    """Returns stored logits for the image whose index is written in pixel (0, 0, 0).

    Records whether it ran in eval and inference mode."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)
        self.bn = torch.nn.BatchNorm2d(3)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        return self.logits[x[:, 0, 0, 0].long()]


def _indexed(n, size):
    x = torch.zeros(n, 3, *size)
    x[:, 0, 0, 0] = torch.arange(n).float()
    return x


def test_evaluate_segmentation_upsamples_stride8_logits():
    # stripes 8 px wide: one-hot logits at 1/8 resolution, upsampled bilinearly, give them back exactly
    h, w = 16, 32
    cols = torch.arange(w) // 8  # 4 stripes
    y = torch.stack([cols.expand(h, w) % 3, (cols.expand(h, w) + 1) % 3])
    y[0, 0, :3] = 255
    low = y[:, 4::8, 4::8].clone()
    low[low == 255] = 0
    logits = F.one_hot(low, 19).permute(0, 3, 1, 2).float() * 5
    model = _Oracle(logits).train()
    res = evaluate_segmentation(model, (_indexed(2, (h, w)), y))
    assert res["miou"] == pytest.approx(100.0) and res["pixel_acc"] == pytest.approx(100.0)
    assert set(res["per_class_iou"]) == {"road", "sidewalk", "building"}  # classes absent from both are left out
    assert model.training and model.seen == [(False, True)]  # eval + inference mode, mode restored
    assert cs.evaluate(model, (_indexed(2, (h, w)), y)) == pytest.approx(100.0)  # evaluate dispatches on masks


def test_evaluate_segmentation_on_road_scenes_matches_a_manual_computation():
    size = (64, 128)
    x, y = scenes.road_scenes(6, size=size)
    low = y[:, 4::8, 4::8].clone()
    low[low == 255] = 0
    logits = F.one_hot(low, 19).permute(0, 3, 1, 2).float()  # (6, 19, 8, 16)
    model = _Oracle(logits)
    xi = _indexed(6, size)
    res = evaluate_segmentation(model, (xi, y), batch_size=4)
    up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)
    conf = confusion_matrix(up, y, 19)
    assert res["miou"] == pytest.approx(miou(conf)) and res["pixel_acc"] == pytest.approx(pixel_accuracy(conf))
    # labels known only on the 1/8 grid: thin and small objects get lost (measured: 82 % pixels, 48 % mIoU)
    assert res["pixel_acc"] > 75 and res["miou"] > 35
    assert res["per_class_iou"]["road"] > 80
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xi, y), batch_size=4)
    assert cs.evaluate(model, loader) == pytest.approx(res["miou"])
    assert metrics.segmentation_confusion(model, (xi, y)).sum() == int((y != 255).sum())


def test_chunked_upsampling_gives_the_same_scores(monkeypatch):
    x, y = scenes.road_scenes(5, size=SMALL)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 19, 8, stride=8)  # stride-8 logits from the image itself
    whole = evaluate_segmentation(model, (x, y))
    monkeypatch.setattr(metrics, "_UPSAMPLE_ELEMENTS", 19 * SMALL[0] * SMALL[1] * 2)  # two images at a time
    assert evaluate_segmentation(model, (x, y)) == whole


def test_evaluate_segmentation_errors():
    y = torch.zeros(2, 8, 16, dtype=torch.long)
    model = _Oracle(torch.zeros(2, 4, 1, 2))
    with pytest.raises(ValueError, match="num_classes=5 but the model predicts 4 classes"):
        evaluate_segmentation(model, (_indexed(2, (8, 16)), y), num_classes=5)
    with pytest.raises(ValueError, match="masks"):
        evaluate_segmentation(model, (_indexed(2, (8, 16)), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="every pixel is ignored"):
        evaluate_segmentation(model, (_indexed(2, (8, 16)), torch.full_like(y, 255)))
    with pytest.raises(ValueError, match=r"target classes must lie in \[0, 3\]"):
        evaluate_segmentation(model, (_indexed(2, (8, 16)), torch.full_like(y, 6)))


# --- Cityscapes from local files ------------------------------------------------------------------

def _label_pattern(k: int) -> np.ndarray:
    """64x128 labelIds: 4x8 blocks cycling through every id 0-33 (incl. the unmapped ones) and 255."""
    ids = np.array(list(range(34)) + [255], dtype=np.uint8)
    rows, cols = np.meshgrid(np.arange(64) // 4, np.arange(128) // 8, indexing="ij")
    return ids[(rows * 16 + cols + k) % len(ids)]


@pytest.fixture
def cityscapes_root(tmp_path):
    """A tiny Cityscapes tree named as torchvision expects: 2 cities, 2 images each, in val."""
    rng = np.random.default_rng(0)
    for city in ("bochum", "aachen"):
        (tmp_path / "leftImg8bit" / "val" / city).mkdir(parents=True)
        (tmp_path / "gtFine" / "val" / city).mkdir(parents=True)
        for k in range(2):
            stem = f"{city}_000000_{k:06d}"
            Image.fromarray(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)).save(
                tmp_path / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png")
            Image.fromarray(_label_pattern(k + (city == "bochum") * 2)).save(
                tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png")
    return tmp_path


def test_label_table_matches_torchvision():
    from torchvision.datasets import Cityscapes

    for c in Cityscapes.classes:
        if c.id >= 0:
            expected = c.train_id if c.train_id >= 0 else 255
            assert data.cityscapes_train_ids(np.array([c.id], dtype=np.uint8))[0] == expected, c


def test_load_cityscapes_maps_label_ids_pixel_by_pixel(cityscapes_root):
    split = data.load_cityscapes(cityscapes_root, split="val", size=None)
    assert split.x.shape == (4, 3, 64, 128) and split.x.dtype == torch.float32
    assert split.y.shape == (4, 64, 128) and split.y.dtype == torch.int64
    table = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    # sorted by file name: aachen (patterns 0, 1) before bochum (patterns 2, 3)
    for i, k in enumerate([0, 1, 2, 3]):
        ids = _label_pattern(k)
        expected = np.vectorize(lambda v: table.get(int(v), 255))(ids)
        assert np.array_equal(split.y[i].numpy(), expected), i
    assert set(split.y.unique().tolist()) == set(range(19)) | {255}
    image = np.array(Image.open(cityscapes_root / "leftImg8bit/val/aachen/aachen_000000_000001_leftImg8bit.png"))
    assert torch.allclose(scenes.denormalize(split.x[1]), torch.from_numpy(image).permute(2, 0, 1) / 255, atol=1e-5)


def test_load_cityscapes_resizes_and_limits(cityscapes_root):
    split = data.load_cityscapes(cityscapes_root, size=(32, 64), max_images=3)
    assert split.x.shape == (3, 3, 32, 64) and split.y.shape == (3, 32, 64)
    full = data.load_cityscapes(cityscapes_root, size=None, max_images=3)
    # nearest-neighbour labels: every resized label is one of the labels of its 2x2 source block
    blocks = full.y.view(3, 32, 2, 64, 2).permute(0, 1, 3, 2, 4).reshape(3, 32, 64, 4)
    assert (blocks == split.y[..., None]).any(-1).all()
    smooth = F.avg_pool2d(full.x, 2)
    assert (split.x - smooth).abs().mean() < 0.5  # bilinear, close to a 2x2 average


def test_load_cityscapes_errors(tmp_path, cityscapes_root):
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/val/<city>/.*_leftImg8bit\.png.*gtFine_labelIds\.png"):
        data.load_cityscapes(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="missing.*leftImg8bit/train"):
        data.load_cityscapes(cityscapes_root, split="train")
    with pytest.raises(ValueError, match="split must be 'train', 'val' or 'test'"):
        data.load_cityscapes(cityscapes_root, split="validation")
    (cityscapes_root / "gtFine/val/aachen/aachen_000000_000000_gtFine_labelIds.png").unlink()
    with pytest.raises(FileNotFoundError, match="label image .*aachen_000000_000000_gtFine_labelIds.png"):
        data.load_cityscapes(cityscapes_root)
