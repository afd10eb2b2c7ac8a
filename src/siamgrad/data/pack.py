"""Pack an image folder into tar shards in the WebDataset layout (``siamgrad data pack SRC DST``).

Layout written: ``DST/shard-000000.tar``, ``shard-000001.tar``, ... each holding, per sample,
``KEY.jpg`` (or ``.png``, ``.webp``, ``.bmp``: the file's own bytes, not re-encoded; ``.jpeg``
is written ``.jpg``) followed by ``KEY.cls`` (the class number as text; absent for a flat,
unlabeled folder). ``KEY`` is the sample's 9-digit number in packing order. Beside the shards,
``index.json`` (format, classes, per shard its name, sample count and bytes) and ``index.npz``
(per sample: shard, data offset, size, label, and the original file name relative to ``SRC``),
which :class:`siamgrad.data.sources.ShardSource` reads instead of scanning the tars; messages
about a sample (an unreadable image) name its original file.

A source folder with split subfolders (``train``, ``val``, ``test``, ...) is packed split by
split into ``DST/<split>/``. Samples are shuffled (seeded) before packing by default, so that
every shard mixes the classes and the shard-level + buffer shuffle of streaming mixes well.
Each shard is written as ``NAME.part`` and renamed when complete; the index is written last.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from siamgrad.data.decode import decode_image_bytes
from siamgrad.data.sources import INDEX_JSON, SPLIT_FOLDER_NAMES, FolderSource, build_shard_index
from siamgrad.errors import DataError

__all__ = ["PackResult", "pack_folder"]

SHARD_PATTERN = "shard-{:06d}.tar"


@dataclass
class PackResult:
    """One packed split: where, how many samples and shards, and the files left out."""

    split: str
    folder: Path
    samples: int
    shards: int
    bytes: int
    classes: list[str]
    skipped: list[str]

    def summary(self) -> str:
        label = f"{len(self.classes)} classes" if self.classes else "unlabeled"
        skipped = f", {len(self.skipped)} unreadable file(s) left out" if self.skipped else ""
        return (f"{self.split}: {self.samples} images ({label}) -> {self.shards} shard(s), "
                f"{self.bytes / 2**20:.1f} MiB in {self.folder}{skipped}")


def _ext(path: str) -> str:
    ext = path.rsplit(".", 1)[-1].lower()
    return "jpg" if ext == "jpeg" else ext


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _pack_split(source: FolderSource, dst: Path, split: str, shard_size: int, max_shard_bytes: int,
                shuffle: bool, seed: int, verify: bool, name_prefix: str = "") -> PackResult:
    dst.mkdir(parents=True, exist_ok=True)
    n = len(source)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist() if shuffle else list(range(n))
    labels = source.labels
    skipped: list[str] = []
    shard_no, in_shard, tar, part = 0, 0, None, None
    written = 0
    names: list[str] = []  # per written sample: its file, relative to the packed folder

    def close() -> None:
        nonlocal tar, part, shard_no, in_shard
        if tar is not None:
            tar.close()
            os.replace(part, dst / SHARD_PATTERN.format(shard_no))
            shard_no, in_shard, tar, part = shard_no + 1, 0, None, None

    for i in order:
        try:
            data = source.read(i)
            if verify:
                decode_image_bytes(data)
            elif not data:
                raise ValueError("empty file")
        except (OSError, ValueError):
            skipped.append(source.describe(i))
            continue
        if tar is not None and (in_shard >= shard_size or part.stat().st_size + len(data) > max_shard_bytes):
            close()
        if tar is None:
            part = dst / (SHARD_PATTERN.format(shard_no) + ".part")
            tar = tarfile.open(part, mode="w", format=tarfile.USTAR_FORMAT)
        key = f"{written:09d}"
        _add(tar, f"{key}.{_ext(source.files[i])}", data)
        if labels is not None:
            _add(tar, f"{key}.cls", str(int(labels[i])).encode())
        names.append(name_prefix + source.files[i])
        in_shard += 1
        written += 1
        if tar.fileobj is not None:
            tar.fileobj.flush()
    close()
    if written == 0:
        raise DataError(f"no readable image in {source.where}; nothing was packed")
    index = build_shard_index(dst, classes=list(source.classes), source_names=names)
    if not (dst / INDEX_JSON).is_file():
        raise DataError(f"could not write {dst / INDEX_JSON}; check that {dst} is writable")
    total = sum(e["bytes"] for e in index["meta"]["shards"])
    return PackResult(split, dst, written, shard_no, total, list(source.classes), skipped)


def pack_folder(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, shard_size: int = 1000,
                max_shard_bytes: int = 1 << 30, shuffle: bool = True, seed: int = 0, verify: bool = False,
                overwrite: bool = False) -> list[PackResult]:
    """Pack the image folder ``src`` into shards in ``dst`` (see the module docstring).

    Args:
        shard_size: samples per shard at most (the default keeps ImageNet shards near 100 MB).
        max_shard_bytes: bytes per shard at most (a shard always holds at least one sample).
        shuffle: write the samples in a random order seeded by ``seed`` (else sorted by class/file).
        verify: decode every image and leave out the unreadable ones (slower); without it only
            unreadable and empty files are left out, corrupt bytes are copied as they are (streaming
            skips them with a warning).
        overwrite: replace the shards of an earlier pack in ``dst``.
    """
    if shard_size < 1 or max_shard_bytes < 1:
        raise DataError("shard_size and max_shard_bytes must be >= 1")
    src_p, dst_p = Path(src).expanduser(), Path(dst).expanduser()
    if not src_p.is_dir():
        raise DataError(f"source folder {src_p} does not exist; give an image folder (<class>/*.jpg or flat)")
    if dst_p.resolve() == src_p.resolve() or src_p.resolve() in dst_p.resolve().parents:
        raise DataError(f"destination {dst_p} lies inside the source {src_p}; choose another folder")
    if dst_p.exists() and any(dst_p.iterdir()):
        if not overwrite:
            raise DataError(f"destination {dst_p} is not empty; choose an empty folder or pass --overwrite")
        for p in list(dst_p.iterdir()):
            if p.is_dir() and p.name in SPLIT_FOLDER_NAMES:
                shutil.rmtree(p)
            elif p.is_file() and (p.suffix in (".tar", ".part") or p.name.startswith("index.")):
                p.unlink()
    splits = [s for s in SPLIT_FOLDER_NAMES if (src_p / s).is_dir()]
    results = []
    for split in splits or ["train"]:
        source = FolderSource.scan(src_p, split)
        out = dst_p / split if splits else dst_p
        results.append(_pack_split(source, out, split, shard_size, max_shard_bytes, shuffle, seed, verify,
                                   name_prefix=f"{split}/" if splits else ""))
    (dst_p / "pack.json").write_text(json.dumps(
        {"source": str(src_p), "splits": [r.split for r in results], "shuffle": shuffle, "seed": seed}, indent=1))
    return results
