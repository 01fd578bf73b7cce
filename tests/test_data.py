"""Embedded data: the digits splits, tensor conversion, input validation."""
from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits as sk_digits

import cswap_nb as cs
from cswap_nb.data import as_tensors, check_xy


def test_digits_shapes_and_types(digits):
    assert digits.name == "digits32"
    assert digits.num_classes == 10 and digits.classes == [str(i) for i in range(10)]
    for split, n in [(digits.train, 1437), (digits.test, 360)]:
        assert split.x.shape == (n, 3, 32, 32)
        assert split.x.dtype == torch.float32
        assert split.y.shape == (n,) and split.y.dtype == torch.int64
        assert torch.isfinite(split.x).all()
        assert split.x.min() >= -1.0 - 1e-6 and split.x.max() <= 1.0 + 1e-6  # [0, 1] normalised by 0.5/0.5
        assert torch.equal(split.x[:, 0], split.x[:, 1]) and torch.equal(split.x[:, 0], split.x[:, 2])
        assert set(split.y.tolist()) == set(range(10))
    assert digits.calib is digits.train


def test_digits_is_stratified_and_complete(digits):
    total = torch.bincount(torch.as_tensor(sk_digits().target), minlength=10)
    train = torch.bincount(digits.train.y, minlength=10)
    test = torch.bincount(digits.test.y, minlength=10)
    assert torch.equal(train + test, total)
    assert ((test.float() - 0.2 * total.float()).abs() <= 1).all(), test


def test_digits_are_the_sklearn_images(digits):
    """Each split image is an upsampled sklearn digit (mean pixel preserved up to interpolation)."""
    bunch = sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    down = torch.nn.functional.avg_pool2d((digits.test.x[:, :1] * 0.5 + 0.5), 4)[:, 0]  # (N, 8, 8)
    # every test image matches some sklearn image of the same label better than any other label's
    d = torch.cdist(down.flatten(1), images.flatten(1))
    nearest = d.argmin(1)
    assert torch.equal(torch.as_tensor(bunch.target)[nearest], digits.test.y)


def test_digits_deterministic_and_seeded(digits):
    again = cs.data.load_digits()
    assert torch.equal(again.train.x, digits.train.x) and torch.equal(again.train.y, digits.train.y)
    assert torch.equal(again.test.x, digits.test.x) and torch.equal(again.test.y, digits.test.y)
    other = cs.data.load_digits(seed=1)
    assert not torch.equal(other.test.y, digits.test.y)
    small = cs.data.load_digits(size=16, test_fraction=0.5)
    assert small.train.x.shape[1:] == (3, 16, 16)
    assert len(small.test.y) == 899 and len(small.train.y) == 898


def test_load_dataset(digits):
    assert torch.equal(cs.data.load_dataset("digits32").test.x, digits.test.x)
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; known: \['digits32', 'fashion', 'roads', 'roads-train3000'\]"):
        cs.data.load_dataset("mnist")


def test_as_tensors_sources_agree(digits):
    x, y = digits.test.x[:50], digits.test.y[:50]
    ds = torch.utils.data.TensorDataset(x, y)
    for source in [(x, y), [x, y], digits.test._replace(x=x, y=y), ds,
                   torch.utils.data.DataLoader(ds, batch_size=7, shuffle=False)]:
        xx, yy = as_tensors(source)
        assert torch.equal(xx, x) and torch.equal(yy, y), type(source).__name__
        assert yy.dtype == torch.int64


def test_as_tensors_max_samples(digits):
    x, y = digits.test.x[:50], digits.test.y[:50]
    ds = torch.utils.data.TensorDataset(x, y)
    for source in [(x, y), ds, torch.utils.data.DataLoader(ds, batch_size=8)]:
        xx, yy = as_tensors(source, max_samples=20)
        assert torch.equal(xx, x[:20]) and torch.equal(yy, y[:20])


def test_as_tensors_rejects_other_types():
    with pytest.raises(TypeError, match="must be an \\(x, y\\) tensor pair"):
        as_tensors({"x": torch.zeros(2, 3), "y": torch.zeros(2)})
    with pytest.raises(TypeError, match="got ndarray"):
        import numpy as np

        as_tensors(np.zeros((3, 2)))


@pytest.mark.parametrize("x,y,exc,match", [
    (torch.zeros(4, 3).tolist(), torch.zeros(4, dtype=torch.long), TypeError, "x and y must be tensors"),
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), ValueError, "x must have a batch dimension"),
    (torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.long), ValueError, "y must be a 1-D tensor"),
    (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), ValueError, "x has 4 samples but y has 5 labels"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "it is empty"),
    (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), TypeError, "x must be a floating-point"),
    (torch.zeros(4, 3), torch.zeros(4), TypeError, "y must hold integer class indices"),
    (torch.zeros(4, 3), torch.zeros(4, dtype=torch.bool), TypeError, "y must hold integer class indices"),
    (torch.tensor([[0.0], [1.0], [float("inf")], [float("nan")]]), torch.zeros(4, dtype=torch.long),
     ValueError, r"NaN or infinite values in 2 sample\(s\) \(first at index 2\)"),
])
def test_check_xy_errors(x, y, exc, match):
    with pytest.raises(exc, match=match):
        check_xy(x, y)


def test_check_xy_names_the_data_and_accepts_good_input():
    with pytest.raises(ValueError, match="^eval data: x has"):
        check_xy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), what="eval data")
    check_xy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int32))
    check_xy(torch.zeros(2, 3, 4, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.long))


def test_evaluate(digits):
    class Oracle(torch.nn.Module):
        """Predicts the label hidden in pixel (0, 0, 0); otherwise class 0."""

        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long().clamp(0, 9), 10).float() + self.dummy

    x = torch.zeros(10, 3, 4, 4)
    y = torch.arange(10)
    x[:7, 0, 0, 0] = y[:7].float()  # 7 right; labels 7, 8, 9 are predicted as 0
    model = Oracle().train()
    assert cs.evaluate(model, (x, y)) == pytest.approx(70.0)
    assert cs.evaluate(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)) \
        == pytest.approx(70.0)
    assert cs.evaluate(model, (x, y), batch_size=4) == pytest.approx(70.0)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="empty"):
        cs.evaluate(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:0], y[:0])))


# ------------------------------------------------------------------ Fashion-MNIST

import gzip  # noqa: E402
import struct  # noqa: E402

import numpy as np  # noqa: E402

from cswap_nb import data as D  # noqa: E402


def _write_idx(folder, n_train=30, n_test=20, gz=True, seed=0):
    """Fashion-MNIST-format idx files (the real byte layout) with random images, 3 per class and more."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        img_name, lab_name = D.FASHION_FILES[split]
        for name, header, payload in ((img_name, struct.pack(">IIII", 0x803, n, 28, 28), images),
                                      (lab_name, struct.pack(">II", 0x801, n), labels)):
            raw = header + payload.tobytes()
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        arrays[split] = (images, labels)
    return arrays


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    """No Debian files, an empty cache: only what a test provides can be found."""
    monkeypatch.setattr(D, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("CSWAP_NB_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_fashion_from_a_root_folder_is_read_and_left_untouched(tmp_path, no_system_fashion, gz):
    root = tmp_path / "mine"
    arrays = _write_idx(root, gz=gz)
    listing = sorted((p.name, p.stat().st_size) for p in root.iterdir())
    images, labels, source = D.fashion_mnist_arrays("test", root=root, download=False)
    assert np.array_equal(images.numpy(), arrays["test"][0]) and np.array_equal(labels.numpy(), arrays["test"][1])
    assert str(root) in source
    assert sorted((p.name, p.stat().st_size) for p in root.iterdir()) == listing  # the user's folder is not modified
    split = D.load_fashion_mnist("train", root=root, download=False)
    assert split.x.shape == (30, 1, 28, 28) and split.y.dtype == torch.int64
    expected = (torch.from_numpy(arrays["train"][0]).float() / 255 - D.FASHION_MEAN) / D.FASHION_STD
    assert torch.allclose(split.x[:, 0], expected)


def test_fashion_from_torchvision_layout(tmp_path, no_system_fashion):
    root = tmp_path / "tv"
    arrays = _write_idx(root / "FashionMNIST" / "raw", gz=False)
    images, _, source = D.fashion_mnist_arrays("train", root=root, download=False)
    assert np.array_equal(images.numpy(), arrays["train"][0]) and "torchvision layout" in source


def test_fashion_missing_everywhere_names_the_three_ways(no_system_fashion):
    with pytest.raises(FileNotFoundError) as info:
        D.fashion_mnist_arrays("train", download=False)
    msg = str(info.value)
    assert "root=" in msg and "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg
    with pytest.raises(FileNotFoundError):
        D.load_fashion("full")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        D.fashion_mnist_arrays("val")
    with pytest.raises(ValueError, match="mode must be one of"):
        D.load_fashion("everything")


def test_fashion_subset_is_real_stratified_and_verified(no_system_fashion):
    ds = D.load_fashion()  # no full set anywhere: the shipped subset
    assert ds.source.startswith("subset")
    assert ds.classes == list(D.FASHION_CLASSES)
    for split, per_class in ((ds.calib, 300), (ds.val, 100), (ds.test, 200)):
        assert split.x.shape[1:] == (1, 28, 28)
        assert torch.equal(torch.bincount(split.y, minlength=10), torch.full((10,), per_class))
    assert ds.train is ds.calib
    z = D.read_fashion_subset()
    assert not set(z["val_index"]) & set(z["test_index"])  # validation and test images are different images
    assert z["calib_x"].dtype == np.uint8 and len(np.unique(z["calib_index"])) == 3000


def test_fashion_subset_corruption_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / D.FASHION_SUBSET_FILE).write_bytes(D.shipped_subset_path().read_bytes()[:-10] + b"0123456789")
    monkeypatch.setenv("CSWAP_NB_DATA", str(bad))
    with pytest.raises(ValueError, match="corrupt or was modified"):
        D.read_fashion_subset()


@pytest.mark.skipif(not D.DEBIAN_FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_full_set_matches_the_shipped_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("CSWAP_NB_CACHE", str(tmp_path / "cache"))  # staged afresh from the system files
    full = D.load_fashion("full")
    assert full.source.startswith("full") and "Debian" in full.source
    assert len(full.train.y) == 60000 and len(full.val.y) == 1000 and len(full.test.y) == 9000
    sub = D.load_fashion("subset")
    # the same calibration pool and validation split: pruning decisions do not depend on which is present
    assert torch.equal(full.calib.x, sub.calib.x) and torch.equal(full.calib.y, sub.calib.y)
    assert torch.equal(full.val.x, sub.val.x)
    z = D.read_fashion_subset()
    test_images, _, _ = D.fashion_mnist_arrays("test", download=False)
    assert np.array_equal(test_images[torch.from_numpy(z["test_index"])].numpy(), z["test_x"])


@pytest.mark.skipif(not D.DEBIAN_FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_subset_is_redrawn_byte_for_byte(tmp_path):
    """The recipe in data/README.md reproduces the shipped file exactly (same sha256)."""
    from cswap_nb.data.resources import sha256_of

    path = D.write_fashion_subset(tmp_path / "again.npz")
    assert sha256_of(path) == D.FASHION_SUBSET_SHA256 == sha256_of(D.shipped_subset_path())


def test_fine_labels_split_each_class_into_its_own_clusters():
    """cs.data.fine_labels: class c's images get labels c * k .. c * k + k - 1, every cluster used, the test
    images take a cluster of their own class, the same draw for the same seed; two well-separated blobs per
    class are found as two clusters."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 2, 1, 28, 28, generator=g) * 3  # class, blob
    y = torch.arange(3).repeat_interleave(40)
    blob = torch.arange(40).remainder(2).repeat(3)
    x = centres[y, blob] + 0.1 * torch.randn(120, 1, 28, 28, generator=g)
    y_test, blob_test = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 0, 0, 1])
    x_test = centres[y_test, blob_test]
    fine, fine_test = cs.data.fine_labels(x, y, x_test, y_test, 2)
    assert torch.equal(fine // 2, y) and torch.equal(fine_test // 2, y_test)
    assert sorted(fine.unique().tolist()) == list(range(6))
    for c in range(3):  # each blob is one cluster
        for b in range(2):
            assert fine[(y == c) & (blob == b)].unique().numel() == 1
    same = fine[(y == 2) & (blob == 1)][0]
    assert fine_test[3] == same and fine_test[2] != same
    again, _ = cs.data.fine_labels(x, y, x_test, y_test, 2)
    assert torch.equal(again, fine)
    with pytest.raises(ValueError, match="fewer than per_class=50"):
        cs.data.fine_labels(x, y, x_test, y_test, 50)
