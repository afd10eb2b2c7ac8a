"""Where the samples of an image collection live: image folders and tar shards.

A source knows its ``N`` samples, their labels and class names, how to read one sample's
encoded bytes (:meth:`Source.read`), how to name it in a message (:meth:`Source.describe`) and
the order of an epoch (:meth:`Source.order`). It holds no more than an index (file names, or
tar offsets), so a million-image collection costs a few flat arrays.

* :class:`FolderSource`: an image folder, ``root/<class>/*.jpg|png|...`` (labels from the
  sorted class folder names) or flat (unlabeled), optionally below ``root/<split>/``
  (:func:`image_folder_split`). The in-memory image-folder loader and streaming scan it alike.
* :class:`ShardSource`: tar shards in the WebDataset layout, ``root/*.tar`` or
  ``root/<split>/*.tar``: consecutive members ``KEY.jpg`` (or ``.jpeg``, ``.png``, ``.webp``,
  ``.bmp``) and an optional ``KEY.cls`` (the integer label as text) form one sample. The member
  offsets are indexed once (:func:`build_shard_index`: ``index.json`` + ``index.npz`` beside
  the shards, written by ``siamgrad data pack`` or on first use), so any sample is one
  ``pread``. Shards written by ``siamgrad data pack`` also keep each sample's original file
  name in the index, so a message names the file a user can look for.

Epoch order: a permutation of the ``N`` samples drawn from a generator seeded by
``(seed, epoch)`` (:func:`epoch_generator`): for a folder the uniform permutation of
:class:`~siamgrad.data.batches.InMemoryBatches` (one order in memory and streamed); for shards
the shards in a random order, then a shuffle buffer over that sequence
(:func:`shuffle_buffer_order`), which keeps the reads near a few shards at a time.
"""

from __future__ import annotations

import json
import os
import tarfile
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from siamgrad.data.decode import IMAGE_EXTENSIONS, one_line
from siamgrad.data.seeding import epoch_generator
from siamgrad.errors import ConfigError, DataError

__all__ = [
    "INDEX_JSON",
    "INDEX_NPZ",
    "SPLIT_FOLDER_NAMES",
    "FolderSource",
    "PackedStrings",
    "ShardSource",
    "Source",
    "build_shard_index",
    "image_folder_split",
    "load_shard_index",
    "open_source",
    "scan_shard",
    "shard_files",
    "shuffle_buffer_order",
]

SPLIT_FOLDER_NAMES = ("train", "val", "valid", "validation", "test", "unlabeled")
"""Subfolder names that make an image folder (or a packed one) a set of splits."""

INDEX_JSON, INDEX_NPZ = "index.json", "index.npz"
SHARD_FORMAT = "siamgrad-shards"
SHARD_INDEX_VERSION = 1

_IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_FOLDER_EXPECTED = "<class>/*.png|jpg|jpeg|bmp|webp (or a flat folder of images)"


class Source:
    """Common part of the sources: ``N`` samples, labels, reading one sample's bytes."""

    name: str
    classes: list[str]
    labels: torch.Tensor | None  # int64 [N] or None (unlabeled)
    where: Path

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, i: int) -> bytes:
        """The encoded bytes of sample ``i``."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """A name of sample ``i`` for messages (its file, or shard and member)."""
        raise NotImplementedError

    def subset(self, indices: np.ndarray) -> Source:
        """The samples at ``indices``, in that order."""
        raise NotImplementedError

    def order(self, seed: int, epoch: int, buffer: int) -> np.ndarray:
        """The epoch's order (a permutation of ``0..N-1``), from ``(seed, epoch)`` alone."""
        raise NotImplementedError


class PackedStrings(Sequence[str]):
    """An immutable list of strings held in one bytes buffer plus an offset array.

    A million Python strings in a list would be copied page by page into every forked
    DataLoader worker as their reference counts change; two flat buffers are shared as they are.
    """

    def __init__(self, items: Sequence[str]):
        encoded = [x.encode("utf-8") for x in items]
        self._ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
        self._blob = b"".join(encoded)

    @classmethod
    def from_buffers(cls, blob: bytes, ends: np.ndarray) -> PackedStrings:
        """The strings of :meth:`buffers` again (``ends``: the cumulative byte lengths)."""
        out = cls.__new__(cls)
        out._blob, out._ends = bytes(blob), np.asarray(ends, dtype=np.int64)
        return out

    def buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 bytes, int64 cumulative lengths)``: the strings as two flat arrays."""
        return np.frombuffer(self._blob, dtype=np.uint8).copy(), self._ends.copy()

    def __len__(self) -> int:
        return int(self._ends.size)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = int(self._ends[i - 1]) if i else 0
        return self._blob[start : int(self._ends[i])].decode("utf-8")


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------


def image_folder_split(base: Path, split: str) -> Path:
    """The folder of ``split`` in the image folder ``base``: ``base/<split>`` when ``base`` has
    split subfolders (:data:`SPLIT_FOLDER_NAMES`), else ``base`` itself for ``train``."""
    present = [s for s in SPLIT_FOLDER_NAMES if (base / s).is_dir()]
    if (base / split).is_dir():
        return base / split
    if present:
        raise DataError(f"image folder {base} has no {split!r} split subfolder; valid splits: {', '.join(present)}")
    if split == "train":
        return base
    raise DataError(
        f"unknown split {split!r} for image folder {base}: it has no split subfolders, so its only "
        f"split is 'train'; put held-out images under {base}/{split}/ to add one"
    )


class FolderSource(Source):
    """The image files of a folder: ``<class>/*`` (labeled, sorted classes) or flat (unlabeled)."""

    def __init__(self, folder: Path, files: Sequence[str], labels: np.ndarray | None, classes: list[str]):
        self.name, self.where = "imagefolder", Path(folder)
        self.files = files if isinstance(files, PackedStrings) else PackedStrings(files)  # relative to folder
        self.classes = list(classes)
        self._labels = labels
        self.labels = None if labels is None else torch.from_numpy(labels.astype(np.int64))

    @classmethod
    def scan(cls, root: str | os.PathLike[str] | None, split: str = "train") -> FolderSource:
        """The images of split ``split`` of the image folder ``root``, files sorted by name
        within sorted class folders (hidden files and other suffixes left out)."""
        if root is None or str(root).strip() == "":
            raise DataError(f"imagefolder needs data.root=<folder> holding {_FOLDER_EXPECTED}")
        base = Path(root).expanduser()
        if not base.is_dir():
            raise DataError(f"image folder {base} does not exist; set data.root to a folder holding {_FOLDER_EXPECTED}")
        folder = image_folder_split(base, split)

        def images_in(d: Path, prefix: str) -> list[str]:
            with os.scandir(d) as it:
                names = [e.name for e in it if not e.name.startswith(".")
                         and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()]
            return [prefix + n for n in sorted(names)]

        with os.scandir(folder) as it:
            class_dirs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        files: list[str] = []
        labels: list[np.ndarray] = []
        if class_dirs:
            for c, name in enumerate(class_dirs):
                part = images_in(folder / name, name + "/")
                files += part
                labels.append(np.full(len(part), c, dtype=np.int64))
        else:
            files = images_in(folder, "")
        if not files:
            raise DataError(f"image folder {folder} is empty: no {'/'.join(IMAGE_EXTENSIONS)} files in {_FOLDER_EXPECTED}")
        lab = np.concatenate(labels) if class_dirs else None
        return cls(folder, files, lab, class_dirs)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> bytes:
        with open(self.where / self.files[i], "rb") as f:
            return f.read()

    def describe(self, i: int) -> str:
        return str(self.where / self.files[i])

    def subset(self, indices: np.ndarray) -> FolderSource:
        idx = np.asarray(indices, dtype=np.int64)
        lab = None if self._labels is None else self._labels[idx]
        return FolderSource(self.where, [self.files[i] for i in idx], lab, self.classes)

    def order(self, seed: int, epoch: int, buffer: int) -> np.ndarray:
        return torch.randperm(len(self), generator=epoch_generator(seed, epoch)).numpy()


def shuffle_buffer_order(sequence: np.ndarray, buffer: int, generator: torch.Generator) -> np.ndarray:
    """Pass ``sequence`` through a shuffle buffer of ``buffer`` items; return the output order.

    The first ``K = buffer`` items fill the buffer; for each later item ``t`` a uniform slot
    ``j`` (``torch.randint(K)``) is emitted and item ``t`` takes its place; at the end the
    ``K`` items left are emitted in a uniformly random order. The result is a permutation of
    ``sequence`` in which an item moves at most ~``K`` places forward. ``K >= len`` is a uniform
    permutation.
    """
    n = len(sequence)
    if buffer >= n:
        return sequence[torch.randperm(n, generator=generator).numpy()]
    slots = torch.randint(buffer, (n - buffer,), generator=generator).tolist()
    seq = sequence.tolist()
    buf = seq[:buffer]
    out: list[int] = []
    append = out.append
    for t, j in enumerate(slots, start=buffer):
        append(buf[j])
        buf[j] = seq[t]
    rest = torch.randperm(buffer, generator=generator).tolist()
    out.extend(buf[j] for j in rest)
    return np.asarray(out, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# tar shards and their index
# --------------------------------------------------------------------------------------------


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's key/extension split: the key is the path up to the first dot of the base name."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


def scan_shard(path: Path) -> dict[str, Any]:
    """Index one uncompressed tar shard: per sample its image member's data offset and size,
    the member name and the label from ``KEY.cls`` (``-1`` when absent).

    Members of one sample are consecutive (WebDataset layout); a key without an image member
    is ignored.
    """
    offsets: list[int] = []
    sizes: list[int] = []
    labels: list[int] = []
    names: list[str] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            key, img, cls = None, None, -1

            def flush() -> None:
                if img is not None:
                    offsets.append(img[0])
                    sizes.append(img[1])
                    names.append(img[2])
                    labels.append(cls)

            for m in tar:
                if not m.isfile():
                    continue
                k, ext = _split_member(m.name)
                if k != key:
                    flush()
                    key, img, cls = k, None, -1
                if ext in _IMAGE_EXTS and img is None:
                    img = (m.offset_data, m.size, m.name)
                elif ext == "cls":
                    f = tar.extractfile(m)
                    text = f.read().decode("utf-8", "replace").strip() if f is not None else ""
                    try:
                        cls = int(text)
                    except ValueError:
                        raise DataError(
                            f"shard {path}: member {m.name} holds {text[:20]!r}, not an integer class; "
                            "write the label as text like 3"
                        ) from None
            flush()
    except tarfile.ReadError as e:
        raise DataError(
            f"shard {path} is not an uncompressed tar ({one_line(e)}); streaming reads members by "
            "offset, so repack it with `siamgrad data pack` (or tar without compression)"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read shard {path} ({one_line(e)}); check the file") from None
    return {"offsets": offsets, "sizes": sizes, "labels": labels, "names": names}


def shard_files(folder: Path) -> list[Path]:
    """The ``*.tar`` files of ``folder``, sorted by name (hidden ones left out)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".tar" and not p.name.startswith("."))


def build_shard_index(folder: Path, classes: list[str] | None = None, write: bool = True,
                      source_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Scan every ``*.tar`` of ``folder``; write ``index.json`` + ``index.npz`` when possible.

    ``index.json``: ``{"format", "version", "classes", "labeled", "samples", "source_names",
    "shards": [{"name", "count", "bytes"}]}``; ``index.npz``: int64 arrays ``shard``,
    ``offset``, ``size``, ``label`` (one row per sample, shard by shard, in tar order) and, when
    ``source_names`` (the original file name of every sample, in that order) is given, the
    names as ``name_bytes`` (uint8, UTF-8) and ``name_ends`` (int64 cumulative lengths).
    """
    shards = shard_files(folder)
    if not shards:
        raise DataError(f"no .tar shards in {folder}; pack an image folder with `siamgrad data pack SRC {folder}`")
    table: dict[str, list[int]] = {"shard": [], "offset": [], "size": [], "label": []}
    entries = []
    for s, p in enumerate(shards):
        part = scan_shard(p)
        n = len(part["offsets"])
        table["shard"] += [s] * n
        table["offset"] += part["offsets"]
        table["size"] += part["sizes"]
        table["label"] += part["labels"]
        entries.append({"name": p.name, "count": n, "bytes": p.stat().st_size})
    arrays: dict[str, Any] = {k: np.asarray(v, dtype=np.int64) for k, v in table.items()}
    if arrays["offset"].size == 0:
        raise DataError(f"the shards in {folder} hold no image members (KEY.jpg/png/...); check the tar files")
    names = None
    if source_names is not None:
        if len(source_names) != arrays["offset"].size:
            raise DataError(f"{len(source_names)} source names for the {arrays['offset'].size} samples of the "
                            f"shards in {folder}; pack them again")
        names = source_names if isinstance(source_names, PackedStrings) else PackedStrings(source_names)
    labeled = bool((arrays["label"] >= 0).all())
    if classes is None:
        classes = [str(c) for c in range(int(arrays["label"].max()) + 1)] if labeled else []
    meta = {"format": SHARD_FORMAT, "version": SHARD_INDEX_VERSION, "classes": list(classes), "labeled": labeled,
            "samples": int(arrays["offset"].size), "source_names": names is not None, "shards": entries}
    if write:
        stored = dict(arrays)
        if names is not None:
            stored["name_bytes"], stored["name_ends"] = names.buffers()
        try:
            tmp = folder / (INDEX_NPZ + ".part.npz")
            np.savez(tmp, **stored)
            os.replace(tmp, folder / INDEX_NPZ)
            tmpj = folder / (INDEX_JSON + ".part")
            tmpj.write_text(json.dumps(meta, indent=1))
            os.replace(tmpj, folder / INDEX_JSON)
        except OSError:  # a read-only copy: the index lives in memory for this run
            pass
    return {"meta": meta, **arrays, "names": names}


def load_shard_index(folder: Path) -> dict[str, Any]:
    """The index of ``folder``: from ``index.json``/``index.npz`` when they match the shards on
    disk (names and byte sizes), else scanned afresh (and rewritten). ``"names"``: the samples'
    original file names (:class:`PackedStrings`) when the index keeps them, else ``None``."""
    jpath, npath = folder / INDEX_JSON, folder / INDEX_NPZ
    classes = None
    if jpath.is_file():
        try:
            meta = json.loads(jpath.read_text())
            classes = meta.get("classes") or None
            on_disk = [(p.name, p.stat().st_size) for p in shard_files(folder)]
            listed = [(e["name"], e["bytes"]) for e in meta["shards"]]
            if meta.get("format") == SHARD_FORMAT and on_disk == listed and npath.is_file():
                with np.load(npath, allow_pickle=False) as z:
                    arrays: dict[str, Any] = {k: z[k].astype(np.int64) for k in ("shard", "offset", "size", "label")}
                    names = None
                    if "name_bytes" in z.files and "name_ends" in z.files:
                        names = PackedStrings.from_buffers(z["name_bytes"].tobytes(), z["name_ends"])
                if arrays["offset"].size == meta["samples"] and (names is None or len(names) == meta["samples"]):
                    return {"meta": meta, **arrays, "names": names}
            if on_disk != listed:
                warnings.warn(f"the shards in {folder} differ from its {INDEX_JSON}; indexing them again",
                              stacklevel=3)
        except (OSError, ValueError, KeyError, TypeError):
            classes = None
    return build_shard_index(folder, classes)


class ShardSource(Source):
    """Samples of WebDataset-layout tar shards, read by offset (see the module docstring)."""

    def __init__(self, folder: Path, shard_names: list[str], shard: np.ndarray, offset: np.ndarray,
                 size: np.ndarray, label: np.ndarray | None, classes: list[str],
                 source_names: PackedStrings | None = None):
        self.name, self.where = "shards", Path(folder)
        self.shard_names = list(shard_names)
        self.shard, self.offset, self.size = shard, offset, size
        self._label = label
        self.labels = None if label is None else torch.from_numpy(label.astype(np.int64))
        self.classes = list(classes)
        self.source_names = source_names  # the packed files' original names, when the index keeps them
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None, split: str = "train") -> ShardSource:
        """The shards of split ``split`` at ``root`` (``root/<split>/`` or, for train, ``root``)."""
        if root is None or str(root).strip() == "":
            raise DataError("shards needs data.root=<folder> holding shard-*.tar files (siamgrad data pack SRC DST)")
        base = Path(root).expanduser()
        if not base.is_dir():
            raise DataError(f"shard folder {base} does not exist; set data.root to the folder `siamgrad data pack` wrote")
        if (base / split).is_dir():
            folder = base / split
        elif split == "train" and shard_files(base):
            folder = base
        else:
            present = sorted(d.name for d in base.iterdir() if d.is_dir() and shard_files(d))
            raise DataError(
                f"shard folder {base} has no {split!r} split; "
                + (f"valid splits: {', '.join(present)}" if present else "put its shards in a subfolder of that name")
            )
        idx = load_shard_index(folder)
        meta = idx["meta"]
        label = idx["label"] if meta["labeled"] else None
        return cls(folder, [e["name"] for e in meta["shards"]], idx["shard"], idx["offset"], idx["size"],
                   label, meta["classes"] if label is not None else [], idx.get("names"))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = OrderedDict()  # file descriptors stay with their process
        return state

    def __len__(self) -> int:
        return int(self.offset.size)

    def _fd(self, s: int) -> int:
        if self._pid != os.getpid():  # a forked worker: descriptors of the parent are not reused
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.get(s)
        if fd is None:
            fd = os.open(self.where / self.shard_names[s], os.O_RDONLY)
            self._fds[s] = fd
            if len(self._fds) > 16:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(s)
        return fd

    def read(self, i: int) -> bytes:
        n = int(self.size[i])
        data = os.pread(self._fd(int(self.shard[i])), n, int(self.offset[i]))
        if len(data) != n:
            raise OSError(f"short read ({len(data)} of {n} bytes): the shard is truncated")
        return data

    def describe(self, i: int) -> str:
        """``SHARD:MEMBER``, and ``(packed from FILE)`` when the index keeps the original name."""
        s, off = int(self.shard[i]), int(self.offset[i])
        member = f"@{off}"
        try:  # the ustar header right before the data holds the member's name
            hdr = os.pread(self._fd(s), 512, off - 512)
            name = hdr[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = hdr[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") if hdr[257:262] == b"ustar" else ""
            if name:
                member = (prefix + "/" + name) if prefix else name
        except OSError:
            pass
        packed = f" (packed from {self.source_names[i]})" if self.source_names is not None else ""
        return f"{self.where / self.shard_names[s]}:{member}{packed}"

    def subset(self, indices: np.ndarray) -> ShardSource:
        idx = np.asarray(indices, dtype=np.int64)
        lab = None if self._label is None else self._label[idx]
        names = None if self.source_names is None else PackedStrings([self.source_names[i] for i in idx])
        return ShardSource(self.where, self.shard_names, self.shard[idx], self.offset[idx], self.size[idx],
                           lab, self.classes, names)

    def order(self, seed: int, epoch: int, buffer: int) -> np.ndarray:
        g = epoch_generator(seed, epoch)
        rank_of_shard = np.empty(len(self.shard_names), dtype=np.int64)
        rank_of_shard[torch.randperm(len(self.shard_names), generator=g).numpy()] = np.arange(len(self.shard_names))
        sequence = np.argsort(rank_of_shard[self.shard], kind="stable")  # shard by shard, tar order within
        return shuffle_buffer_order(sequence, max(1, buffer), g)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __del__(self) -> None:
        try:
            if self._pid == os.getpid():
                self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def open_source(name: str, root: str | os.PathLike[str] | None, split: str = "train") -> Source:
    """The source of ``imagefolder`` or ``shards`` data at ``root`` (split ``split``)."""
    if name == "imagefolder":
        return FolderSource.scan(root, split)
    if name == "shards":
        return ShardSource.open(root, split)
    raise ConfigError(f"data.stream=true works with data=imagefolder or data=shards, not {name!r}; "
                      "set data.stream=false")
