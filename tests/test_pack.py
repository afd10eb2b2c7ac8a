"""Tests of ``siamgrad data pack`` (siamgrad.data.pack) and of reading tar shards (siamgrad.data.sources).

The shards are checked with Python's own ``tarfile`` (not the project's scanner): member names,
bytes, labels and data offsets. Shards written here by hand in the WebDataset layout stand for
shards made by other tools.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import encode_jpeg, encode_png

from siamgrad.cli import main
from siamgrad.errors import DataError
from siamgrad.data.pack import pack_folder
from siamgrad.data.bad_images import UnreadableImageWarning
from siamgrad.data.decode import decode_image_bytes
from siamgrad.data.sources import ShardSource
from siamgrad.data.streaming import StreamBatches

pytestmark = pytest.mark.filterwarnings("ignore:.*image decoding:DeprecationWarning")

CLASSES = ("ant", "bee")


def _write(root: Path, n: int, classes: tuple[str, ...] | None = CLASSES, seed: int = 0) -> dict[bytes, int]:
    """``n`` small JPEG/PNG files (one grayscale); returns {file bytes: label (-1 unlabeled)}."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(n):
        label = i % len(classes) if classes else -1
        d = root / classes[label] if classes else root
        d.mkdir(parents=True, exist_ok=True)
        img = torch.randint(0, 256, (1 if i == 0 else 3, 8 + i, 9), dtype=torch.uint8, generator=g)
        data = (encode_png(img) if i % 3 == 0 else encode_jpeg(img)).numpy().tobytes()
        (d / f"f{i:03d}.{'png' if i % 3 == 0 else 'jpeg'}").write_bytes(data)
        out[data] = label
    return out


def _tar_samples(folder: Path) -> list[tuple[str, bytes, int, int]]:
    """(member name, image bytes, label, data offset) of every sample, read with tarfile."""
    out = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
            for k, m in enumerate(members):
                if m.name.endswith((".jpg", ".png")):
                    data = tar.extractfile(m).read()
                    nxt = members[k + 1] if k + 1 < len(members) else None
                    key = m.name.split(".")[0]
                    label = -1
                    if nxt is not None and nxt.name == f"{key}.cls":
                        label = int(tar.extractfile(nxt).read().decode())
                    out.append((f"{shard.name}:{m.name}", data, label, m.offset_data))
    return out


def test_pack_round_trip_bytes_labels_offsets_and_splits(tmp_path) -> None:
    train = _write(tmp_path / "src" / "train", 23)
    test = _write(tmp_path / "src" / "test", 5, seed=1)
    results = pack_folder(tmp_path / "src", tmp_path / "out", shard_size=10)
    assert [(r.split, r.samples, r.shards) for r in results] == [("train", 23, 3), ("test", 5, 1)]
    for split, files in (("train", train), ("test", test)):
        folder = tmp_path / "out" / split
        samples = _tar_samples(folder)
        # every source file exactly once, its bytes unchanged, its class as KEY.cls
        assert Counter(s[1] for s in samples) == Counter(files.keys())
        assert all(files[data] == label for _, data, label, _ in samples)
        assert all(name.split(":")[1].split(".")[0].isdigit() for name, *_ in samples)
        meta = json.loads((folder / "index.json").read_text())
        assert meta["classes"] == list(CLASSES) and meta["samples"] == len(files)
        assert [e["count"] for e in meta["shards"]] == ([10, 10, 3] if split == "train" else [5])
        # the index's offsets are tarfile's, and ShardSource reads the same bytes and labels
        src = ShardSource.open(tmp_path / "out", split)
        assert len(src) == len(files) and src.classes == list(CLASSES)
        # and names each sample by shard, member and the file it was packed from
        origin = {p.read_bytes(): p.relative_to(tmp_path / "src").as_posix()
                  for p in (tmp_path / "src" / split).rglob("*.*")}
        for i, (name, data, label, offset) in enumerate(samples):
            assert int(src.offset[i]) == offset and src.read(i) == data and int(src.labels[i]) == label
            assert src.describe(i) == f"{folder}/{name} (packed from {origin[data]})"
    # a PNG's pixels survive exactly (grayscale source -> RGB)
    png = next(d for d in train if d[1:4] == b"PNG")
    k = next(i for i, s in enumerate(_tar_samples(tmp_path / "out" / "train")) if s[1] == png)
    src = ShardSource.open(tmp_path / "out", "train")
    assert torch.equal(decode_image_bytes(src.read(k)), decode_image_bytes(png))


def test_pack_shuffle_is_seeded_and_unshuffled_keeps_sorted_order(tmp_path) -> None:
    _write(tmp_path / "src", 12)
    pack_folder(tmp_path / "src", tmp_path / "a", shard_size=5, seed=3)
    pack_folder(tmp_path / "src", tmp_path / "b", shard_size=5, seed=3)
    pack_folder(tmp_path / "src", tmp_path / "c", shard_size=5, shuffle=False)
    a, b, c = (_tar_samples(tmp_path / x) for x in "abc")
    assert [s[1] for s in a] == [s[1] for s in b]
    sorted_files = [p.read_bytes() for p in sorted((tmp_path / "src").rglob("*.*"))]
    assert [s[1] for s in c] == sorted_files
    assert [s[1] for s in a] != sorted_files
    assert [s[2] for s in c] == [0] * 6 + [1] * 6


def test_flat_folder_packs_unlabeled_and_existing_destination_is_refused(tmp_path) -> None:
    _write(tmp_path / "flat", 6, classes=None)
    pack_folder(tmp_path / "flat", tmp_path / "out")
    samples = _tar_samples(tmp_path / "out")
    assert len(samples) == 6 and all(s[2] == -1 for s in samples)
    src = ShardSource.open(tmp_path / "out")
    assert src.labels is None and src.classes == []
    with pytest.raises(DataError) as e:
        pack_folder(tmp_path / "flat", tmp_path / "out")
    assert "not empty" in str(e.value) and "\n" not in str(e.value)
    assert pack_folder(tmp_path / "flat", tmp_path / "out", overwrite=True)[0].samples == 6


def test_verify_leaves_out_corrupt_files_and_unverified_ones_are_skipped_when_streaming(tmp_path) -> None:
    _write(tmp_path / "src", 9)
    (tmp_path / "src" / "ant" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x13" * 80)
    verified = pack_folder(tmp_path / "src", tmp_path / "v", verify=True)[0]
    assert verified.samples == 9 and len(verified.skipped) == 1 and "broken.jpg" in verified.skipped[0]
    pack_folder(tmp_path / "src", tmp_path / "u")
    src = ShardSource.open(tmp_path / "u")
    assert len(src) == 10
    batches = StreamBatches(src, "cpu", batch_size=5, seed=0, workers=0, max_bad_fraction=0.2)
    with pytest.warns(UnreadableImageWarning, match=r"shard-000000\.tar:\d{9}\.jpg \(packed from ant/broken\.jpg\)"):
        n = sum(len(im) for im, _ in batches.epoch(0))
    assert n == 10 and len(batches.bad.files) == 1
    # a subset (data.fraction) keeps the original names of its samples
    sub = src.subset(np.arange(len(src))[::-1].copy())
    assert [sub.describe(i) for i in range(len(sub))] == [src.describe(i) for i in range(len(src))][::-1]


def _webdataset_shard(path: Path, samples: list[tuple[str, bytes, int | None]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, data, label in samples:
            fields = [(f"{key}.jpg", data), (f"{key}.json", b'{"source": "x"}')]
            if label is not None:
                fields.append((f"{key}.cls", f"{label}\n".encode()))
            for name, payload in fields:
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_foreign_shards_are_indexed_on_first_use_and_reindexed_when_changed(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    jpgs = [encode_jpeg(torch.randint(0, 256, (3, 10 + i, 12), dtype=torch.uint8, generator=g)).numpy().tobytes()
            for i in range(7)]
    d = tmp_path / "wds"
    d.mkdir()
    _webdataset_shard(d / "part-a.tar", [(f"dir/s{i}", jpgs[i], i % 3) for i in range(4)])
    _webdataset_shard(d / "part-b.tar", [(f"s{i}", jpgs[i], i % 3) for i in range(4, 6)])
    src = ShardSource.open(d)
    assert len(src) == 6 and src.labels.tolist() == [0, 1, 2, 0, 1, 2] and src.classes == ["0", "1", "2"]
    assert [src.read(i) for i in range(6)] == jpgs[:6]
    assert src.describe(0) == f"{d / 'part-a.tar'}:dir/s0.jpg"  # no original names to tell
    assert (d / "index.json").is_file() and (d / "index.npz").is_file()
    _webdataset_shard(d / "part-c.tar", [("s6", jpgs[6], 1)])
    with pytest.warns(UserWarning, match="differ"):
        again = ShardSource.open(d)
    assert len(again) == 7 and again.read(6) == jpgs[6]
    # shard order: with a buffer of 1 each shard is read whole, in a random order of the shards
    shard_seq = again.shard[again.order(seed=0, epoch=0, buffer=1)].tolist()
    runs = [k for i, k in enumerate(shard_seq) if i == 0 or shard_seq[i - 1] != k]
    assert sorted(runs) == [0, 1, 2] and Counter(shard_seq) == Counter({0: 4, 1: 2, 2: 1})
    assert sorted(again.order(seed=0, epoch=1, buffer=3).tolist()) == list(range(7))


def test_compressed_or_missing_shards_are_one_line_errors(tmp_path) -> None:
    d = tmp_path / "gz"
    d.mkdir()
    with tarfile.open(d / "x.tar", "w:gz") as tar:
        info = tarfile.TarInfo("a.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    for root, needle in ((d, "uncompressed"), (tmp_path / "nowhere", "does not exist")):
        with pytest.raises(DataError) as e:
            ShardSource.open(root)
        assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="valid splits|no 'val' split"):
        ShardSource.open(d, "val")


def test_cli_pack(tmp_path, capsys) -> None:
    _write(tmp_path / "src", 4)
    assert main(["data", "pack", str(tmp_path / "src"), str(tmp_path / "out"), "--shard-size", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 images (2 classes) -> 2 shard(s)" in out and "data=shards" in out
    assert main(["data", "pack", str(tmp_path / "src"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: destination")
    assert len(np.load(tmp_path / "out" / "index.npz")["offset"]) == 4
