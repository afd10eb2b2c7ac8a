"""The named datasets, loaded into memory as uint8 tensors (:func:`load_dataset`).

Every loader returns an :class:`~siamgrad.data.in_memory.ImageDataset` (``images`` uint8
``[N, 3, H, W]``, square; ``labels`` int64 ``[N]`` or ``None``).

Supported sources (:data:`DATASETS`):

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16),
  scaled to 0..255, upsampled to 16x16 (or ``image_size``); no files needed. Splits
  ``train``/``test`` are a fixed class-stratified 75/25 split.
* ``cifar10`` / ``cifar100``: the official python-pickle layout (read with a restricted
  unpickler that only admits numpy's array reconstruction helpers) or, when that is absent, the
  official binary layout. Local copies with fewer rows than the official files load too: the
  md5 sums are only checked on downloaded archives.
* ``stl10``: the official binary layout (column-major 3x96x96 images), read through
  ``numpy.memmap``; splits ``train``, ``test``, ``unlabeled``, ``train+unlabeled``.
* ``imagefolder``: ``root/<class>/*.png|jpg|jpeg|bmp|webp`` (labels from the sorted class
  folder names) or a flat folder of images (unlabeled), optionally below ``root/<split>/``:
  scanned by :class:`~siamgrad.data.sources.FolderSource` and decoded by
  :func:`~siamgrad.data.in_memory.load_in_memory`, as the streamed image folders are.

Resizing follows :func:`siamgrad.data.decode.resize_uint8` (bilinear, antialiased, rounded).
Every problem with the data raises :class:`~siamgrad.errors.DataError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from siamgrad.data.bad_images import DEFAULT_MAX_BAD_FRACTION
from siamgrad.data.decode import one_line, resize_uint8
from siamgrad.data.in_memory import ImageDataset, load_in_memory, stratified_sample
from siamgrad.data.sources import FolderSource
from siamgrad.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "DIGITS_DEFAULT_SIZE",
    "IMAGEFOLDER_DEFAULT_SIZE",
    "RestrictedUnpickler",
    "load_dataset",
]

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "stl10", "imagefolder")
"""Names accepted by :func:`load_dataset`."""

DIGITS_SPLIT_SEED = 0
"""Seed of the fixed class-stratified 75/25 train/test split of ``digits``."""

DIGITS_TEST_FRACTION = 0.25
DIGITS_DEFAULT_SIZE = 16
IMAGEFOLDER_DEFAULT_SIZE = 64
"""Side of an image folder's (and shards') images in memory when ``data.image_size`` is unset."""

_CHUNK = 512  # images per copy chunk of STL-10, bounds the working memory

_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_STL10_CLASSES = (
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
)
# CIFAR-100 fine labels are numbered in alphabetical order of these names.
_CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
    crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
    keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
    mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
    porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper
    snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
    tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)

# Official archives: (url, md5 of the archive, folder the archive extracts to).
_ARCHIVES: dict[str, tuple[str, str, str]] = {
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
    ),
    "cifar100": (
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
    ),
    "stl10": (
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "91f7769df0f17e558f3565bffb0c7dfb",
        "stl10_binary",
    ),
}
_DOWNLOAD_TIMEOUT_S = 60.0


def _error(message: str) -> DataError:
    """A :class:`DataError` whose message is collapsed onto one line."""
    return DataError(one_line(message))


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    *,
    image_size: int | None = None,
    download: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> ImageDataset:
    """Load one split of a dataset into memory as uint8 tensors.

    Args:
        name: one of :data:`DATASETS`.
        root: the folder holding the files (ignored by ``digits``). For CIFAR and STL-10 it may
            be the folder that contains the official folder (``cifar-10-batches-py``,
            ``stl10_binary``, ...) or that folder itself.
        split: ``train`` or ``test``; STL-10 also has ``unlabeled`` and ``train+unlabeled``;
            an image folder has the names of its split subfolders.
        image_size: resize to ``image_size x image_size`` if it differs from the native size
            (defaults: 16 for ``digits``, 64 for ``imagefolder``, native otherwise).
        download: fetch the official archive into ``root`` when the files are absent
            (CIFAR-10/100, STL-10).
        max_bad_fraction: an image folder with more unreadable files than this share fails
            (``data.max_bad_fraction``); fewer are skipped with a warning each.
    """
    key = str(name).strip().lower()
    if key not in DATASETS:
        raise _error(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    if key == "digits":
        return _load_digits(split, image_size)
    if key in ("cifar10", "cifar100"):
        ds = _load_cifar(key, root, split, download)
    elif key == "stl10":
        ds = _load_stl10(root, split, download, image_size)
    else:
        return _load_imagefolder(root, split, image_size or IMAGEFOLDER_DEFAULT_SIZE, max_bad_fraction)
    if image_size is not None and image_size != ds.image_size:
        ds = ImageDataset(resize_uint8(ds.images, image_size), ds.labels, ds.classes, ds.name)
    return ds


def _check_split(dataset: str, split: str, valid: Sequence[str]) -> str:
    if split not in valid:
        raise _error(f"unknown split {split!r} for {dataset}; valid splits: {', '.join(valid)}")
    return split


def _resolve_root(
    root: str | os.PathLike[str] | None, dataset: str, expected: str, downloadable: bool = True
) -> Path:
    if root is None or str(root).strip() == "":
        fetch = " (with data.download=true to fetch them there)" if downloadable else ""
        raise _error(
            f"{dataset} needs its files but no data.root was given; set data.root=<folder> "
            f"holding {expected}{fetch}"
        )
    return Path(root).expanduser()


# --------------------------------------------------------------------------------------------
# digits (embedded, from scikit-learn)
# --------------------------------------------------------------------------------------------


def _digits_split_indices(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed class-stratified (train, test) indices of ``digits`` (test ~ 25% per class)."""
    test = stratified_sample(labels, labels.numel(), DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[test] = False
    train = torch.nonzero(mask, as_tuple=False).flatten()
    return train, test


def _load_digits(split: str, image_size: int | None) -> ImageDataset:
    """scikit-learn's 8x8 digits: ``round(v * 255 / 16)``, upsampled, replicated to RGB."""
    _check_split("digits", split, ("train", "test"))
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = torch.from_numpy(np.asarray(bunch.images, dtype=np.float64))  # [N, 8, 8], 0..16
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    scaled = (raw * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
    size = image_size or DIGITS_DEFAULT_SIZE
    gray = scaled.unsqueeze(1)
    if size != gray.shape[-1]:
        gray = resize_uint8(gray, size)
    images = gray.expand(-1, 3, -1, -1).contiguous()
    train, test = _digits_split_indices(labels)
    idx = train if split == "train" else test
    classes = [str(int(c)) for c in bunch.target_names]
    return ImageDataset(images[idx].contiguous(), labels[idx].clone(), classes, "digits")


# --------------------------------------------------------------------------------------------
# Restricted unpickling (CIFAR python format)
# --------------------------------------------------------------------------------------------


def _numpy_pickle_globals() -> dict[tuple[str, str], object]:
    """The globals a pickled numpy array (protocols 2-5, numpy 1.x and 2.x) refers to."""
    import codecs

    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds numpy arrays and plain Python containers.

    The CIFAR python files are dicts of lists, strings, ints and numpy arrays; the only globals
    they need are numpy's array-reconstruction helpers (``_reconstruct``, ``ndarray``,
    ``dtype``, ``scalar``, ``_frombuffer``) and ``_codecs.encode`` (how protocol 2 stores
    bytes). Any other global (``os.system``, ``builtins.eval``, ...) raises
    :class:`DataError` instead of being imported.
    """

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str) -> object:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _numpy_pickle_globals()
        try:
            return RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise _error(
                f"refusing to unpickle global {module}.{name}: the file is not a plain "
                f"dataset pickle (only numpy arrays, lists, dicts, strings and numbers are allowed)"
            ) from None


def _restricted_load(path: Path) -> object:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (python 2 strings read as latin-1)."""
    try:
        with open(path, "rb") as fh:
            return RestrictedUnpickler(fh, encoding="latin1").load()
    except DataError as exc:
        raise _error(f"{path}: {exc}") from None
    except Exception as exc:  # truncated or garbage pickles raise many exception types
        raise _error(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); "
            f"replace it with a fresh copy of the official file"
        ) from None


def _str_keys(obj: object, path: Path) -> dict[str, object]:
    if not isinstance(obj, dict):
        raise _error(f"{path} is corrupt: expected a pickled dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# --------------------------------------------------------------------------------------------

_CIFAR_ROW = 3 * 32 * 32


@dataclass(frozen=True)
class _CifarLayout:
    title: str
    num_classes: int
    default_classes: tuple[str, ...]
    py_dir: str
    py_files: dict[str, tuple[str, ...]]
    py_meta: str
    py_meta_key: str
    py_label_key: str
    bin_dir: str
    bin_files: dict[str, tuple[str, ...]]
    bin_label_bytes: int  # label bytes per record; the fine/only label is the last one
    bin_names: str


_CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout(
        title="CIFAR-10",
        num_classes=10,
        default_classes=_CIFAR10_CLASSES,
        py_dir="cifar-10-batches-py",
        py_files={
            "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
            "test": ("test_batch",),
        },
        py_meta="batches.meta",
        py_meta_key="label_names",
        py_label_key="labels",
        bin_dir="cifar-10-batches-bin",
        bin_files={
            "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
            "test": ("test_batch.bin",),
        },
        bin_label_bytes=1,
        bin_names="batches.meta.txt",
    ),
    "cifar100": _CifarLayout(
        title="CIFAR-100",
        num_classes=100,
        default_classes=_CIFAR100_CLASSES,
        py_dir="cifar-100-python",
        py_files={"train": ("train",), "test": ("test",)},
        py_meta="meta",
        py_meta_key="fine_label_names",
        py_label_key="fine_labels",
        bin_dir="cifar-100-binary",
        bin_files={"train": ("train.bin",), "test": ("test.bin",)},
        bin_label_bytes=2,
        bin_names="fine_label_names.txt",
    ),
}


def _cifar_expected(layout: _CifarLayout) -> str:
    py = ", ".join((*layout.py_files["train"], *layout.py_files["test"], layout.py_meta))
    return f"{layout.py_dir}/{{{py}}} (python format) or {layout.bin_dir}/*.bin (binary format)"


def _find_cifar(root: Path, layout: _CifarLayout, split: str) -> tuple[str, Path] | None:
    """``("py" | "bin", folder)`` holding the split's files, python format first."""
    for fmt, sub, files in (
        ("py", layout.py_dir, layout.py_files[split]),
        ("bin", layout.bin_dir, layout.bin_files[split]),
    ):
        for folder in (root / sub, root):
            if any((folder / f).is_file() for f in files):
                return fmt, folder
    return None


def _load_cifar(
    key: str, root: str | os.PathLike[str] | None, split: str, download: bool
) -> ImageDataset:
    layout = _CIFAR_LAYOUTS[key]
    _check_split(key, split, ("train", "test"))
    base = _resolve_root(root, layout.title, _cifar_expected(layout))
    found = _find_cifar(base, layout, split)
    if found is None and download:
        _download_and_extract(key, base, _cifar_expected(layout))
        found = _find_cifar(base, layout, split)
    other = _find_cifar(base, layout, "test" if split == "train" else "train") if found is None else None
    if other is not None:  # the other split is there: this copy lost files
        fmt, folder = other
        names = layout.bin_files[split] if fmt == "bin" else layout.py_files[split]
        raise _error(
            f"{layout.title} copy in {folder} is incomplete: missing {', '.join(names)} (its {split} split); "
            f"restore the official files"
        )
    if found is None:
        raise _error(
            f"{layout.title} {split} files not found under {base}: expected "
            f"{_cifar_expected(layout)}; point data.root at that folder, or set "
            f"data.download=true to fetch them"
        )
    fmt, folder = found
    names = layout.bin_files[split] if fmt == "bin" else layout.py_files[split]
    missing = [f for f in names if not (folder / f).is_file()]
    if missing:
        raise _error(
            f"{layout.title} copy in {folder} is incomplete: missing {', '.join(missing)}; "
            f"restore the official files"
        )
    if fmt == "py":
        parts = [_read_cifar_pickle(folder / f, layout) for f in names]
        classes = _cifar_py_classes(folder, layout)
    else:
        parts = [_read_cifar_binary(folder / f, layout) for f in names]
        classes = _cifar_bin_classes(folder, layout)
    images = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    if images.shape[0] == 0:
        raise _error(f"{layout.title} {split} split in {folder} is empty: its files hold no images")
    return ImageDataset(images.contiguous(), labels, classes, key)


def _check_cifar_labels(
    labels: np.ndarray, n_rows: int, num_classes: int, path: Path
) -> torch.Tensor:
    if labels.ndim != 1 or labels.shape[0] != n_rows:
        raise _error(
            f"{path} is corrupt: {labels.shape[0] if labels.ndim == 1 else labels.shape} labels "
            f"for {n_rows} images; replace it with a fresh copy of the official file"
        )
    if n_rows and (labels.min() < 0 or labels.max() >= num_classes):
        raise _error(
            f"{path} is corrupt: labels outside 0..{num_classes - 1} "
            f"(found {int(labels.min())}..{int(labels.max())})"
        )
    return torch.from_numpy(labels.astype(np.int64))


def _read_cifar_pickle(path: Path, layout: _CifarLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """One python-format batch: ``data`` N x 3072 (1024 R, 1024 G, 1024 B) -> [N, 3, 32, 32]."""
    batch = _str_keys(_restricted_load(path), path)
    for needed in ("data", layout.py_label_key):
        if needed not in batch:
            raise _error(
                f"{path} is corrupt: the pickled dict lacks the key {needed!r} "
                f"(has {', '.join(sorted(batch)) or 'no keys'})"
            )
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != _CIFAR_ROW:
        shape = getattr(data, "shape", type(data).__name__)
        raise _error(f"{path} is corrupt: 'data' must be an N x {_CIFAR_ROW} array, found {shape}")
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer) or (
            data.size and (data.min() < 0 or data.max() > 255)
        ):
            raise _error(
                f"{path} is corrupt: 'data' must hold bytes 0..255, found dtype {data.dtype}"
            )
        data = data.astype(np.uint8)
    try:
        labels = np.asarray(batch[layout.py_label_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise _error(f"{path} is corrupt: unreadable {layout.py_label_key!r} ({exc})") from None
    lab = _check_cifar_labels(labels, data.shape[0], layout.num_classes, path)
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, lab


def _read_cifar_binary(path: Path, layout: _CifarLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """One binary-format file: records of label byte(s) then 3072 pixel bytes (R, G, B planes)."""
    record = layout.bin_label_bytes + _CIFAR_ROW
    size = path.stat().st_size
    if size % record:
        raise _error(
            f"{path} is truncated or corrupt: {size} bytes is not a multiple of the "
            f"{record}-byte record size; replace it with a fresh copy of the official file"
        )
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    labels = raw[:, layout.bin_label_bytes - 1].astype(np.int64)  # fine label is the last byte
    lab = _check_cifar_labels(labels, raw.shape[0], layout.num_classes, path)
    pixels = np.ascontiguousarray(raw[:, layout.bin_label_bytes :]).reshape(-1, 3, 32, 32)
    return torch.from_numpy(pixels), lab


def _cifar_py_classes(folder: Path, layout: _CifarLayout) -> list[str]:
    path = folder / layout.py_meta
    if not path.is_file():
        return list(layout.default_classes)
    meta = _str_keys(_restricted_load(path), path)
    names = meta.get(layout.py_meta_key)
    if not isinstance(names, (list, tuple)) or len(names) != layout.num_classes:
        raise _error(
            f"{path} is corrupt: expected {layout.num_classes} names under {layout.py_meta_key!r}"
        )
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def _read_names_file(path: Path, count: int, default: Sequence[str]) -> list[str]:
    if not path.is_file():
        return list(default)
    text = path.read_text(encoding="utf-8", errors="replace")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != count:
        raise _error(f"{path} is corrupt: expected {count} class names, found {len(names)}")
    return names


def _cifar_bin_classes(folder: Path, layout: _CifarLayout) -> list[str]:
    return _read_names_file(folder / layout.bin_names, layout.num_classes, layout.default_classes)


# --------------------------------------------------------------------------------------------
# STL-10
# --------------------------------------------------------------------------------------------

_STL_SIDE = 96
_STL_RECORD = 3 * _STL_SIDE * _STL_SIDE
_STL_SPLITS = ("train", "test", "unlabeled", "train+unlabeled")
_STL_EXPECTED = (
    "stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin, "
    "class_names.txt}"
)


def _stl_image_files(split: str) -> list[tuple[str, str | None]]:
    """(images file, labels file or None) per part of an STL-10 split."""
    return {
        "train": [("train_X.bin", "train_y.bin")],
        "test": [("test_X.bin", "test_y.bin")],
        "unlabeled": [("unlabeled_X.bin", None)],
        "train+unlabeled": [("train_X.bin", None), ("unlabeled_X.bin", None)],
    }[split]


def _find_stl10(root: Path, split: str) -> Path | None:
    first = _stl_image_files(split)[0][0]
    for folder in (root / "stl10_binary", root):
        if (folder / first).is_file():
            return folder
    return None


def _stl_memmap(path: Path) -> np.ndarray:
    """A read-only ``[N, 3, 96, 96]`` (row-major H, W) view of an STL-10 images file.

    The file stores each image channel by channel, each channel column by column (MATLAB
    order), so the raw ``[N, 3, 96, 96]`` reading is ``[N, C, W, H]`` and needs its last two
    axes swapped.
    """
    if not path.is_file():
        raise _error(f"STL-10 copy is incomplete: {path} is missing; restore the official files")
    size = path.stat().st_size
    if size % _STL_RECORD:
        raise _error(
            f"{path} is truncated or corrupt: {size} bytes is not a multiple of the "
            f"{_STL_RECORD}-byte image size; replace it with a fresh copy of the official file"
        )
    if size == 0:
        return np.zeros((0, 3, _STL_SIDE, _STL_SIDE), dtype=np.uint8)
    shape = (size // _STL_RECORD, 3, _STL_SIDE, _STL_SIDE)
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=shape)
    return raw.transpose(0, 1, 3, 2)


def _stl_labels(path: Path, n: int) -> torch.Tensor:
    if not path.is_file():
        raise _error(f"STL-10 copy is incomplete: {path} is missing; restore the official files")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.shape[0] != n:
        raise _error(
            f"{path} is truncated or corrupt: {raw.shape[0]} labels for {n} images; "
            f"replace it with a fresh copy of the official file"
        )
    if n and (raw.min() < 1 or raw.max() > 10):
        raise _error(
            f"{path} is corrupt: STL-10 labels must be 1..10, found {raw.min()}..{raw.max()}"
        )
    return torch.from_numpy(raw.astype(np.int64) - 1)


def _load_stl10(
    root: str | os.PathLike[str] | None, split: str, download: bool, image_size: int | None
) -> ImageDataset:
    _check_split("stl10", split, _STL_SPLITS)
    base = _resolve_root(root, "STL-10", _STL_EXPECTED)
    folder = _find_stl10(base, split)
    if folder is None and download:
        _download_and_extract("stl10", base, _STL_EXPECTED)
        folder = _find_stl10(base, split)
    if folder is None:
        raise _error(
            f"STL-10 {split} files not found under {base}: expected {_STL_EXPECTED}; point "
            f"data.root at that folder, or set data.download=true to fetch them"
        )
    parts = [(_stl_memmap(folder / x), y) for x, y in _stl_image_files(split)]
    total = sum(p[0].shape[0] for p in parts)
    if total == 0:
        raise _error(f"STL-10 {split} split in {folder} is empty: its files hold no images")
    side = image_size or _STL_SIDE
    # Fill one preallocated tensor chunk by chunk: the 100k-image unlabeled file is never
    # copied twice, and resizing (if asked) happens on small float chunks.
    images = torch.empty((total, 3, side, side), dtype=torch.uint8)
    labels: list[torch.Tensor] = []
    offset = 0
    for arr, label_file in parts:
        n = arr.shape[0]
        for start in range(0, n, _CHUNK * 4):
            chunk = torch.from_numpy(np.ascontiguousarray(arr[start : start + _CHUNK * 4]))
            if side != _STL_SIDE:
                chunk = resize_uint8(chunk, side)
            images[offset + start : offset + start + chunk.shape[0]] = chunk
        if label_file is not None:
            labels.append(_stl_labels(folder / label_file, n))
        offset += n
    classes = _read_names_file(folder / "class_names.txt", 10, _STL10_CLASSES)
    lab = torch.cat(labels) if labels else None
    return ImageDataset(images, lab, classes, "stl10")


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

def _load_imagefolder(root: str | os.PathLike[str] | None, split: str, size: int,
                      max_bad_fraction: float) -> ImageDataset:
    # decoded in this process (no worker processes): loading draws nothing from torch's global
    # generator, so a run's initial weights do not depend on the data's format
    return load_in_memory(FolderSource.scan(root, split), None, size, workers=0,
                          max_bad_fraction=max_bad_fraction)


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def _download_and_extract(key: str, root: Path, expected: str) -> None:
    """Fetch the official archive of ``key`` into ``root``, check its md5, extract it there."""
    url, md5, _ = _ARCHIVES[key]
    archive = root / url.rsplit("/", 1)[-1]
    by_hand = f"download {url} by hand and extract it into {root} (expected {expected})"
    if not (archive.is_file() and _md5(archive) == md5):
        partial = archive.with_name(archive.name + ".part")
        try:
            root.mkdir(parents=True, exist_ok=True)
            digest = hashlib.md5()
            with (
                urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp,
                open(partial, "wb") as out,
            ):
                while block := resp.read(1 << 20):
                    digest.update(block)
                    out.write(block)
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
            partial.unlink(missing_ok=True)
            raise _error(
                f"downloading {key} failed ({type(exc).__name__}: {exc}); {by_hand}"
            ) from None
        if digest.hexdigest() != md5:
            partial.unlink(missing_ok=True)
            raise _error(
                f"downloaded {key} archive from {url} has md5 {digest.hexdigest()}, expected {md5} "
                f"(incomplete or altered download); retry, or {by_hand}"
            )
        partial.replace(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            _safe_extract(tar, root)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _error(
            f"extracting {archive} failed ({type(exc).__name__}: {exc}); {by_hand}"
        ) from None


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract regular files and folders only, refusing paths that leave ``dest``."""
    dest_resolved = dest.resolve()
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if not (member.isfile() or member.isdir()) or (
            target != dest_resolved and dest_resolved not in target.parents
        ):
            raise _error(
                f"archive member {member.name!r} is not a plain file inside {dest}; "
                f"refusing to extract"
            )
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
    else:  # pragma: no cover - Python without extraction filters; members were checked above
        tar.extractall(dest)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
