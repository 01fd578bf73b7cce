"""A researcher's own images: calibration from an ImageFolder, read in batches (cs.stream_calibration).

Real Fashion-MNIST images of the shipped subset are written as PNG files, one folder per class, and
read back with torchvision's ImageFolder; the shipped resnet18-fashion checkpoint classifies them.
"""
from __future__ import annotations

import warnings
import weakref

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms

import cswap_nb as cs
from cswap_nb.core.calibration import correctly_classified
from cswap_nb.data import FASHION_CLASSES, FASHION_MEAN, FASHION_STD, as_tensors, read_fashion_subset

PER_CLASS = 30  # images per class in the folder: 300 in all
TRANSFORM = transforms.Compose([transforms.Grayscale(1), transforms.ToTensor(),
                                transforms.Normalize((FASHION_MEAN,), (FASHION_STD,))])


def _write_folder(root, names: list[str]) -> None:
    """The first PER_CLASS calibration images of each class as PNG files under ``root/names[class]``;
    file names follow the subset's order, so every folder order reads a class's images in one order."""
    z = read_fashion_subset()
    for c, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in np.flatnonzero(z["calib_y"] == c)[:PER_CLASS]:
            Image.fromarray(z["calib_x"][i]).save(root / name / f"{i:05d}.png")


@pytest.fixture(scope="module")
def fashion_model(zoo_load):
    model, _ = zoo_load("resnet18-fashion")
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two folders of the same 300 images: ``indexed`` (folders "0" to "9", the model's order) and
    ``named`` (folders named after the classes: alphabetical order, which is not the model's)."""
    root = tmp_path_factory.mktemp("fashion-png")
    _write_folder(root / "indexed", [str(c) for c in range(10)])
    _write_folder(root / "named", [n.replace("/", "-") for n in FASHION_CLASSES])
    return root


def _indexed(folders, **kw):
    return torchvision.datasets.ImageFolder(folders / "indexed", TRANSFORM, **kw)


class Counting(torch.utils.data.Dataset):
    """A Dataset that counts its reads and the most samples alive at once (weak references)."""

    def __init__(self, inner):
        self.inner, self.reads, self.peak = inner, 0, 0
        self.classes = inner.classes
        self._alive = weakref.WeakSet()

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        x, y = self.inner[i]
        self.reads += 1
        self._alive.add(x)
        self.peak = max(self.peak, len(self._alive))
        return x, y


@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_selection_equals_in_memory(fashion_model, folders, seed):
    data = _indexed(folders)
    x, y = as_tensors(data)
    ref_x, ref_y = cs.select_calibration(fashion_model, x, y, 5, seed=seed)
    got_x, got_y = cs.stream_calibration(fashion_model, data, 5, seed=seed)
    assert torch.equal(got_y, ref_y) and torch.equal(got_x, ref_x)
    assert len(got_y) == 50


def test_dataset_is_never_read_whole(fashion_model, folders):
    data = Counting(_indexed(folders))
    n = len(data)
    x, y = cs.stream_calibration(fashion_model, data, 4, seed=0, batch_size=32)
    assert len(y) == 40
    assert data.reads == n + 40  # each image predicted once, the chosen ones read once more
    assert data.peak <= 32 + 1 < n  # a batch at a time
    ref_x, ref_y = cs.select_calibration(fashion_model, *as_tensors(_indexed(folders)), 4, seed=0)
    assert torch.equal(y, ref_y) and torch.equal(x, ref_x)


def test_target_transform_maps_folder_order(fashion_model, folders):
    named = torchvision.datasets.ImageFolder(folders / "named", TRANSFORM)
    to_model = {i: [n.replace("/", "-") for n in FASHION_CLASSES].index(name) for i, name in enumerate(named.classes)}
    assert list(to_model.values()) != list(range(10))  # alphabetical order is not the model's
    named.target_transform = to_model.__getitem__
    for seed in (0, 3):
        ref_x, ref_y = cs.stream_calibration(fashion_model, _indexed(folders), 5, seed=seed)
        got_x, got_y = cs.stream_calibration(fashion_model, named, 5, seed=seed)
        assert torch.equal(got_y, ref_y) and torch.equal(got_x, ref_x)


def test_warning_names_classes_with_few_correct_samples(fashion_model, folders):
    data = _indexed(folders)
    x, y = as_tensors(data)
    correct = correctly_classified(fashion_model, x, y)
    short = {c: int(correct[y == c].sum()) for c in range(10) if int(correct[y == c].sum()) < PER_CLASS}
    assert short  # the model misclassifies a few of these 300 images
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, got_y = cs.stream_calibration(fashion_model, data, PER_CLASS, seed=0)
    text = " ".join(str(w.message) for w in caught)
    for c, n in short.items():
        assert f"class {c}: only {n} correctly classified samples" in text
    assert f"fewer than samples_per_class={PER_CLASS}" in text
    assert len(got_y) == int(correct.sum())


def test_folder_with_other_class_count(fashion_model, folders, tmp_path):
    for c in range(3):
        (tmp_path / str(c)).symlink_to(folders / "indexed" / str(c))
    data = torchvision.datasets.ImageFolder(tmp_path, TRANSFORM)
    with pytest.raises(ValueError, match="the dataset has 3 classes .* but the model has 10 outputs"):
        cs.stream_calibration(fashion_model, data, 3)
    with pytest.raises(ValueError, match="the dataset has 3 classes .* but the model has 10 outputs"):
        cs.prune(fashion_model, data, samples_per_class=3, progress=False)
    data.target_transform = lambda i: i + 8  # a subset of the model's classes, mapped: labels 8, 9, 10
    with pytest.raises(ValueError, match=r"label 10 \(sample 60\) is outside \[0, 9\]: the model has 10 outputs"):
        cs.stream_calibration(fashion_model, data, 3)


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_no_class_can_be_tested():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0]))  # always predicts class 3
    data = _Pairs(torch.randn(9, 4), torch.tensor([0, 1, 2] * 3))
    with pytest.raises(ValueError, match="no class has the 2 correctly classified calibration sample.*"
                                         "class 0: 0 of 3, class 1: 0 of 3, class 2: 0 of 3"):
        cs.stream_calibration(model, data, 2)
    data.y = torch.tensor([0, 1, 2, 3, 3, 0, 0, 1, 2])  # class 3 is predicted right: the error names 0, 1, 2
    with pytest.raises(ValueError, match="class 0 has no correctly classified calibration sample.*"
                                         "Classes with too few .*class 0: 0 of 3, class 1: 0 of 2, class 2: 0 of 2"):
        cs.stream_calibration(model, data, 2)


def test_prune_an_image_folder(tmp_path, zoo_load):
    """End to end: cs.prune on a folder of digits PNGs with the shipped resnet18-digits checkpoint."""
    model, digits = zoo_load("resnet18-digits")
    x, y = digits.test
    for c in range(10):
        (tmp_path / str(c)).mkdir()
        for i in torch.nonzero(y == c).flatten()[:8].tolist():
            img = ((x[i, 0] * 0.5 + 0.5).clamp(0, 1) * 255).round().byte().numpy()
            Image.fromarray(img).convert("RGB").save(tmp_path / str(c) / f"{i:04d}.png")
    data = Counting(torchvision.datasets.ImageFolder(tmp_path, transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])))
    res = cs.prune(model, data, alpha=0.05, samples_per_class=3, progress=False)
    assert res.summary()["calib_samples"] == 30
    assert data.reads == 2 + 80 + 30  # the probe's two images, the predictions, the chosen images
    ref = cs.prune(model, as_tensors(data), alpha=0.05, samples_per_class=3, progress=False)
    assert res.labels["label"].tolist() == ref.labels["label"].tolist()
    data.reads = data.peak = 0
    accuracy = cs.evaluate(model, data, batch_size=16)
    assert data.peak <= 16 + 1 and data.reads == 1 + 80  # evaluate reads a Dataset in batches too
    assert accuracy == cs.evaluate(model, as_tensors(data)) > 80


def test_a_dataloader_in_order_streams_and_a_shuffling_one_is_read_whole(fashion_model, folders):
    data = Counting(_indexed(folders))
    ref = cs.stream_calibration(fashion_model, data, 3, seed=2)
    loader = torch.utils.data.DataLoader(data, batch_size=100)
    data.reads = 0
    got = cs.stream_calibration(fashion_model, loader, 3, seed=2)
    assert data.reads == len(data) + 30 and all(torch.equal(a, b) for a, b in zip(got, ref))
    assert cs.data.stream_source(torch.utils.data.DataLoader(data, batch_size=100, shuffle=True)) is None
    assert cs.data.stream_source(torch.utils.data.DataLoader(data, batch_size=100, drop_last=True)) is None


def test_evaluate_reads_a_segmentation_dataset_in_batches():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1).eval()
    x = torch.randn(10, 3, 8, 8)
    masks = torch.randint(0, 4, (10, 8, 8))
    masks[:, 0] = 255
    data = _Masks(x, masks)
    assert cs.evaluate(model, data, batch_size=3) == cs.evaluate(model, (x, masks))


class _Masks(_Pairs):
    def __getitem__(self, i):
        return self.x[i], self.y[i]  # a (H, W) label mask
