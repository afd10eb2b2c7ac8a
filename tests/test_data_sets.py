"""Tests of the one data entry point (siamgrad.data.sets.load_data) and of the commands built on it.

``load_data`` is checked against the assembly the trainer did before it existed (load_dataset,
``fraction``, the kNN sets, channel_stats, written out here by hand); the unreadable-file limit
against counts of the files written here; ``siamgrad analyze gradients`` on a run trained from
tar shards; the warning about an unreadable file as the line a user sees on stderr, read from a
separate Python process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_png

from siamgrad.config import build_config, resolve
from siamgrad.data.bad_images import UnreadableImageWarning
from siamgrad.data.datasets import load_dataset
from siamgrad.data.in_memory import ImageDataset, channel_stats
from siamgrad.data.sets import DataSets, load_data
from siamgrad.data.streaming import StreamedDataset
from siamgrad.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore:.*image decoding:DeprecationWarning")

CLASSES = ("ant", "bee")
GARBAGE = b"these bytes are no image format at all" * 3


def write_pngs(folder: Path, n: int, seed: int = 0, classes: tuple[str, ...] | None = CLASSES) -> None:
    """``n`` small PNGs of varied sizes over the class folders (flat when ``classes`` is None)."""
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        d = folder / classes[i % len(classes)] if classes else folder
        d.mkdir(parents=True, exist_ok=True)
        img = torch.randint(0, 256, (3, 10 + i % 5, 12 + i % 3), dtype=torch.uint8, generator=g)
        (d / f"im{i:03d}.png").write_bytes(encode_png(img).numpy().tobytes())


def old_assembly(data, seed: int, size: int | None):
    """What the trainer assembled by hand for an in-memory dataset before ``load_data``."""
    train = load_dataset(data.name, data.root, data.train_split, image_size=data.image_size, download=data.download)
    if data.fraction < 1.0:
        train = train.fraction(data.fraction, seed=seed)
    knn_train = train if train.labels is not None else load_dataset(data.name, data.root, "train",
                                                                    image_size=data.image_size)
    test = load_dataset(data.name, data.root, data.test_split, image_size=data.image_size)
    mean, std = channel_stats(train)
    return train, knn_train, test, mean, std, size or train.image_size


@pytest.mark.parametrize("settings", [[], ["data.fraction=0.5", "seed=3"], ["augment.size=24", "data.image_size=20"]])
def test_load_data_gives_the_tensors_of_the_old_assembly_for_digits(settings) -> None:
    cfg = resolve(build_config(settings))
    got = load_data(cfg.data, seed=cfg.seed, size=cfg.augment.size)
    train, knn_train, test, mean, std, size = old_assembly(cfg.data, cfg.seed, cfg.augment.size)
    assert isinstance(got, DataSets) and isinstance(got.train, ImageDataset)
    for a, b in ((got.train, train), (got.knn_train, knn_train), (got.knn_test, test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.classes == b.classes
    assert got.knn_train is got.train  # the labeled training set is the kNN bank, as before
    assert got.mean == mean and got.std == std and got.image_size == size
    # the fraction is per class: round(frac * n_c) of every digit, counted here from the full split
    full = load_dataset("digits", None, "train", image_size=cfg.data.image_size)
    per_class = np.bincount(full.labels.numpy(), minlength=10)
    expected = np.floor(cfg.data.fraction * per_class + 0.5).astype(int) if cfg.data.fraction < 1 else per_class
    assert np.bincount(got.train.labels.numpy(), minlength=10).tolist() == expected.tolist()
    none = load_data(cfg.data, seed=cfg.seed, eval_sets=False)
    assert none.knn_train is None and none.knn_test is None and torch.equal(none.train.images, train.images)


def test_in_memory_folder_without_labels_or_test_split_has_no_knn_sets(tmp_path) -> None:
    write_pngs(tmp_path / "flat", 6, classes=None)
    write_pngs(tmp_path / "labeled", 6)
    for root, n in ((tmp_path / "flat", 6), (tmp_path / "labeled", 6)):
        cfg = resolve(build_config(["data=imagefolder", f"data.root={root}", "data.image_size=8"]))
        sets = load_data(cfg.data, seed=0)
        assert len(sets.train) == n and sets.knn_train is None and sets.knn_test is None
        assert sets.image_size == 8 and sets.train.images.shape[1:] == (3, 8, 8)


def test_one_unreadable_file_limit_for_in_memory_and_streamed_folders(tmp_path) -> None:
    write_pngs(tmp_path / "train", 29)
    write_pngs(tmp_path / "test", 10, seed=1)
    (tmp_path / "train" / "bee" / "zz_broken.png").write_bytes(GARBAGE)  # 1 of 30 files: 3.3%
    for stream in ("false", "true"):
        base = ["data=imagefolder", f"data.root={tmp_path}", "data.image_size=8", f"data.stream={stream}",
                "data.workers=0"]
        cfg = resolve(build_config(base))  # the default limit, data.max_bad_fraction=0.01
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnreadableImageWarning)
            with pytest.raises(DataError) as e:
                load_data(cfg.data, seed=0)
        msg = str(e.value)
        assert "1 of the 30 files" in msg and "data.max_bad_fraction=0.01" in msg and "zz_broken.png" in msg, msg
        cfg = resolve(build_config(base + ["data.max_bad_fraction=0.1", "data.eval_images=12"]))
        with pytest.warns(UnreadableImageWarning, match="zz_broken.png"):
            sets = load_data(cfg.data, seed=0)
        if stream == "false":
            assert isinstance(sets.train, ImageDataset) and len(sets.train) == 29
            assert sets.knn_train is sets.train and len(sets.knn_test) == 10
        else:  # streamed: the whole set by index, bounded labeled samples for kNN at the size
            assert isinstance(sets.train, StreamedDataset) and len(sets.train) == 30
            assert len(sets.knn_train) in (11, 12) and sets.knn_train.images.shape[1:] == (3, 8, 8)
            assert np.bincount(sets.knn_train.labels.numpy()).tolist() == [6, len(sets.knn_train) - 6]
            assert len(sets.knn_test) == 10
        assert sets.mean == channel_stats(sets.train if stream == "false" else sets.train.sample())[0]


TINY = ["backbone=tiny", "batch_size=8", "epochs=1", "method.proj_hidden_dim=32", "method.proj_output_dim=16",
        "eval.knn_k=5", "progress=false", "threads=1", "data.image_size=16", "diag.enabled=false",
        "eval.random_baseline=false", "eval.every=0", "data.workers=0"]


def test_analyze_gradients_works_on_a_run_trained_from_shards(tmp_path, capsys) -> None:
    from siamgrad.cli import main
    from siamgrad.data.pack import pack_folder
    from siamgrad.train.loop import train

    write_pngs(tmp_path / "src", 24)
    pack_folder(tmp_path / "src", tmp_path / "shards", shard_size=10)
    res = train(build_config(TINY + ["data=shards", f"data.root={tmp_path / 'shards'}", f"out_dir={tmp_path}",
                                     "run_name=s"]), log=False)
    assert res.step == 3
    capsys.readouterr()
    assert main(["analyze", "gradients", str(res.run_dir), "data.workers=0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gradient decomposition on 24 images of shards"), out[:200]
    assert len(out.splitlines()) > 3  # a row per method below the header


def test_unreadable_files_are_one_clean_line_on_stderr_naming_the_packed_file(tmp_path) -> None:
    from siamgrad.data.pack import pack_folder

    write_pngs(tmp_path / "imgs", 20)
    (tmp_path / "imgs" / "ant" / "zz_broken.png").write_bytes(GARBAGE)
    pack_folder(tmp_path / "imgs", tmp_path / "shards", shuffle=False)  # unverified: the bytes are packed
    script = textwrap.dedent(f"""
        from siamgrad.data.datasets import load_dataset
        from siamgrad.data.sources import ShardSource
        from siamgrad.data.streaming import StreamBatches

        load_dataset("imagefolder", {str(tmp_path / 'imgs')!r}, image_size=8, max_bad_fraction=0.1)
        batches = StreamBatches(ShardSource.open({str(tmp_path / 'shards')!r}), "cpu", batch_size=7, seed=0,
                                workers=0, max_bad_fraction=0.1)
        for _ in batches.epoch(0):
            pass
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    folder_file = tmp_path / "imgs" / "ant" / "zz_broken.png"
    assert len(lines) == 2, run.stderr
    assert lines[0].startswith(f"warning: skipped unreadable image {folder_file} ("), lines[0]
    # the packed file: shard and member, and the file it was packed from (the source folder's sorted order)
    member = f"{tmp_path / 'shards'}/shard-000000.tar:000000010.png (packed from ant/zz_broken.png)"
    assert lines[1].startswith(f"warning: skipped unreadable image {member} ("), lines[1]
    assert all(line.endswith("1 unreadable file(s) so far") for line in lines)
    assert "UserWarning" not in run.stderr and "warnings.warn" not in run.stderr
