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
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; known: \['digits32', 'roads', 'roads-train3000'\]"):
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
