"""Embedded datasets and calibration-set selection.

Everything here works offline. The teaching default is **Fashion-MNIST** (real 28x28 grey
photographs of clothing, 10 classes, MIT licence): :func:`load_fashion_mnist` reads the full
set through torchvision (from a user's folder, Debian's ``dataset-fashion-mnist`` files, or a
download), and :func:`load_fashion` builds the zoo's splits from it or, where it is absent, from
the stratified real subset shipped in ``data/``. The tiny option is scikit-learn's bundled
handwritten digits (1,797 images of 8x8 pixels), upsampled to 32x32 RGB. For segmentation, :func:`load_road_scenes` draws street scenes labelled with the 19
Cityscapes classes (:mod:`cswap_nb.data.scenes`), and :func:`load_cityscapes` reads the real
Cityscapes from local files.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import inspect
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cityscapes import CITYSCAPES_CLASSES, normalize
from .labels import IGNORE_INDEX
from .resources import data_dir, sha256_of
from .scenes import DEFAULT_SIZE, check_size, road_scenes


class Split(NamedTuple):
    """A labelled split held in memory: ``x`` (N, C, H, W) float and ``y`` int64, either
    (N,) class indices or (N, H, W) segmentation masks (class per pixel, 255 = ignored)."""

    x: Tensor
    y: Tensor

    def head(self, n: int) -> "Split":
        """The first ``n`` samples (e.g. a quicker evaluation in a notebook's FAST mode)."""
        return Split(self.x[:n], self.y[:n])


@dataclass
class Dataset:
    """The splits a shipped checkpoint was trained and is evaluated on.

    ``calib`` is the pool the calibration set is drawn from (the training split):
    :func:`cswap_nb.prune` keeps its correctly classified samples, ``k`` per class.
    """

    name: str
    train: Split
    test: Split
    classes: list[str]
    val: Split | None = None  # for choosing settings: neither the calibration pool nor the test split
    calib_pool: Split | None = None  # the calibration pool when it is not the whole training split
    source: str = "embedded"  # where the images came from (e.g. "full: ..." or "subset: ...")

    @property
    def calib(self) -> Split:
        return self.train if self.calib_pool is None else self.calib_pool

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DIGITS_MEAN = 0.5
DIGITS_STD = 0.5


def load_digits(size: int = 32, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's digits, upsampled to ``size`` x ``size`` x 3, stratified split.

    The split is deterministic for a seed (default 0: 1,437 train / 360 test images).
    Pixels are scaled to [0, 1] then normalised with mean 0.5 and std 0.5.
    """
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0  # (N, 8, 8) in [0, 1]
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    x = F.interpolate(images[:, None], size=(size, size), mode="bilinear", align_corners=False)
    x = ((x - DIGITS_MEAN) / DIGITS_STD).repeat(1, 3, 1, 1).contiguous()
    idx = torch.arange(len(labels)).numpy()
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels.numpy())
    tr, te = torch.as_tensor(sorted(tr)), torch.as_tensor(sorted(te))
    return Dataset(
        name=f"digits{size}",
        train=Split(x[tr], labels[tr]),
        test=Split(x[te], labels[te]),
        classes=[str(i) for i in range(10)],
    )


ROAD_TEST_START = 1_000_000
"""Scene index of the first road-scene test image: train images are scenes 0, 1, ...; test
images start here, so the two never overlap and the test split does not change with ``train``."""
ROAD_VAL_START = 2_000_000
"""Scene index of the first road-scene validation image (for choosing settings), after the test window."""


def load_road_scenes(train: int = 1200, test: int = 200, size: tuple[int, int] = DEFAULT_SIZE,
                     seed: int = 0, val: int = 100) -> Dataset:
    """Procedural street scenes with Cityscapes trainId masks (see :mod:`cswap_nb.data.scenes`).

    ``train`` images are scenes ``0 .. train-1`` of ``seed``, ``test`` images scenes
    ``ROAD_TEST_START ..`` and ``val`` images (for choosing settings, e.g. the ``max_drop``
    guard) scenes ``ROAD_VAL_START ..``: disjoint, and each image the same whatever the split sizes.
    ``x`` (N, 3, H, W) is normalised with ``cityscapes.SCENE_MEAN``/``SCENE_STD``; ``y`` (N, H, W)
    int64 holds trainIds 0-18 and 255 (ignored). As for the digits, ``calib`` is the train split.
    Drawing takes about 24 ms per 64x128 image on one core of this project's 2-core machine (the default
    1,500 images: 36 s; notebook 05 asks for 300 training scenes, which its first cell draws in about 10 s);
    a process draws each split once and hands out copies afterwards.
    """
    h, w = check_size(size)
    for value, name in ((train, "train"), (test, "test"), (val, "val")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive number of images, got {value!r}")
    if train > ROAD_TEST_START:
        raise ValueError(f"train must be at most {ROAD_TEST_START} images (test scenes start there), got {train}")
    if test > ROAD_VAL_START - ROAD_TEST_START:
        raise ValueError(f"test must be at most {ROAD_VAL_START - ROAD_TEST_START} images (validation scenes start "
                         f"there), got {test}")
    name = "roads" if (h, w) == DEFAULT_SIZE else f"roads{h}x{w}"
    if seed != 0:
        name += f"-seed{seed}"
    return Dataset(
        name=name,
        train=Split(*_cached_scenes(train, (h, w), seed, 0)),
        test=Split(*_cached_scenes(test, (h, w), seed, ROAD_TEST_START)),
        classes=list(CITYSCAPES_CLASSES),
        val=Split(*_cached_scenes(val, (h, w), seed, ROAD_VAL_START)),
    )


@functools.lru_cache(maxsize=8)
def _scenes_once(n: int, size: tuple[int, int], seed: int, start: int) -> tuple[Tensor, Tensor]:
    return road_scenes(n, size, seed=seed, start=start)


def _cached_scenes(n: int, size: tuple[int, int], seed: int, start: int) -> tuple[Tensor, Tensor]:
    """Scenes drawn once per process (drawing costs ~9 ms an image); each caller gets its own copy."""
    x, y = _scenes_once(n, size, seed, start)
    return x.clone(), y.clone()


# Cityscapes labelIds (0-33; -1 is the licence plate) -> the 19 trainIds, everything else 255.
# The same table as torchvision.datasets.Cityscapes.classes (its ``train_id`` column).
CITYSCAPES_LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                                24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
_CITYSCAPES_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label, _train in CITYSCAPES_LABEL_TO_TRAIN_ID.items():
    _CITYSCAPES_LUT[_label] = _train


def cityscapes_train_ids(label_ids) -> np.ndarray:
    """Map a Cityscapes ``*_gtFine_labelIds.png`` array (uint8 labelIds) to trainIds (uint8, 255 = ignored)."""
    arr = np.asarray(label_ids)
    if arr.dtype.kind not in "iu" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
        raise ValueError(f"labelIds must be integers in [0, 255], got dtype {arr.dtype}")
    return _CITYSCAPES_LUT[arr.astype(np.intp)]


def load_cityscapes(root, split: str = "val", size: tuple[int, int] | None = (256, 512),
                    max_images: int | None = None) -> Split:
    """The real Cityscapes (fine annotations) from local files, as a :class:`Split` of tensors.

    Reads ``torchvision.datasets.Cityscapes(root, split, mode="fine", target_type="semantic")``
    (nothing is downloaded), maps the 34 labelIds to the 19 trainIds (all others -> 255),
    resizes images bilinearly and labels by nearest neighbour to ``size`` = (H, W) (None keeps
    1024x2048) and normalises like the road scenes. Images are sorted by file name (city
    first) and the first ``max_images`` are kept. Memory: about 2 MB per image at 256x512.
    """
    from PIL import Image
    from torchvision.datasets import Cityscapes

    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test' (fine annotations), got {split!r}")
    if size is not None:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be (height, width) or None, got {size!r}") from None
        if h <= 0 or w <= 0:
            raise ValueError(f"size must be (height, width) with positive sides, got {size!r}")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images must be a positive integer or None, got {max_images!r}")
    root = Path(root).expanduser()
    missing = [d for d in (root / "leftImg8bit" / split, root / "gtFine" / split) if not d.is_dir()]
    if missing:
        raise FileNotFoundError(
            f"Cityscapes not found under {str(root)!r}: missing {', '.join(repr(str(d)) for d in missing)}. "
            f"torchvision expects <root>/leftImg8bit/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png and "
            f"<root>/gtFine/{split}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png (from leftImg8bit_trainvaltest.zip "
            "and gtFine_trainvaltest.zip, www.cityscapes-dataset.com; they need a login, so download them yourself)")
    ds = Cityscapes(str(root), split=split, mode="fine", target_type="semantic")
    order = sorted(range(len(ds.images)), key=lambda i: ds.images[i])
    if max_images is not None:
        order = order[:max_images]
    if not order:
        raise FileNotFoundError(f"no *_leftImg8bit.png images in {str(root / 'leftImg8bit' / split)!r}/<city>/")
    xs, ys = [], []
    for i in order:
        image_path, target_path = ds.images[i], ds.targets[i][0]
        if not Path(target_path).is_file():
            raise FileNotFoundError(f"the label image {target_path!r} of {image_path!r} is missing")
        with Image.open(image_path) as im:
            image = im.convert("RGB")
        with Image.open(target_path) as lm:
            labels = lm.copy()
        if size is not None and image.size != (w, h):
            image = image.resize((w, h), Image.BILINEAR)
        if size is not None and labels.size != (w, h):
            labels = labels.resize((w, h), Image.NEAREST)
        if image.size != labels.size:
            raise ValueError(f"{image_path!r} is {image.size[0]}x{image.size[1]} but its labels are "
                             f"{labels.size[0]}x{labels.size[1]}")
        xs.append(torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()))
        ys.append(torch.from_numpy(cityscapes_train_ids(np.asarray(labels))))
    shapes = {tuple(t.shape) for t in xs}
    if len(shapes) > 1:
        raise ValueError(f"the images have different sizes {sorted(shapes)}; pass size=(H, W) to resize them")
    x = torch.stack(xs).permute(0, 3, 1, 2).float().div_(255)
    return Split(normalize(x), torch.stack(ys).long())


# --- Fashion-MNIST -------------------------------------------------------------------------

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # of the 60,000 training images' pixels in [0, 1]
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_SUBSET_FILE = "fashion-mnist-subset.npz"
# How the zoo's splits are drawn (stratified, seeded; the shipped subset holds exactly these images):
FASHION_CALIB_PER_CLASS = 300  # calibration pool: 3,000 of the 60,000 training images
FASHION_VAL_PER_CLASS = 100  # validation: 1,000 of the 10,000 test images, for choosing settings
FASHION_SUBSET_TEST_PER_CLASS = 200  # the subset's test split: 2,000 of the other 9,000 test images
FASHION_SPLIT_SEED = 0
FASHION_SUBSET_SHA256 = "c4a9982bd6a169856cff32954a1037ebf9705bcfb47f514dc0d7afa09e961554"  # of data/fashion-mnist-subset.npz


def cache_dir() -> Path:
    """Where this package stages data it prepares (``$CSWAP_NB_CACHE``, else ``~/.cache/cswap_nb``)."""
    env = os.environ.get("CSWAP_NB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cswap_nb"


def _stage_idx_files(src: Path, dest_root: Path) -> bool:
    """Copy Fashion-MNIST's four idx files (plain or ``.gz``) from ``src`` into the layout torchvision
    reads, ``dest_root/FashionMNIST/raw/`` (unpacked), unless already there; ``src`` is never modified.
    False when ``src`` does not hold all four files."""
    names = [n for pair in FASHION_FILES.values() for n in pair]
    found = {}
    for n in names:
        for candidate in (src / n, src / f"{n}.gz"):
            if candidate.is_file():
                found[n] = candidate
                break
    if len(found) < len(names):
        return False
    raw = dest_root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for n, path in found.items():
        target = raw / n
        if target.is_file() and target.stat().st_size > 0:
            continue
        tmp = target.with_suffix(".part")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        tmp.replace(target)
    return True


def fashion_mnist_arrays(split: str = "train", root=None, download: bool = True) -> tuple[Tensor, Tensor, str]:
    """Fashion-MNIST's raw images (N, 28, 28) uint8, labels (N,) int64, and where they came from.

    Looks, in order, in ``root`` (torchvision's layout ``root/FashionMNIST/raw/``, or a folder
    holding the four idx files, plain or gzipped), in Debian's ``/usr/share/datasets/fashion-mnist``
    (the files are unpacked into :func:`cache_dir`; torchvision refuses them as they are), then
    downloads with torchvision (into ``root`` or the cache) when ``download``.
    """
    from torchvision.datasets import FashionMNIST

    if split not in FASHION_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    train = split == "train"
    tried = []
    places = []
    if root is not None:
        root = Path(root).expanduser()
        places.append((root, f"root {str(root)!r}"))
    places.append((DEBIAN_FASHION_DIR, f"Debian's {str(DEBIAN_FASHION_DIR)!r}"))
    for place, label in places:
        try:
            if (place / "FashionMNIST" / "raw").is_dir():
                ds = FashionMNIST(str(place), train=train, download=False)
                return ds.data.clone(), ds.targets.clone(), f"{label} (torchvision layout)"
            # staged copies live in the cache, one folder per source: the source is only read
            tag = hashlib.sha1(str(place.resolve()).encode()).hexdigest()[:12]
            staged = cache_dir() / "fashion-mnist" / ("debian" if place == DEBIAN_FASHION_DIR else tag)
            if place.is_dir() and _stage_idx_files(place, staged):
                ds = FashionMNIST(str(staged), train=train, download=False)
                return ds.data.clone(), ds.targets.clone(), label
            tried.append(f"{label}: no Fashion-MNIST files")
        except (RuntimeError, OSError, ValueError) as exc:
            tried.append(f"{label}: {type(exc).__name__}: {exc}")
    if download:
        target = root if root is not None else cache_dir() / "fashion-mnist"
        try:
            ds = FashionMNIST(str(target), train=train, download=True)
            return ds.data.clone(), ds.targets.clone(), f"downloaded into {str(target)!r}"
        except Exception as exc:  # torchvision raises several kinds when offline
            tried.append(f"download into {str(target)!r}: {type(exc).__name__}: {exc}")
    raise FileNotFoundError(
        "Fashion-MNIST not found. Tried " + "; ".join(tried) + ". Get it in one of three ways: "
        "(1) pass root= a folder holding train-images-idx3-ubyte(.gz) and the three other idx files "
        "(or torchvision's FashionMNIST/raw/ layout); (2) on Debian/Ubuntu, `apt-get install "
        "dataset-fashion-mnist`; (3) with a network, download=True (torchvision fetches it). "
        "Without any of them, cs.data.load_fashion() uses the real subset shipped with this package.")


def normalize_fashion(images: Tensor) -> Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28), scaled to [0, 1] and normalised with the training mean/std."""
    x = images.float().div(255.0)[:, None]
    return ((x - FASHION_MEAN) / FASHION_STD).contiguous()


def load_fashion_mnist(split: str = "train", root=None, download: bool = True) -> Split:
    """One Fashion-MNIST split (``"train"``: 60,000 images, ``"test"``: 10,000) as a :class:`Split`:
    ``x`` (N, 1, 28, 28) float, normalised (:data:`FASHION_MEAN`, :data:`FASHION_STD`), ``y`` (N,) int64.
    Where the files are looked for: :func:`fashion_mnist_arrays`."""
    images, labels, _ = fashion_mnist_arrays(split, root, download)
    return Split(normalize_fashion(images), labels.long())


def fine_labels(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, per_class: int,
                seed: int = 0) -> tuple[Tensor, Tensor]:
    """Finer classes derived from the images, for experiments with many classes on real data: each class is
    split into ``per_class`` clusters by k-means (scikit-learn, ``seed``) on 2x2-pooled thumbnails of its
    ``x_train`` images; class ``c``'s cluster ``j`` becomes label ``c * per_class + j``, and a ``x_test`` image
    takes the nearest centroid of its own class. Returns the fine labels of both sets; ``fine // per_class``
    gives the original class back. (``benchmarks/many_classes.py``, notebook 02.)"""
    from sklearn.cluster import KMeans

    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    thumbs = lambda x: F.avg_pool2d(x.float(), 2).flatten(1).numpy()  # noqa: E731
    fine_train, fine_test = torch.empty_like(y_train), torch.empty_like(y_test)
    for c in y_train.unique().tolist():
        tr, te = (y_train == c).nonzero().flatten(), (y_test == c).nonzero().flatten()
        if len(tr) < per_class:
            raise ValueError(f"class {c} has {len(tr)} training images, fewer than per_class={per_class} clusters")
        km = KMeans(per_class, n_init=3, random_state=seed).fit(thumbs(x_train[tr]))
        fine_train[tr] = torch.as_tensor(km.labels_, dtype=torch.long) + c * per_class
        if len(te):
            fine_test[te] = torch.as_tensor(km.predict(thumbs(x_test[te])), dtype=torch.long) + c * per_class
    return fine_train, fine_test


def stratified_indices(labels: Tensor, per_class: int, seed: int, exclude: Tensor | None = None) -> Tensor:
    """``per_class`` indices of each class, drawn without replacement (seeded), sorted; ``exclude``d
    indices are never drawn."""
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.ones(len(labels), dtype=torch.bool)
    if exclude is not None:
        allowed[exclude] = False
    picks = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero((labels == c) & allowed).flatten()
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} images to draw {per_class} from")
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values


def fashion_split_indices(train_labels: Tensor, test_labels: Tensor) -> dict[str, Tensor]:
    """The zoo's split indices into the original files: ``calib`` (training images), ``val`` and
    ``subset_test`` (test images, disjoint). Depends only on the labels and :data:`FASHION_SPLIT_SEED`."""
    calib = stratified_indices(train_labels, FASHION_CALIB_PER_CLASS, FASHION_SPLIT_SEED)
    val = stratified_indices(test_labels, FASHION_VAL_PER_CLASS, FASHION_SPLIT_SEED)
    test = stratified_indices(test_labels, FASHION_SUBSET_TEST_PER_CLASS, FASHION_SPLIT_SEED + 1, exclude=val)
    return {"calib": calib, "val": val, "subset_test": test}


def shipped_subset_path() -> Path:
    return data_dir() / FASHION_SUBSET_FILE


def read_fashion_subset(path: Path | None = None) -> dict[str, np.ndarray]:
    """The shipped real subset: uint8 images and int64 labels of ``calib``, ``val`` and ``test``, plus
    their indices into the original files (``*_index``). Read with ``allow_pickle=False``."""
    path = Path(path) if path is not None else shipped_subset_path()
    if not path.is_file():
        raise FileNotFoundError(f"the shipped Fashion-MNIST subset {str(path)!r} is missing; rebuild it with "
                                "`python -m cswap_nb.zoo write-fashion-subset` (needs the full set)")
    if path == shipped_subset_path():
        actual = sha256_of(path)
        if actual != FASHION_SUBSET_SHA256:
            raise ValueError(f"the shipped Fashion-MNIST subset {str(path)!r} is corrupt or was modified: sha256 "
                             f"{actual} differs from the recorded {FASHION_SUBSET_SHA256}")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_fashion_subset(path: Path | None = None, root=None) -> Path:
    """Draw the subset from the full set (:func:`fashion_split_indices`) and write it as an ``.npz``."""
    path = Path(path) if path is not None else shipped_subset_path()
    tr_x, tr_y, _ = fashion_mnist_arrays("train", root, download=False)
    te_x, te_y, _ = fashion_mnist_arrays("test", root, download=False)
    idx = fashion_split_indices(tr_y, te_y)
    arrays = {}
    for name, (images, labels, i) in {"calib": (tr_x, tr_y, idx["calib"]), "val": (te_x, te_y, idx["val"]),
                                      "test": (te_x, te_y, idx["subset_test"])}.items():
        arrays[name + "_x"] = images[i].numpy().astype(np.uint8)
        arrays[name + "_y"] = labels[i].numpy().astype(np.int64)
        arrays[name + "_index"] = i.numpy().astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_npz(path, arrays)
    return path


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` with fixed member timestamps, so the same arrays give the same bytes
    (and sha256) whenever they are written; readable with ``np.load(allow_pickle=False)``."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)


FASHION_MODES = ("auto", "full", "subset")


def load_fashion(mode: str | None = None, root=None) -> Dataset:
    """The zoo's Fashion-MNIST splits, from the full set when it can be found, else the shipped subset.

    Both give the **same calibration pool** (3,000 training images, 300 per class) and the same
    validation split (1,000 test images), so pruning decisions do not depend on which is present;
    the test split is the other 9,000 test images (full set) or 2,000 of them (subset), and
    ``train`` is the 60,000 training images (full) or the calibration pool (subset).
    ``mode`` (default ``$CSWAP_NB_FASHION`` or ``"auto"``): ``"full"`` fails without the full set,
    ``"subset"`` always uses the shipped subset. ``Dataset.source`` says which was used.
    """
    mode = mode or os.environ.get("CSWAP_NB_FASHION", "auto")
    if mode not in FASHION_MODES:
        raise ValueError(f"mode must be one of {list(FASHION_MODES)}, got {mode!r}")
    classes = list(FASHION_CLASSES)
    if mode != "subset":
        try:
            tr_x, tr_y, where = fashion_mnist_arrays("train", root, download=False)
            te_x, te_y, _ = fashion_mnist_arrays("test", root, download=False)
        except FileNotFoundError:
            if mode == "full":
                raise
        else:
            idx = fashion_split_indices(tr_y, te_y)
            keep = torch.ones(len(te_y), dtype=torch.bool)
            keep[idx["val"]] = False
            train = Split(normalize_fashion(tr_x), tr_y)
            return Dataset(name="fashion", train=train, test=Split(normalize_fashion(te_x[keep]), te_y[keep]),
                           classes=classes, val=Split(normalize_fashion(te_x[idx["val"]]), te_y[idx["val"]]),
                           calib_pool=Split(train.x[idx["calib"]], tr_y[idx["calib"]]),
                           source=f"full: {where}")
    z = read_fashion_subset()
    split = lambda k: Split(normalize_fashion(torch.from_numpy(z[k + "_x"])), torch.from_numpy(z[k + "_y"]))  # noqa: E731
    calib = split("calib")
    return Dataset(name="fashion", train=calib, test=split("test"), classes=classes, val=split("val"),
                   source=f"subset: {shipped_subset_path()}")


DATASETS = {"fashion": load_fashion, "digits32": functools.partial(load_digits, 32), "roads": load_road_scenes,
            # the training set of ddrnet23slim-roads: the same scenes as "roads" and 1,800 more
            "roads-train3000": functools.partial(load_road_scenes, train=3000)}


def load_dataset(name: str, **options) -> Dataset:
    """A registered dataset by name: ``fashion``, ``digits32`` (classification) or ``roads`` (segmentation).

    ``options`` go to the loader, e.g. ``load_dataset("roads", train=300)`` draws a calibration pool of
    300 scenes instead of 1,200 (the test scenes stay the same: see :func:`load_road_scenes`).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    loader = DATASETS[name]
    if options:
        accepted = inspect.signature(loader).parameters
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"dataset {name!r} takes no option(s) {unknown}; it takes {sorted(accepted)}")
    return loader(**options)


def as_tensors(data, max_samples: int | None = None) -> tuple[Tensor, Tensor]:
    """Turn an ``(x, y)`` pair, a :class:`Split`, a torch Dataset or a DataLoader into tensors."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
    elif isinstance(data, torch.utils.data.DataLoader):
        xs, ys = [], []
        for xb, yb in data:
            xs.append(xb)
            ys.append(yb)
            if max_samples is not None and sum(len(b) for b in ys) >= max_samples:
                break
        x, y = torch.cat(xs), torch.cat(ys)
    elif isinstance(data, torch.utils.data.Dataset):
        x, y = collate_samples([data[i] for i in range(len(data) if max_samples is None else min(len(data), max_samples))])
    else:
        raise TypeError(
            "data must be an (x, y) tensor pair, a torch Dataset or a DataLoader; "
            f"got {type(data).__name__}"
        )
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    return x, y


def collate_samples(pairs: list) -> tuple[Tensor, Tensor]:
    """``(x, y)`` tensors from a list of a Dataset's ``(input, target)`` samples (inputs as tensors or
    arrays; targets as class indices or masks): how :func:`as_tensors` and :func:`iter_batches` stack them."""
    if not pairs:
        raise ValueError("the dataset is empty")
    x = torch.stack([torch.as_tensor(np.asarray(p[0]) if not isinstance(p[0], Tensor) else p[0]) for p in pairs])
    return x, _stack_targets([p[1] for p in pairs])


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def eval_transform(arch: str | None = None, image_size: int | None = None, mean=None, std=None):
    """The usual evaluation transform of a library architecture (``"torchvision:NAME"``, ``"timm:NAME"``, or
    None for the plain ImageNet one), and what it does as a dict (``image_size``, ``resize``,
    ``interpolation``, ``mean``, ``std``, ``source``).

    It reads, without downloading anything, what the library records for the architecture's pretrained
    weights: torchvision's default weights' ``transforms()`` (e.g. resize 256, crop 224, bilinear for
    ResNet18; 320 / 300 bicubic for EfficientNet-B3) or timm's pretrained config (``crop_pct``, interpolation,
    mean and std: 0.5 for timm's ViTs and Inception-v3). The transform is RGB, resize the short side, centre
    crop ``image_size`` (default: the architecture's own), scale to [0, 1], normalise (ImageFolder's loader
    makes every image RGB first). An architecture with no
    such record gets the ImageNet one (resize ``N * 256 / 224``, bilinear, the ImageNet mean and std).
    ``mean``/``std`` (three numbers each) replace the recorded ones.
    """
    from torchvision import transforms

    crop, ratio, interpolation, m, s, source = 224, 256 / 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD, "ImageNet"
    lib, _, name = (arch or "").partition(":")
    if lib == "torchvision":
        from torchvision.models import get_model_weights

        try:
            preset = get_model_weights(name).DEFAULT.transforms()
        except (ValueError, KeyError, AttributeError):
            preset = None
        if preset is not None:
            crop, ratio = preset.crop_size[0], preset.resize_size[0] / preset.crop_size[0]
            interpolation, m, s = preset.interpolation.value, tuple(preset.mean), tuple(preset.std)
            source = f"torchvision's {name} default weights"
    elif lib == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        if cfg is not None:
            crop, ratio, interpolation = cfg.input_size[-1], 1 / cfg.crop_pct, cfg.interpolation or "bicubic"
            m, s, source = tuple(cfg.mean), tuple(cfg.std), f"timm's {name} pretrained config"
    size = int(image_size or crop)
    m, s = tuple(float(v) for v in (mean if mean is not None else m)), tuple(float(v) for v in (std if std is not None else s))
    if len(m) != 3 or len(s) != 3 or min(s) <= 0:
        raise ValueError(f"mean and std need three numbers each, std > 0 (got mean {m}, std {s})")
    resize = round(size * ratio)
    if mean is not None or std is not None:
        source += ", mean/std given"
    mode = transforms.InterpolationMode(interpolation)
    transform = transforms.Compose([transforms.Resize(resize, interpolation=mode),
                                    transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(m, s)])
    return transform, {"image_size": size, "resize": resize, "interpolation": interpolation, "mean": m, "std": s,
                       "source": source}


def image_folder(root, image_size: int | None = None, transform=None):
    """``torchvision.datasets.ImageFolder(root)`` (one sub-folder per class, in sorted order) with
    ``transform``, by default the usual ImageNet evaluation transform (:func:`eval_transform`): RGB, resize the
    short side to ``image_size * 256 / 224``, centre crop ``image_size`` (default 224), scale to [0, 1],
    normalise with the ImageNet mean and std. Folders all named by integers (``0``, ``1``, ... ``999``) give
    those labels (a ``target_transform``), so a folder of some of a model's classes keeps the model's class
    indices."""
    from torchvision import datasets

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} not found")
    if transform is None:
        transform = eval_transform(None, image_size)[0]
    data = datasets.ImageFolder(root, transform)
    if all(name.isdigit() for name in data.classes):  # folders named by class index: "10" sorts before "2"
        data.target_transform = [int(name) for name in data.classes].__getitem__
    return data


def stream_source(data) -> tuple[torch.utils.data.Dataset, dict] | None:
    """The indexable Dataset behind ``data`` and how to batch it, when ``data`` can be read in batches
    instead of whole; None for tensors, a :class:`Split`, an IterableDataset, or a DataLoader that
    shuffles or drops its last batch.

    A map-style Dataset (with ``__len__``, e.g. ``torchvision.datasets.ImageFolder``) is batched by
    :func:`collate_samples`; a DataLoader that reads its dataset in order keeps its ``collate_fn``
    and ``num_workers``. The dict holds those keyword arguments of :func:`iter_batches`.
    """
    if isinstance(data, torch.utils.data.DataLoader):
        if (isinstance(data.sampler, torch.utils.data.SequentialSampler) and data.batch_size is not None
                and not data.drop_last and not isinstance(data.dataset, torch.utils.data.IterableDataset)):
            return data.dataset, {"collate_fn": data.collate_fn, "num_workers": data.num_workers}
        return None
    if (isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset)
            and hasattr(data, "__len__")):
        return data, {}
    return None


def tensor_batches(batch_size: int, *tensors: Tensor) -> list[tuple[Tensor, ...]]:
    """The tensors cut into batches along dim 0, together: ``[(x[0:b], y[0:b]), (x[b:2b], y[b:2b]), ...]``
    (views, no copies). The one batch loop over tensors held in memory."""
    n = len(tensors[0])
    return [tuple(t[i : i + batch_size] for t in tensors) for i in range(0, n, batch_size)]


def iter_batches(dataset, batch_size: int, indices=None, collate_fn=None, num_workers: int = 0):
    """``(x, y)`` batches of ``dataset`` (or of its samples ``indices``, in that order) through a
    DataLoader: at most ``batch_size`` samples are held at a time."""
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, [int(i) for i in indices])
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       collate_fn=collate_fn or collate_samples)


def _stack_targets(targets: list) -> Tensor:
    """Targets of a torch Dataset: class indices -> (N,), masks (tensors, arrays, PIL images) -> (N, H, W)."""
    if not targets:
        return torch.zeros(0, dtype=torch.int64)
    first = targets[0]
    if isinstance(first, (int, np.integer)) or (isinstance(first, (Tensor, np.ndarray)) and first.ndim == 0):
        return torch.as_tensor([int(t) for t in targets])
    masks = [t if isinstance(t, Tensor) else torch.from_numpy(np.array(t)) for t in targets]
    shapes = {tuple(m.shape) for m in masks}
    if len(shapes) > 1:
        raise ValueError(f"the dataset's label masks have different shapes {sorted(shapes)[:4]}; "
                         "resize them to one size")
    return torch.stack(masks).long()


def check_xy(x: Tensor, y: Tensor, what: str = "calibration data") -> None:
    """Clear errors for malformed labelled tensors.

    ``y`` is either (N,) class indices or (N, H, W) segmentation masks (class per pixel; 255
    marks ignored pixels; the class range is checked against the model elsewhere); masks need
    images ``x`` (N, C, H', W'). The masks may be smaller or larger than the images: metrics
    and scores resize the logits to the label size.
    """
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{what}: x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{what}: x must have a batch dimension and at least one feature dimension, got shape {tuple(x.shape)}")
    if y.ndim not in (1, 3):
        hint = "; squeeze the channel dimension of the masks: y[:, 0]" if y.ndim == 4 and y.shape[1] == 1 else ""
        raise ValueError(f"{what}: y must be a 1-D tensor of class indices or (N, H, W) segmentation masks, "
                         f"got shape {tuple(y.shape)}{hint}")
    if y.ndim == 3 and x.ndim != 4:
        raise ValueError(f"{what}: segmentation masks y {tuple(y.shape)} need images x of shape (N, C, H, W), "
                         f"got x of shape {tuple(x.shape)}")
    if y.ndim == 3 and 0 in y.shape[1:]:
        raise ValueError(f"{what}: the masks y have an empty side, shape {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{what}: x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: it is empty")
    if not x.is_floating_point():
        raise TypeError(f"{what}: x must be a floating-point tensor, got dtype {x.dtype}")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        kind = "per-pixel class indices (masks)" if y.ndim == 3 else "class indices"
        raise TypeError(f"{what}: y must hold integer {kind}, got dtype {y.dtype}")
    bad = (~torch.isfinite(x)).flatten(1).any(1)
    if bad.any():
        raise ValueError(
            f"{what}: x contains NaN or infinite values in {int(bad.sum())} sample(s) "
            f"(first at index {int(bad.nonzero()[0])})"
        )
