"""Tests of siamgrad.data.datasets: every loader reads files written here in the real on-disk formats.

The writers in this file are independent of the loaders: they lay the pixels out the way the
official formats describe (CIFAR rows of 1024 R, 1024 G, 1024 B bytes; STL-10 images stored
column-major; PNG/JPEG/BMP/WebP through Pillow) and the tests check that the loaders give back
exactly the pixels and labels written.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from siamgrad.data import datasets as data
from siamgrad.data.bad_images import UnreadableImageWarning
from siamgrad.data.datasets import DATASETS, RestrictedUnpickler, load_dataset
from siamgrad.data.in_memory import ImageDataset, channel_stats
from siamgrad.errors import DataError, SiamgradError

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
REAL_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"


# ------------------------------------------------------------------------------------------
# helpers: independent writers and references
# ------------------------------------------------------------------------------------------


def random_images(n: int, side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, side, side), dtype=np.uint8)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """N x 3072 rows: the red plane row by row, then green, then blue."""
    rows = np.empty((images.shape[0], 3072), dtype=np.uint8)
    for i, img in enumerate(images):
        rows[i] = np.concatenate([img[c].ravel() for c in range(3)])
    return rows


def write_pickle(path: Path, obj: object, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)


def write_cifar10_python(folder: Path, sizes=(3, 2, 4, 1, 2), n_test: int = 3, seed: int = 0):
    """A cifar-10-batches-py folder with tiny batches; returns (train images, labels, test ...)."""
    rng = np.random.default_rng(seed)
    train_imgs, train_labels = [], []
    for i, n in enumerate(sizes, start=1):
        imgs = random_images(n, 32, seed + i)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        protocol = (2, 4, 5)[i % 3]  # exercise several pickle protocols
        write_pickle(
            folder / f"data_batch_{i}",
            {"batch_label": f"training batch {i} of 5", "labels": labels,
             "data": cifar_rows(imgs), "filenames": [f"img_{i}_{j}.png" for j in range(n)]},
            protocol,
        )
        train_imgs.append(imgs)
        train_labels += labels
    test_imgs = random_images(n_test, 32, seed + 100)
    test_labels = [int(v) for v in rng.integers(0, 10, size=n_test)]
    write_pickle(folder / "test_batch", {"labels": test_labels, "data": cifar_rows(test_imgs)}, 2)
    write_pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072}, 2)
    return np.concatenate(train_imgs), np.array(train_labels), test_imgs, np.array(test_labels)


def expect_data_error(fn, *fragments: str) -> str:
    """Run ``fn``; it must raise DataError with a one-line message holding every fragment."""
    with pytest.raises(DataError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and message.strip(), message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), (fragment, message)
    return message


def reference_resize(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """torchvision's antialiased bilinear resize on float values, rounded to uint8."""
    hw = [size, size] if isinstance(size, int) else list(size)
    x = torch.from_numpy(images).to(torch.float32)
    y = TF.resize(x, hw, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8).numpy()


# ------------------------------------------------------------------------------------------
# CIFAR
# ------------------------------------------------------------------------------------------


def test_cifar10_python_format_pixels_and_labels(tmp_path):
    train_x, train_y, test_x, test_y = write_cifar10_python(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path, tmp_path / "cifar-10-batches-py", str(tmp_path)):
        ds = load_dataset("cifar10", root, "train")
        assert ds.images.dtype == torch.uint8 and ds.images.is_contiguous()
        assert ds.images.shape == (12, 3, 32, 32) and ds.image_size == 32
        np.testing.assert_array_equal(ds.images.numpy(), train_x)
        assert ds.labels.dtype == torch.int64
        np.testing.assert_array_equal(ds.labels.numpy(), train_y)
        assert ds.classes == CIFAR10_NAMES and ds.name == "cifar10" and len(ds) == 12
    test = load_dataset("cifar10", tmp_path, "test")
    np.testing.assert_array_equal(test.images.numpy(), test_x)
    np.testing.assert_array_equal(test.labels.numpy(), test_y)


def test_cifar10_bytes_keys_and_resize(tmp_path):
    # Python-2 era pickles come back with bytes keys under encoding="bytes"; accept those too.
    folder = tmp_path / "cifar-10-batches-py"
    imgs = random_images(4, 32, 7)
    labels = [0, 9, 3, 3]
    write_pickle(folder / "test_batch", {b"data": cifar_rows(imgs), b"labels": labels}, 2)
    ds = load_dataset("cifar10", tmp_path, "test")
    np.testing.assert_array_equal(ds.images.numpy(), imgs)
    assert ds.labels.tolist() == labels
    assert ds.classes == CIFAR10_NAMES  # no batches.meta: the canonical names
    small = load_dataset("cifar10", tmp_path, "test", image_size=12)
    assert small.images.shape == (4, 3, 12, 12)
    ref = reference_resize(imgs, 12)
    assert np.abs(small.images.numpy().astype(int) - ref.astype(int)).max() <= 1


def test_cifar100_python_format_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    rng = np.random.default_rng(3)
    names = [f"class_{i:02d}" for i in range(100)]
    for split, n in (("train", 5), ("test", 3)):
        imgs = random_images(n, 32, n)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        coarse = [f // 5 for f in fine]
        batch = {"data": cifar_rows(imgs), "fine_labels": fine, "coarse_labels": coarse,
                 "filenames": ["x"] * n}
        write_pickle(folder / split, batch)
        write_pickle(folder / "meta", {"fine_label_names": names, "coarse_label_names": ["c"] * 20})
        ds = load_dataset("cifar100", tmp_path, split)
        np.testing.assert_array_equal(ds.images.numpy(), imgs)
        assert ds.labels.tolist() == fine
        assert ds.classes == names and ds.name == "cifar100"


def test_cifar10_binary_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    expected_x, expected_y = [], []
    for i, fname in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        imgs = random_images(2 + i % 2, 32, 50 + i)
        labels = [(3 * i + j) % 10 for j in range(imgs.shape[0])]
        with open(folder / fname, "wb") as fh:
            for img, lab in zip(imgs, labels):
                fh.write(bytes([lab]))
                for c in range(3):
                    fh.write(img[c].tobytes())
        expected_x.append(imgs)
        expected_y += [labels]
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    for root in (tmp_path, folder):
        train = load_dataset("cifar10", root, "train")
        np.testing.assert_array_equal(train.images.numpy(), np.concatenate(expected_x[:5]))
        assert train.labels.tolist() == sum(expected_y[:5], [])
        assert train.classes == CIFAR10_NAMES
    test = load_dataset("cifar10", tmp_path, "test")
    np.testing.assert_array_equal(test.images.numpy(), expected_x[5])
    assert test.labels.tolist() == expected_y[5]


def test_cifar100_binary_format_takes_fine_label(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    imgs = random_images(3, 32, 11)
    coarse, fine = [1, 19, 4], [7, 99, 42]
    with open(folder / "test.bin", "wb") as fh:
        for img, c_lab, f_lab in zip(imgs, coarse, fine):
            fh.write(bytes([c_lab, f_lab]) + img[0].tobytes() + img[1].tobytes() + img[2].tobytes())
    ds = load_dataset("cifar100", tmp_path, "test")
    np.testing.assert_array_equal(ds.images.numpy(), imgs)
    assert ds.labels.tolist() == fine
    assert len(ds.classes) == 100 and ds.classes == sorted(ds.classes)  # canonical fine names
    assert ds.classes[99] == "worm" and ds.classes[0] == "apple"


def test_real_cifar10_subset():
    if not (REAL_SUBSET / "cifar-10-batches-py").is_dir():
        pytest.skip(f"real CIFAR-10 subset not found at {REAL_SUBSET} (shared data folder absent)")
    train = load_dataset("cifar10", REAL_SUBSET, "train")
    test = load_dataset("cifar10", REAL_SUBSET / "cifar-10-batches-py", "test")
    assert len(train) == 5085 and len(test) == 1017
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    for ds in (train, test):
        assert ds.classes == CIFAR10_NAMES
        assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
        assert torch.bincount(ds.labels, minlength=10).min() > 50  # all classes present
    # Natural images: per-channel means well inside (0, 1), sizeable spread.
    mean, std = channel_stats(train)
    assert all(0.3 < m < 0.7 for m in mean) and all(0.15 < s < 0.35 for s in std)


# ------------------------------------------------------------------------------------------
# STL-10
# ------------------------------------------------------------------------------------------


def write_stl_images(path: Path, images: np.ndarray) -> None:
    """STL-10 layout: per image, per channel, the 96x96 plane in column-major order."""
    with open(path, "wb") as fh:
        for img in images:
            for c in range(3):
                fh.write(np.asarray(img[c]).flatten(order="F").tobytes())


def stl_fixture(tmp_path: Path) -> dict[str, np.ndarray]:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    h = np.arange(96).reshape(96, 1)
    w = np.arange(96).reshape(1, 96)
    planes = [(h + 2 * w) % 256, (3 * h) % 256, (5 * w + 1) % 256]
    pattern = np.stack([np.broadcast_to(p, (96, 96)) for p in planes]).astype(np.uint8)
    assert not np.array_equal(pattern[0], pattern[0].T)  # asymmetric: a missed transpose shows
    train_x = np.concatenate([pattern[None], random_images(2, 96, 1)])
    test_x = random_images(2, 96, 2)
    unl_x = random_images(3, 96, 3)
    write_stl_images(folder / "train_X.bin", train_x)
    write_stl_images(folder / "test_X.bin", test_x)
    write_stl_images(folder / "unlabeled_X.bin", unl_x)
    (folder / "train_y.bin").write_bytes(bytes([1, 10, 4]))
    (folder / "test_y.bin").write_bytes(bytes([2, 7]))
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return {"train": train_x, "test": test_x, "unlabeled": unl_x, "pattern": pattern}


def test_stl10_binary_transpose_labels_and_splits(tmp_path):
    written = stl_fixture(tmp_path)
    train = load_dataset("stl10", tmp_path, "train")
    assert train.images.shape == (3, 3, 96, 96)
    np.testing.assert_array_equal(train.images[0].numpy(), written["pattern"])
    # row h, column w of channel 0 holds (h + 2w) % 256
    assert int(train.images[0, 0, 1, 0]) == 1 and int(train.images[0, 0, 0, 1]) == 2
    np.testing.assert_array_equal(train.images.numpy(), written["train"])
    assert train.labels.tolist() == [0, 9, 3]
    assert train.classes[2] == "car" and len(train.classes) == 10

    test = load_dataset("stl10", tmp_path / "stl10_binary", "test")
    np.testing.assert_array_equal(test.images.numpy(), written["test"])
    assert test.labels.tolist() == [1, 6]

    unl = load_dataset("stl10", tmp_path, "unlabeled")
    assert unl.labels is None
    np.testing.assert_array_equal(unl.images.numpy(), written["unlabeled"])

    both = load_dataset("stl10", tmp_path, "train+unlabeled")
    assert both.labels is None and len(both) == 6
    np.testing.assert_array_equal(
        both.images.numpy(), np.concatenate([written["train"], written["unlabeled"]])
    )

    small = load_dataset("stl10", tmp_path, "train", image_size=32)
    assert small.images.shape == (3, 3, 32, 32) and small.image_size == 32
    ref = reference_resize(written["train"], 32)
    assert np.abs(small.images.numpy().astype(int) - ref.astype(int)).max() <= 1
    assert small.labels.tolist() == [0, 9, 3]


def test_stl10_corrupt_files(tmp_path):
    stl_fixture(tmp_path)
    folder = tmp_path / "stl10_binary"
    (folder / "test_y.bin").write_bytes(bytes([1, 2, 3]))  # 3 labels for 2 images
    expect_data_error(lambda: load_dataset("stl10", tmp_path, "test"), "test_y.bin", "2 images")
    (folder / "train_y.bin").write_bytes(bytes([0, 1, 2]))  # labels must be 1..10
    expect_data_error(lambda: load_dataset("stl10", tmp_path, "train"), "1..10")
    with open(folder / "unlabeled_X.bin", "ab") as fh:
        fh.write(b"\x00" * 100)
    expect_data_error(
        lambda: load_dataset("stl10", tmp_path, "unlabeled"), "unlabeled_X.bin", "multiple"
    )
    expect_data_error(
        lambda: load_dataset("stl10", tmp_path, "extra"), "unknown split", "train+unlabeled"
    )
    (folder / "test_X.bin").write_bytes(b"")
    (folder / "test_y.bin").write_bytes(b"")
    expect_data_error(lambda: load_dataset("stl10", tmp_path, "test"), "empty")


# ------------------------------------------------------------------------------------------
# image folders
# ------------------------------------------------------------------------------------------


def save_image(path: Path, array: np.ndarray, fmt: str | None = None, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if array.ndim == 2 else "RGB"
    Image.fromarray(array, mode=mode).save(path, format=fmt, **kwargs)


def test_imagefolder_classes_grayscale_and_corrupt_file(tmp_path):
    rng = np.random.default_rng(0)
    written: dict[str, np.ndarray] = {}
    for cls in ("cats", "dogs"):
        for k in range(5):
            arr = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            name = f"{cls}/img{k}.png"
            save_image(tmp_path / name, arr)
            written[name] = arr.transpose(2, 0, 1)
    gray = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    save_image(tmp_path / "dogs/gray.png", gray)
    written["dogs/gray.png"] = np.stack([gray] * 3)
    bmp = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    save_image(tmp_path / "cats/pic.BMP", bmp, "BMP")
    written["cats/pic.BMP"] = bmp.transpose(2, 0, 1)
    webp = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    save_image(tmp_path / "cats/pic.webp", webp, "WEBP", lossless=True)
    written["cats/pic.webp"] = webp.transpose(2, 0, 1)
    (tmp_path / "dogs/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (tmp_path / "dogs/notes.txt").write_text("ignored: not an image suffix")

    # 1 unreadable file of 14: above the default limit (data.max_bad_fraction=0.01), within 0.1
    msg = expect_data_error(lambda: load_dataset("imagefolder", tmp_path, image_size=8),
                            "1 of the 14 files", "broken.png", "data.max_bad_fraction=0.01")
    assert "gray.png" not in msg
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset("imagefolder", tmp_path, image_size=8, max_bad_fraction=0.1)
    relevant = [w for w in caught if "unreadable" in str(w.message)]
    assert len(relevant) == 1, [str(w.message) for w in caught]
    assert issubclass(relevant[0].category, UnreadableImageWarning)
    assert str(relevant[0].message).startswith(f"skipped unreadable image {tmp_path / 'dogs' / 'broken.png'} (")

    assert ds.classes == ["cats", "dogs"] and ds.name == "imagefolder"
    assert ds.images.shape == (13, 3, 8, 8) and ds.labels.dtype == torch.int64
    # files in sorted order within sorted class folders
    order = ["cats/img0.png", "cats/img1.png", "cats/img2.png", "cats/img3.png", "cats/img4.png",
             "cats/pic.BMP", "cats/pic.webp",
             "dogs/gray.png", "dogs/img0.png", "dogs/img1.png", "dogs/img2.png", "dogs/img3.png",
             "dogs/img4.png"]
    assert sorted(order[:7]) == order[:7] and sorted(order[7:]) == order[7:]
    for i, name in enumerate(order):
        np.testing.assert_array_equal(ds.images[i].numpy(), written[name], err_msg=name)
        assert int(ds.labels[i]) == (0 if name.startswith("cats") else 1)
    g = ds.images[order.index("dogs/gray.png")]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])


def test_imagefolder_resize_shorter_side_then_center_crop(tmp_path):
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 256, size=(8, 16, 3), dtype=np.uint8)  # H=8, W=16
    tall = rng.integers(0, 256, size=(12, 6, 3), dtype=np.uint8)  # H=12, W=6
    save_image(tmp_path / "flat" / "a_wide.png", wide)
    save_image(tmp_path / "flat" / "b_tall.png", tall)
    ds = load_dataset("imagefolder", tmp_path / "flat", image_size=4)
    assert ds.labels is None and ds.classes == [] and ds.images.shape == (2, 3, 4, 4)
    ref_wide = reference_resize(wide.transpose(2, 0, 1)[None], (4, 8))[0][:, :, 2:6]
    ref_tall = reference_resize(tall.transpose(2, 0, 1)[None], (8, 4))[0][:, 2:6, :]
    assert np.abs(ds.images[0].numpy().astype(int) - ref_wide.astype(int)).max() <= 1
    assert np.abs(ds.images[1].numpy().astype(int) - ref_tall.astype(int)).max() <= 1
    default = load_dataset("imagefolder", tmp_path / "flat")
    assert default.image_size == 64


def test_imagefolder_flat_unlabeled_exact_pixels(tmp_path):
    rng = np.random.default_rng(2)
    arrays = [rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8) for _ in range(3)]
    for k, arr in enumerate(arrays):
        save_image(tmp_path / f"{k:03d}.png", arr)
    ds = load_dataset("imagefolder", tmp_path, image_size=6)
    assert ds.labels is None and ds.classes == []
    expected = np.stack([a.transpose(2, 0, 1) for a in arrays])
    np.testing.assert_array_equal(ds.images.numpy(), expected)


def test_imagefolder_split_subfolders(tmp_path):
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    blue = np.zeros((4, 4, 3), np.uint8)
    blue[..., 2] = 90
    save_image(tmp_path / "train/a/0.png", red)
    save_image(tmp_path / "train/b/0.png", blue)
    save_image(tmp_path / "test/a/0.png", blue)
    save_image(tmp_path / "test/b/0.png", red)
    test = load_dataset("imagefolder", tmp_path, "test", image_size=4)
    assert test.classes == ["a", "b"] and test.labels.tolist() == [0, 1]
    assert int(test.images[0, 2, 0, 0]) == 90 and int(test.images[1, 0, 0, 0]) == 200
    train = load_dataset("imagefolder", tmp_path, "train", image_size=4)
    assert int(train.images[0, 0, 0, 0]) == 200
    expect_data_error(lambda: load_dataset("imagefolder", tmp_path, "val"), "val", "train", "test")


def test_imagefolder_errors(tmp_path):
    expect_data_error(lambda: load_dataset("imagefolder", None), "data.root")
    expect_data_error(lambda: load_dataset("imagefolder", tmp_path / "nope"), "does not exist")
    (tmp_path / "empty").mkdir()
    expect_data_error(lambda: load_dataset("imagefolder", tmp_path / "empty"), "empty")
    flat = tmp_path / "flat"
    save_image(flat / "ok.png", np.zeros((4, 4, 3), np.uint8))
    expect_data_error(lambda: load_dataset("imagefolder", flat, "test"), "test", "split")
    for k in range(8):
        save_image(flat / f"ok{k}.png", np.full((4, 4, 3), k, np.uint8))
    for k in range(2):  # 2 of 11 unreadable: more than 10%
        (flat / f"bad{k}.jpg").write_bytes(b"not a jpeg at all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        expect_data_error(lambda: load_dataset("imagefolder", flat, max_bad_fraction=0.1),
                          "2 of the 11 files", "bad0.jpg", "bad1.jpg", "data.max_bad_fraction=0.1")
        assert len(load_dataset("imagefolder", flat, max_bad_fraction=0.2)) == 9  # 2 of 11 <= 20%


# ------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------


def digits_reference(size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scaled = np.clip(np.round(bunch.images * 255.0 / 16.0), 0, 255).astype(np.uint8)[:, None]
    if size != 8:
        scaled = reference_resize(scaled, size)
    return scaled[:, 0], bunch.target.astype(np.int64)


def test_digits_splits_partition_stratified_deterministic():
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", "ignored/root", split="test")
    assert len(train) + len(test) == 1797
    ref_images, ref_labels = digits_reference()
    counts = np.bincount(ref_labels, minlength=10)
    expected_test = np.floor(0.25 * counts + 0.5).astype(int)
    np.testing.assert_array_equal(torch.bincount(test.labels, minlength=10).numpy(), expected_test)
    train_counts = torch.bincount(train.labels, minlength=10).numpy()
    np.testing.assert_array_equal(train_counts, counts - expected_test)
    assert len(test) == expected_test.sum() and abs(len(test) / 1797 - 0.25) < 0.01
    for ds in (train, test):
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, 16, 16)
        assert ds.classes == [str(d) for d in range(10)] and ds.name == "digits"
        assert torch.equal(ds.images[:, 0], ds.images[:, 1])
        assert torch.equal(ds.images[:, 0], ds.images[:, 2])
    both = torch.cat([train.images, test.images])
    assert int(both.min()) == 0 and int(both.max()) == 255
    # the two splits together are exactly the digits (as a multiset of image+label records)
    loaded = sorted(
        img[0].numpy().tobytes() + bytes([lab])
        for img, lab in zip(both, torch.cat([train.labels, test.labels]).tolist())
    )
    reference = sorted(
        img.tobytes() + bytes([int(lab)]) for img, lab in zip(ref_images, ref_labels)
    )
    assert loaded == reference
    again = load_dataset("digits", split="test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_digits_native_size_is_exact_scaling():
    ds = load_dataset("digits", split="train", image_size=8)
    ref_images, ref_labels = digits_reference(8)
    rows = {img.tobytes() + bytes([int(lab)]) for img, lab in zip(ref_images, ref_labels)}
    for img, lab in zip(ds.images[:, 0], ds.labels.tolist()):
        assert img.numpy().tobytes() + bytes([lab]) in rows
    assert load_dataset("digits", image_size=28).images.shape[1:] == (3, 28, 28)
    expect_data_error(lambda: load_dataset("digits", split="val"), "unknown split", "train, test")


# ------------------------------------------------------------------------------------------
# container, fraction, channel statistics
# ------------------------------------------------------------------------------------------


def indexed_dataset(labels: list[int] | None, n: int | None = None) -> ImageDataset:
    """Image i carries its index in pixels (0,0,0) and (0,0,1)."""
    n = len(labels) if labels is not None else n
    images = torch.zeros((n, 3, 2, 2), dtype=torch.uint8)
    idx = torch.arange(n)
    images[:, 0, 0, 0] = (idx % 256).to(torch.uint8)
    images[:, 0, 0, 1] = (idx // 256).to(torch.uint8)
    lab = None if labels is None else torch.tensor(labels)
    return ImageDataset(images, lab, ["a", "b", "c"], "toy")


def image_ids(ds: ImageDataset) -> list[int]:
    return (ds.images[:, 0, 0, 0].long() + 256 * ds.images[:, 0, 0, 1].long()).tolist()


def test_subset_and_fraction():
    labels = [0] * 40 + [1] * 21 + [2] * 7
    ds = indexed_dataset(labels)
    sub = ds.subset(torch.tensor([5, 2, 60]))
    assert image_ids(sub) == [5, 2, 60] and sub.labels.tolist() == [0, 0, 1]
    assert sub.classes == ds.classes and sub.name == "toy"
    mask = torch.zeros(68, dtype=torch.bool)
    mask[[1, 67]] = True
    assert image_ids(ds.subset(mask)) == [1, 67]

    half = ds.fraction(0.5, seed=1)
    ids = image_ids(half)
    assert ids == sorted(set(ids))  # distinct, original order
    assert all(labels[i] == lab for i, lab in zip(ids, half.labels.tolist()))
    # floor(0.5 n_c + 1/2) per class: 20, 11, 4
    assert torch.bincount(half.labels, minlength=3).tolist() == [20, 11, 4]
    assert image_ids(ds.fraction(0.5, seed=1)) == ids
    assert image_ids(ds.fraction(0.5, seed=2)) != ids
    tiny = ds.fraction(0.01)
    assert torch.bincount(tiny.labels, minlength=3).tolist() == [1, 1, 1]  # at least one per class
    assert image_ids(ds.fraction(1.0)) == list(range(68))
    assert len(ds.fraction(np.float32(0.5), seed=1)) == 35
    for bad in (0, 0.0, -0.5, 1.5, True, "0.5"):
        with pytest.raises(SiamgradError):
            ds.fraction(bad)
    unl = indexed_dataset(None, n=30)
    quarter = unl.fraction(0.25, seed=0)
    assert quarter.labels is None and len(quarter) == 8 and len(set(image_ids(quarter))) == 8


def test_imagedataset_validates():
    with pytest.raises(DataError):
        ImageDataset(torch.zeros((2, 3, 4, 4), dtype=torch.float32), None, [], "x")
    with pytest.raises(DataError):
        ImageDataset(torch.zeros((2, 1, 4, 4), dtype=torch.uint8), None, [], "x")
    with pytest.raises(DataError):
        images = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
        ImageDataset(images, torch.zeros(3, dtype=torch.long), [], "x")
    channels_last = torch.zeros((2, 4, 4, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    ds = ImageDataset(channels_last, torch.tensor([0, 1], dtype=torch.int32), [], "x")
    assert ds.images.is_contiguous() and ds.labels.dtype == torch.int64


def test_channel_stats_matches_numpy():
    imgs = random_images(6, 5, 9)
    imgs[:, 1] //= 4  # make the channels differ
    ds = ImageDataset(torch.from_numpy(imgs), None, [], "toy")
    mean, std = channel_stats(ds)
    x = imgs.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=0, atol=1e-9)
    # bounded sample: with per-channel constant images any sample gives the exact answer
    const = torch.zeros((50, 3, 3, 3), dtype=torch.uint8)
    const[:, 0], const[:, 1], const[:, 2] = 51, 102, 255
    mean, std = channel_stats(ImageDataset(const, None, [], "c"), max_images=7)
    np.testing.assert_allclose(mean, (0.2, 0.4, 1.0), atol=1e-12)
    np.testing.assert_allclose(std, (0.0, 0.0, 0.0), atol=1e-7)
    # a sample of 20 out of 2000 noisy images stays close to the full statistics
    big = ImageDataset(torch.from_numpy(random_images(2000, 4, 1)), None, [], "b")
    m_s, s_s = channel_stats(big, max_images=200)
    m_f, s_f = channel_stats(big)
    np.testing.assert_allclose(m_s, m_f, atol=0.03)
    np.testing.assert_allclose(s_s, s_f, atol=0.03)


# ------------------------------------------------------------------------------------------
# restricted unpickling
# ------------------------------------------------------------------------------------------


class _Exploit:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvalExploit:
    def __reduce__(self):
        return (eval, ("1 + 1",))


def test_restricted_unpickler_refuses_foreign_globals(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _Exploit(str(marker)), "labels": []}, protocol=2)
    with pytest.raises(DataError) as info:
        RestrictedUnpickler(io.BytesIO(payload)).load()
    assert "system" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()
    with pytest.raises(DataError):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(_EvalExploit()))).load()

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(payload)
    expect_data_error(lambda: load_dataset("cifar10", tmp_path, "test"), "test_batch", "system")
    assert not marker.exists()
    # numpy arrays under every protocol are still allowed
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 3, 4, 5):
        blob = pickle.dumps({"a": arr, "s": np.int64(3)}, protocol=protocol)
        out = RestrictedUnpickler(io.BytesIO(blob)).load()
        np.testing.assert_array_equal(out["a"], arr)
        assert out["s"] == 3


# ------------------------------------------------------------------------------------------
# error paths
# ------------------------------------------------------------------------------------------


def test_unknown_dataset_and_split():
    msg = expect_data_error(lambda: load_dataset("imagenet"), "imagenet")
    assert all(name in msg for name in DATASETS)
    expect_data_error(
        lambda: load_dataset("cifar10", "unused", "validation"), "unknown split", "train, test"
    )


def test_missing_root_or_files(tmp_path):
    for name, expected in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                           ("stl10", "stl10_binary")):
        expect_data_error(
            lambda: load_dataset(name, None), "data.root", "data.download=true", expected
        )
        expect_data_error(
            lambda: load_dataset(name, tmp_path), str(tmp_path), expected, "data.download=true"
        )


def test_cifar_corrupt_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_python(folder)
    # missing batch
    (folder / "data_batch_3").rename(tmp_path / "moved")
    expect_data_error(
        lambda: load_dataset("cifar10", tmp_path, "train"), "data_batch_3", "incomplete"
    )
    # truncated pickle
    full = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(full[: len(full) // 2])
    expect_data_error(lambda: load_dataset("cifar10", tmp_path, "test"), "test_batch", "corrupt")
    (folder / "test_batch").write_bytes(b"garbage, not a pickle")
    expect_data_error(lambda: load_dataset("cifar10", tmp_path, "test"), "test_batch", "corrupt")
    # missing key
    write_pickle(folder / "test_batch", {"data": cifar_rows(random_images(2, 32, 0))})
    expect_data_error(lambda: load_dataset("cifar10", tmp_path, "test"), "labels")
    # rows not 3072 wide
    write_pickle(folder / "test_batch", {"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]})
    expect_data_error(lambda: load_dataset("cifar10", tmp_path, "test"), "3072")
    # label count and range
    write_pickle(folder / "test_batch", {"data": np.zeros((2, 3072), np.uint8), "labels": [0]})
    expect_data_error(lambda: load_dataset("cifar10", tmp_path, "test"), "labels")
    write_pickle(folder / "test_batch", {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]})
    expect_data_error(lambda: load_dataset("cifar10", tmp_path, "test"), "0..9")
    # not a dict
    write_pickle(folder / "test_batch", [1, 2, 3])
    expect_data_error(lambda: load_dataset("cifar10", tmp_path, "test"), "dict")
    # empty
    write_pickle(folder / "test_batch", {"data": np.zeros((0, 3072), np.uint8), "labels": []})
    expect_data_error(lambda: load_dataset("cifar10", tmp_path, "test"), "empty")


def test_cifar_binary_corrupt_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(b"\x01" * (3073 * 2 + 5))
    expect_data_error(lambda: load_dataset("cifar10", tmp_path, "test"), "test_batch.bin", "3073")
    (folder / "test_batch.bin").write_bytes(b"")
    expect_data_error(lambda: load_dataset("cifar10", tmp_path, "test"), "empty")
    (folder / "test_batch.bin").write_bytes(bytes([12]) + b"\x00" * 3072)
    expect_data_error(lambda: load_dataset("cifar10", tmp_path, "test"), "0..9")


# ------------------------------------------------------------------------------------------
# download
# ------------------------------------------------------------------------------------------


def test_download_network_failure(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    for name in ("cifar10", "cifar100", "stl10"):
        msg = expect_data_error(
            lambda: load_dataset(name, tmp_path / "dl", download=True),
            "download", "failed", "by hand",
        )
        assert str(tmp_path / "dl") in msg and "http" in msg
    assert not any((tmp_path / "dl").glob("*.part"))
    expect_data_error(lambda: load_dataset("cifar10", None, download=True), "data.root")


def test_download_checks_md5_and_extracts(tmp_path, monkeypatch):
    # a tiny archive in the official layout, served by a fake opener
    src = tmp_path / "src"
    train_x, train_y, _, _ = write_cifar10_python(
        src / "cifar-10-batches-py", sizes=(1, 1, 1, 1, 1), n_test=1
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive = buf.getvalue()
    served = {"body": b"corrupted download"}
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(served["body"])
    )
    dest = tmp_path / "dest"
    expect_data_error(lambda: load_dataset("cifar10", dest, download=True), "md5")

    url = "https://example.invalid/cifar-10-python.tar.gz"
    md5 = hashlib.md5(archive).hexdigest()
    monkeypatch.setitem(data._ARCHIVES, "cifar10", (url, md5, "cifar-10-batches-py"))
    served["body"] = archive
    ds = load_dataset("cifar10", dest, "train", download=True)
    np.testing.assert_array_equal(ds.images.numpy(), train_x)
    assert ds.labels.tolist() == train_y.tolist()
    assert (dest / "cifar-10-batches-py" / "test_batch").is_file()
