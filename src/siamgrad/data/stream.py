"""Streaming image datasets: ImageNet-size collections read from disk batch by batch.

In-memory ``uint8`` tensors (:mod:`siamgrad.data.datasets`) serve CIFAR and STL-10; a collection of a
million JPEGs is streamed instead. Nothing holds more than an index (paths, or tar offsets) and
the batches in flight.

Sources (:func:`open_source`)
-----------------------------
* :class:`FolderSource`: an image folder, ``root/<class>/*.jpg|png|...`` (labels from the
  sorted class folder names) or flat (unlabeled), optionally below ``root/<split>/``.
* :class:`ShardSource`: tar shards in the WebDataset layout, ``root/*.tar`` or
  ``root/<split>/*.tar``: consecutive members ``KEY.jpg`` (or ``.jpeg``, ``.png``, ``.webp``,
  ``.bmp``) and an optional ``KEY.cls`` (the integer label as text) form one sample. The member
  offsets are indexed once (``index.json`` + ``index.npz`` beside the shards, written by
  ``siamgrad data pack`` or on first use), so any sample is one ``pread``.

Epoch order, ranks and workers (:class:`StreamBatches`)
-------------------------------------------------------
The order of epoch ``e`` is a permutation of the ``N`` samples drawn from a generator seeded
by ``(seed, e)``: for a folder the uniform permutation of :class:`siamgrad.train.loop.InMemoryBatches`
(the same order in memory and streamed); for shards the shards in a random order, then a
shuffle buffer of ``K`` samples over that sequence (buffer full: a uniformly chosen element
leaves and the next sample takes its place; at the end the rest leaves in random order), which
keeps the reads near a few shards at a time. The order is cut into global batches of
``batch_size``; process ``rank`` of ``world`` takes entries ``[rank B / world, (rank + 1) B /
world)`` of every global batch (the convention of ``InMemoryBatches``) and its DataLoader
workers read whole local batches (worker ``w`` of ``W`` reads steps ``w, w + W, ...``). So over
ranks x workers every sample of the epoch is read exactly once, and step ``s`` of epoch ``e``
is known from ``(seed, e, s)`` alone: a run resumed mid-epoch reads exactly the remaining
batches. As in memory, the last ``N mod batch_size`` samples of an epoch's order are left out
of training (different ones every epoch); ``drop_last=False`` yields them as a short batch.

Decoding
--------
Workers read the raw bytes. On a CUDA device JPEGs are decoded there, a batch at a time
(``torchvision.io.decode_jpeg(list, device="cuda")``, nvjpeg), while other formats (PNG, ...)
are decoded in the workers; on a CPU device the workers decode everything
(``torchvision.io.decode_image``, Pillow as the fallback). Grayscale/CMYK/palette images come
out RGB. An image whose longer side exceeds ``max_side`` is scaled down (aspect kept,
antialiased) right after decoding, which bounds the padded batch. A file that cannot be read
or decoded is skipped: a :class:`UnreadableImageWarning` names it (once per file), its place in
the batch is taken by the next good image of the same batch (batches keep their size, which
the objectives need across processes), and :class:`BadImageCounter` raises
:class:`~siamgrad.errors.DataError` once the unreadable share exceeds ``max_bad_fraction``.

The batches are :class:`~siamgrad.augment.multiview.RaggedImages` (padded, with per-image sizes) on the
training device; :class:`~siamgrad.augment.multiview.MultiViewAugment` crops each straight to the output
size in one batched resampling per view.

Trainer hooks: :func:`load_train_set`, :func:`make_batches`, :func:`dataset_channel_stats`,
:func:`stream_eval_sets`.
"""

from __future__ import annotations

import io
import json
import os
import queue
import tarfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from siamgrad import distributed as D
from siamgrad.augment.multiview import RaggedImages
from siamgrad.data.batches import InMemoryBatches
from siamgrad.data.datasets import (
    IMAGE_EXTENSIONS,
    IMAGEFOLDER_DEFAULT_SIZE,
    ImageDataset,
    _imagefolder_split,
    _resize_center_crop,
    _stratified_sample,
    channel_stats,
    load_dataset,
)
from siamgrad.errors import ConfigError, DataError

if TYPE_CHECKING:
    from siamgrad.config import DataConfig

__all__ = [
    "BadImageCounter",
    "FolderSource",
    "PackedStrings",
    "ShardSource",
    "StreamBatches",
    "StreamedDataset",
    "UnreadableImageWarning",
    "dataset_channel_stats",
    "decode_image_bytes",
    "load_train_set",
    "make_batches",
    "open_source",
    "shuffle_buffer_order",
    "should_stream",
    "stream_eval_sets",
]

STREAM_AUTO_MIN_FILES = 50_000
"""``data.stream=null`` streams an image folder holding more files than this (shards always)."""

SAMPLE_IMAGES = 512
"""Images of the fixed in-memory sample of a streamed set (channel statistics, diagnostics)."""

MIN_SEEN_FOR_RATE = 1000
"""The unreadable *rate* is judged once this many images were read (the count of distinct bad
files against the whole set is judged at once)."""

INDEX_JSON, INDEX_NPZ = "index.json", "index.npz"
SHARD_FORMAT = "siamgrad-shards"
SHARD_INDEX_VERSION = 1

_IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_JPEG_MAGIC = b"\xff\xd8\xff"


class UnreadableImageWarning(UserWarning):
    """An image file could not be read or decoded and was skipped."""


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------


def _to_uint8_rgb(img: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` (or ``[N, C, H, W]`` frames: the first) of any depth -> uint8 RGB."""
    if img.dim() == 4:
        img = img[0]
    if img.dtype != torch.uint8:
        top = 65535.0 if img.dtype in (torch.uint16, torch.int32) else 255.0
        img = (img.float() * (255.0 / top)).round_().clamp_(0, 255).to(torch.uint8)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    elif img.shape[0] == 4:
        img = img[:3]
    return img.contiguous()


def cap_side(img: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """Scale ``[3, h, w]`` down so that ``max(h, w) <= max_side`` (aspect kept, antialiased).

    New size ``round(h f), round(w f)`` (at least 1) with ``f = max_side / max(h, w)``; bilinear
    with antialiasing in float32, rounded to uint8. Smaller images are returned as they are.
    """
    h, w = int(img.shape[-2]), int(img.shape[-1])
    if max_side is None or max(h, w) <= max_side:
        return img
    f = max_side / max(h, w)
    size = (max(1, round(h * f)), max(1, round(w * f)))
    y = F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return y[0].round_().clamp_(0, 255).to(torch.uint8)


def decode_image_bytes(data: bytes | torch.Tensor, max_side: int | None = None) -> torch.Tensor:
    """Decode an encoded image to uint8 RGB ``[3, H, W]`` on the CPU.

    torchvision's decoders first (JPEG, PNG, WebP, GIF, ...), Pillow for what they refuse (BMP,
    CMYK JPEG, ...). Raises ``ValueError`` naming the reason when neither can decode it.
    """
    buf = data if isinstance(data, torch.Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if buf.numel() == 0:
        raise ValueError("empty file")
    from torchvision.io import ImageReadMode, decode_image

    try:
        with warnings.catch_warnings():
            # torchvision >= 0.29 announces the move of its decoders to torchcodec on every call
            warnings.filterwarnings("ignore", message=".*image decoding", category=DeprecationWarning)
            img = decode_image(buf, mode=ImageReadMode.RGB)
    except Exception as first:  # noqa: BLE001 - any decoder failure: try Pillow
        try:
            from PIL import Image

            with Image.open(io.BytesIO(buf.numpy().tobytes())) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            img = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        except Exception:  # noqa: BLE001
            raise ValueError(_one_line(str(first).split(",")[-1]) or type(first).__name__) from None
    return cap_side(_to_uint8_rgb(img), max_side)


def decode_jpegs_on_device(raw: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Batched nvjpeg decoding of JPEG byte tensors to uint8 RGB images on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*image decoding", category=DeprecationWarning)
        out = decode_jpeg(list(raw), mode=ImageReadMode.RGB, device=device)
    return list(out) if isinstance(out, (list, tuple)) else [out]


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------


class _Source:
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

    def subset(self, indices: np.ndarray) -> _Source:
        raise NotImplementedError

    def order(self, seed: int, epoch: int, buffer: int) -> np.ndarray:
        """The epoch's order (a permutation of ``0..N-1``), from ``(seed, epoch)`` alone."""
        raise NotImplementedError


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # the seeding of InMemoryBatches.order, so a folder has one order in memory and streamed
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class PackedStrings(Sequence[str]):
    """An immutable list of strings held in one bytes buffer plus an offset array.

    A million Python strings in a list would be copied page by page into every forked
    DataLoader worker as their reference counts change; two flat buffers are shared as they are.
    """

    def __init__(self, items: Sequence[str]):
        encoded = [x.encode("utf-8") for x in items]
        self._ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
        self._blob = b"".join(encoded)

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


class FolderSource(_Source):
    """The image files of a folder: ``<class>/*`` (labeled, sorted classes) or flat (unlabeled)."""

    def __init__(self, folder: Path, files: Sequence[str], labels: np.ndarray | None, classes: list[str]):
        self.name, self.where = "imagefolder", Path(folder)
        self.files = files if isinstance(files, PackedStrings) else PackedStrings(files)  # relative to folder
        self.classes = list(classes)
        self._labels = labels
        self.labels = None if labels is None else torch.from_numpy(labels.astype(np.int64))

    @classmethod
    def scan(cls, root: str | os.PathLike[str] | None, split: str = "train") -> FolderSource:
        expected = "<class>/*.png|jpg|jpeg|bmp|webp (or a flat folder of images)"
        if root is None or str(root).strip() == "":
            raise DataError(f"imagefolder needs data.root=<folder> holding {expected}")
        base = Path(root).expanduser()
        if not base.is_dir():
            raise DataError(f"image folder {base} does not exist; set data.root to a folder holding {expected}")
        folder = _imagefolder_split(base, split)

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
            raise DataError(f"image folder {folder} is empty: no {'/'.join(IMAGE_EXTENSIONS)} files in {expected}")
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
        return torch.randperm(len(self), generator=_epoch_generator(seed, epoch)).numpy()


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
            f"shard {path} is not an uncompressed tar ({_one_line(str(e))}); streaming reads members by "
            "offset, so repack it with `siamgrad data pack` (or tar without compression)"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read shard {path} ({_one_line(str(e))}); check the file") from None
    return {"offsets": offsets, "sizes": sizes, "labels": labels, "names": names}


def _shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".tar" and not p.name.startswith("."))


def build_shard_index(folder: Path, classes: list[str] | None = None, write: bool = True) -> dict[str, Any]:
    """Scan every ``*.tar`` of ``folder``; write ``index.json`` + ``index.npz`` when possible.

    ``index.json``: ``{"format", "version", "classes", "labeled", "samples", "shards": [{"name",
    "count", "bytes"}]}``; ``index.npz``: int64 arrays ``shard``, ``offset``, ``size``,
    ``label`` (one row per sample, shard by shard, in tar order).
    """
    shards = _shard_files(folder)
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
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in table.items()}
    if arrays["offset"].size == 0:
        raise DataError(f"the shards in {folder} hold no image members (KEY.jpg/png/...); check the tar files")
    labeled = bool((arrays["label"] >= 0).all())
    if classes is None:
        classes = [str(c) for c in range(int(arrays["label"].max()) + 1)] if labeled else []
    meta = {"format": SHARD_FORMAT, "version": SHARD_INDEX_VERSION, "classes": list(classes), "labeled": labeled,
            "samples": int(arrays["offset"].size), "shards": entries}
    if write:
        try:
            tmp = folder / (INDEX_NPZ + ".part.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, folder / INDEX_NPZ)
            tmpj = folder / (INDEX_JSON + ".part")
            tmpj.write_text(json.dumps(meta, indent=1))
            os.replace(tmpj, folder / INDEX_JSON)
        except OSError:  # a read-only copy: the index lives in memory for this run
            pass
    return {"meta": meta, **arrays}


def _load_shard_index(folder: Path) -> dict[str, Any]:
    """The index of ``folder``: from ``index.json``/``index.npz`` when they match the shards on
    disk (names and byte sizes), else scanned afresh (and rewritten)."""
    jpath, npath = folder / INDEX_JSON, folder / INDEX_NPZ
    classes = None
    if jpath.is_file():
        try:
            meta = json.loads(jpath.read_text())
            classes = meta.get("classes") or None
            on_disk = [(p.name, p.stat().st_size) for p in _shard_files(folder)]
            listed = [(e["name"], e["bytes"]) for e in meta["shards"]]
            if meta.get("format") == SHARD_FORMAT and on_disk == listed and npath.is_file():
                with np.load(npath, allow_pickle=False) as z:
                    arrays = {k: z[k].astype(np.int64) for k in ("shard", "offset", "size", "label")}
                if arrays["offset"].size == meta["samples"]:
                    return {"meta": meta, **arrays}
            if on_disk != listed:
                warnings.warn(f"the shards in {folder} differ from its {INDEX_JSON}; indexing them again",
                              stacklevel=3)
        except (OSError, ValueError, KeyError, TypeError):
            classes = None
    return build_shard_index(folder, classes)


class ShardSource(_Source):
    """Samples of WebDataset-layout tar shards, read by offset (see the module docstring)."""

    def __init__(self, folder: Path, shard_names: list[str], shard: np.ndarray, offset: np.ndarray,
                 size: np.ndarray, label: np.ndarray | None, classes: list[str]):
        self.name, self.where = "shards", Path(folder)
        self.shard_names = list(shard_names)
        self.shard, self.offset, self.size = shard, offset, size
        self._label = label
        self.labels = None if label is None else torch.from_numpy(label.astype(np.int64))
        self.classes = list(classes)
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None, split: str = "train") -> ShardSource:
        if root is None or str(root).strip() == "":
            raise DataError("shards needs data.root=<folder> holding shard-*.tar files (siamgrad data pack SRC DST)")
        base = Path(root).expanduser()
        if not base.is_dir():
            raise DataError(f"shard folder {base} does not exist; set data.root to the folder `siamgrad data pack` wrote")
        if (base / split).is_dir():
            folder = base / split
        elif split == "train" and _shard_files(base):
            folder = base
        else:
            present = sorted(d.name for d in base.iterdir() if d.is_dir() and _shard_files(d))
            raise DataError(
                f"shard folder {base} has no {split!r} split; "
                + (f"valid splits: {', '.join(present)}" if present else "put its shards in a subfolder of that name")
            )
        idx = _load_shard_index(folder)
        meta = idx["meta"]
        label = idx["label"] if meta["labeled"] else None
        return cls(folder, [e["name"] for e in meta["shards"]], idx["shard"], idx["offset"], idx["size"],
                   label, meta["classes"] if label is not None else [])

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
        return f"{self.where / self.shard_names[s]}:{member}"

    def subset(self, indices: np.ndarray) -> ShardSource:
        idx = np.asarray(indices, dtype=np.int64)
        lab = None if self._label is None else self._label[idx]
        return ShardSource(self.where, self.shard_names, self.shard[idx], self.offset[idx], self.size[idx],
                           lab, self.classes)

    def order(self, seed: int, epoch: int, buffer: int) -> np.ndarray:
        g = _epoch_generator(seed, epoch)
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


def open_source(name: str, root: str | os.PathLike[str] | None, split: str = "train") -> _Source:
    """The streaming source of ``imagefolder`` or ``shards`` data at ``root`` (split ``split``)."""
    if name == "imagefolder":
        return FolderSource.scan(root, split)
    if name == "shards":
        return ShardSource.open(root, split)
    raise ConfigError(f"data.stream=true works with data=imagefolder or data=shards, not {name!r}; "
                      "set data.stream=false")


# --------------------------------------------------------------------------------------------
# unreadable images
# --------------------------------------------------------------------------------------------


class BadImageCounter:
    """Counts unreadable images; warns once per file; stops when there are too many.

    With ``N`` files in the set, ``seen`` images read so far and ``bad`` failed reads among
    them (a file failing in every epoch counts every time), a :class:`DataError` is raised when
    the distinct unreadable files exceed ``max_fraction * N``, or when ``seen >= min_seen`` and
    ``bad > max_fraction * seen``.
    """

    def __init__(self, total: int, max_fraction: float, min_seen: int = MIN_SEEN_FOR_RATE):
        self.total, self.max_fraction, self.min_seen = int(total), float(max_fraction), int(min_seen)
        self.seen = 0
        self.bad = 0
        self.files: dict[int, str] = {}

    def update(self, seen: int, failures: Sequence[tuple[int, str, str]]) -> None:
        """Record ``seen`` reads of which ``failures`` = ``(index, name, reason)`` failed."""
        self.seen += int(seen)
        for index, name, reason in failures:
            self.bad += 1
            if index not in self.files:
                self.files[index] = name
                warnings.warn(
                    f"skipped unreadable image {name} ({reason}); {len(self.files)} unreadable file(s) so far",
                    UnreadableImageWarning, stacklevel=2,
                )
        if not failures:
            return
        f = self.max_fraction
        too_many_files = len(self.files) > f * self.total
        too_high_rate = self.seen >= self.min_seen and self.bad > f * self.seen
        if too_many_files or too_high_rate:
            names = list(self.files.values())
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            what = (f"{len(self.files)} of the {self.total} files" if too_many_files
                    else f"{self.bad} of the {self.seen} images read so far")
            raise DataError(
                f"{what} could not be decoded (more than data.max_bad_fraction={f:g}), e.g. {shown}; "
                "check or replace the corrupt files, or raise data.max_bad_fraction"
            )


# --------------------------------------------------------------------------------------------
# reading batches in workers
# --------------------------------------------------------------------------------------------


@dataclass
class _Payload:
    """What a worker hands over for one local batch (see :meth:`StreamBatches._finish`).

    ``decoded``: the images decoded in the worker, in batch order, at positions ``dec_pos``;
    ``raw``: the concatenated bytes of the JPEGs left for the device, ``raw_len`` their lengths,
    at positions ``raw_pos``; ``failed``: ``(position, reason)`` of the unreadable ones.
    """

    step: int
    indices: np.ndarray
    decoded: RaggedImages | None = None
    dec_pos: list[int] = field(default_factory=list)
    raw: torch.Tensor | None = None
    raw_len: list[int] = field(default_factory=list)
    raw_pos: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)

    def pin_memory(self) -> _Payload:
        if self.decoded is not None:
            self.decoded = self.decoded.pin_memory()
        if self.raw is not None:
            self.raw = self.raw.pin_memory()
        return self


class _StepReader(torch.utils.data.Dataset):
    """Map-style dataset over the steps of one epoch: item ``s`` is step ``s``'s local batch."""

    def __init__(self, source: _Source, steps: list[np.ndarray], device_jpeg: bool, max_side: int | None):
        self.source, self.steps = source, steps
        self.device_jpeg, self.max_side = device_jpeg, max_side

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, step: int) -> _Payload:
        idx = self.steps[step]
        pay = _Payload(step=step, indices=idx)
        images: list[torch.Tensor] = []
        raw: list[bytes] = []
        for pos, i in enumerate(idx.tolist()):
            try:
                data = self.source.read(i)
            except OSError as e:
                pay.failed.append((pos, f"cannot read: {_one_line(e.strerror or str(e))}"))
                continue
            if self.device_jpeg and data[:3] == _JPEG_MAGIC:
                raw.append(data)
                pay.raw_pos.append(pos)
                continue
            try:
                images.append(decode_image_bytes(data, self.max_side))
                pay.dec_pos.append(pos)
            except ValueError as e:
                pay.failed.append((pos, str(e)))
        if images:
            pay.decoded = RaggedImages.from_list(images)
        if raw:
            pay.raw_len = [len(r) for r in raw]
            pay.raw = torch.frombuffer(bytearray(b"".join(raw)), dtype=torch.uint8)
        return pay


def _identity(x: Any) -> Any:
    return x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one decode per core; no oversubscription


def _auto_workers(world: int = 1) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cpus = os.cpu_count() or 2
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world) or 1)
    return max(1, min(16, cpus // max(1, local) - 1))


class _ThreadPrefetch:
    """Run ``fn`` on the items of ``items`` one step ahead in a background thread.

    On CUDA the work runs on a side stream; the consumer's stream waits for it and the yielded
    tensors are recorded on the consumer's stream (safe reuse by the caching allocator).
    """

    _END = object()

    def __init__(self, items: Iterator[Any], fn: Callable[[Any], tuple], device: torch.device, depth: int = 2):
        self.items, self.fn, self.device = items, fn, device
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self.items:
                if self.stop.is_set():
                    break
                if self.stream is not None:
                    with torch.cuda.stream(self.stream):
                        out = self.fn(item)
                        event = self.stream.record_event()
                else:
                    out, event = self.fn(item), None
                if not self._put((out, event)):
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(e)
        finally:
            self._put(self._END)

    def __iter__(self) -> Iterator[tuple]:
        try:
            while True:
                item = self.q.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                (images, labels), event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    images.data.record_stream(current)
                    if labels is not None:
                        labels.record_stream(current)
                yield images, labels
        finally:
            self.close()

    def close(self) -> None:
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.q.get(timeout=0.1)
            except queue.Empty:
                pass
        self.thread.join()


class StreamBatches:
    """Batches of a streamed source, on the device: the streaming twin of ``InMemoryBatches``.

    ``len()`` is the number of steps per epoch; ``epoch(e, start)`` yields ``(images, labels)``
    for steps ``start..len-1`` of epoch ``e``: ``images`` a :class:`RaggedImages` on ``device``
    with ``batch_size / world`` images, ``labels`` int64 on ``device`` (``None`` unlabeled).
    See the module docstring for the order, the rank/worker split and decoding.

    Args:
        workers: DataLoader worker processes reading (and on CPU decoding) batches; 0 reads in
            this process; ``None``: ``min(16, cores per process - 1)``, at least 1.
        decode: ``"auto"`` (JPEGs on the device when it is CUDA, else in the workers),
            ``"device"`` or ``"cpu"``.
        thread: finish batches (device decoding, padding, copy) one step ahead in a
            background thread; default: on CUDA.
    """

    def __init__(self, source: _Source, device: torch.device | str, batch_size: int, seed: int, *,
                 rank: int = 0, world: int = 1, workers: int | None = None, decode: str = "auto",
                 shuffle_buffer: int = 10_000, max_bad_fraction: float = 0.01, max_side: int | None = 512,
                 drop_last: bool = True, prefetch: int = 2, thread: bool | None = None):
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"rank {rank} of {world} processes is not valid")
        if batch_size % world:
            raise ConfigError(f"batch_size={batch_size} is not divisible by the {world} processes; "
                              "make it a multiple of the number of processes")
        self.source = source
        self.n = len(source)
        if drop_last and batch_size > self.n:
            raise ConfigError(f"batch_size={batch_size} is larger than the training set ({self.n} images); "
                              "lower batch_size")
        if decode not in ("auto", "cpu", "device"):
            raise ConfigError(f"data.decode: {decode!r} is not valid; choose auto, cpu or device")
        self.device = torch.device(device)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.local = batch_size // world
        self.workers = _auto_workers(world) if workers is None else int(workers)
        self.device_jpeg = self.device.type == "cuda" and decode in ("auto", "device")
        self.shuffle_buffer, self.max_side = int(shuffle_buffer), max_side
        self.drop_last, self.prefetch = drop_last, max(1, int(prefetch))
        self.thread = self.device.type == "cuda" if thread is None else bool(thread)
        self.steps_per_epoch = self.n // batch_size if drop_last else -(-self.n // batch_size)
        self.bad = BadImageCounter(self.n, max_bad_fraction)
        self.device_decoder: Callable[[Sequence[torch.Tensor], torch.device], list[torch.Tensor]] = \
            decode_jpegs_on_device
        self._order_cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The global order of ``epoch`` (cached for the current epoch)."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, self.source.order(self.seed, epoch, self.shuffle_buffer))
        return self._order_cache[1]

    def local_indices(self, epoch: int, step: int) -> np.ndarray:
        """Dataset indices this rank reads at ``step`` of ``epoch`` (entries ``[r m / W, (r+1) m / W)``
        of the global batch of ``m`` samples)."""
        order = self.order(epoch)
        lo = step * self.batch_size
        m = min(self.batch_size, self.n - lo)
        a, b = (self.rank * m) // self.world, ((self.rank + 1) * m) // self.world
        return order[lo + a : lo + b]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[RaggedImages, torch.Tensor | None]]:
        """Yield ``(images, labels)`` for the steps ``start..len-1`` of ``epoch``, on the device."""
        steps = [self.local_indices(epoch, s) for s in range(self.steps_per_epoch)]
        reader = _StepReader(self.source, steps, self.device_jpeg, self.max_side)
        todo = [s for s in range(start, self.steps_per_epoch) if len(steps[s])]
        if self.workers == 0 or len(todo) == 0:
            payloads: Iterator[_Payload] = (reader[s] for s in todo)
            loader = None
        else:
            loader = torch.utils.data.DataLoader(
                reader, batch_size=None, sampler=todo, num_workers=min(self.workers, len(todo)),
                collate_fn=_identity, pin_memory=self.device.type == "cuda", prefetch_factor=self.prefetch,
                worker_init_fn=_worker_init, persistent_workers=False,
            )
            payloads = iter(loader)
        it: Iterator[tuple] = (_ThreadPrefetch(payloads, self._finish, self.device) if self.thread
                               else (self._finish(p) for p in payloads))
        try:
            yield from it
        finally:
            if isinstance(it, _ThreadPrefetch):
                it.close()
            del payloads, loader

    # -- the main-process half of a batch

    def _decode_raw(self, pay: _Payload) -> tuple[list[torch.Tensor | None], list[str]]:
        """Decode the payload's JPEG bytes on the device: batched, then one by one if that fails
        (nvjpeg, then the CPU decoders); ``None`` and a reason for an unreadable one."""
        chunks = list(pay.raw.split(pay.raw_len)) if pay.raw is not None else []
        try:
            out: list[torch.Tensor | None] = list(self.device_decoder(chunks, self.device))
            if len(out) != len(chunks):
                raise RuntimeError("decoder returned a wrong number of images")
            return [cap_side(x, self.max_side) for x in out], [""] * len(chunks)
        except Exception:  # noqa: BLE001 - find the culprit(s) one by one
            pass
        out, reasons = [], []
        for c in chunks:
            try:
                img = self.device_decoder([c], self.device)[0]
                out.append(cap_side(img, self.max_side))
                reasons.append("")
                continue
            except Exception:  # noqa: BLE001
                pass
            try:
                out.append(decode_image_bytes(c, self.max_side).to(self.device))
                reasons.append("")
            except ValueError as e:
                out.append(None)
                reasons.append(str(e))
        return out, reasons

    def _count(self, pay: _Payload, n: int, failed: list[tuple[int, str]]) -> None:
        names = [(int(pay.indices[p]), self.source.describe(int(pay.indices[p])), why) for p, why in failed]
        self.bad.update(n, names)

    def _finish(self, pay: _Payload) -> tuple[RaggedImages, torch.Tensor | None]:
        n = len(pay.indices)
        failed = list(pay.failed)
        if pay.raw is None and not failed and pay.decoded is not None:  # decoded in the worker, all good
            images = pay.decoded.to(self.device, non_blocking=True)
            source_rows = np.arange(n)
        else:
            slot: list[torch.Tensor | None] = [None] * n
            if pay.decoded is not None:
                dec = pay.decoded.to(self.device, non_blocking=True)
                for row, pos in enumerate(pay.dec_pos):
                    slot[pos] = dec.image(row)
            if pay.raw is not None:
                imgs, reasons = self._decode_raw(pay)
                for pos, img, why in zip(pay.raw_pos, imgs, reasons):
                    slot[pos] = img
                    if img is None:
                        failed.append((pos, why))
            good = [p for p in range(n) if slot[p] is not None]
            if not good:
                self._count(pay, n, failed)
                names = ", ".join(self.source.describe(int(pay.indices[p])) for p, _ in failed[:3])
                raise DataError(f"no image of a batch could be decoded, e.g. {names}; check the data files")
            # an unreadable image's place goes to the next good image of the batch (cyclically)
            source_rows = np.empty(n, dtype=np.int64)
            nxt = good[0]
            for p in range(n - 1, -1, -1):
                if slot[p] is not None:
                    nxt = p
                source_rows[p] = nxt
            images = RaggedImages.from_list([slot[int(p)] for p in source_rows], device=self.device)
        self._count(pay, n, failed)
        labels = None
        if self.source.labels is not None:
            labels = self.source.labels[torch.from_numpy(pay.indices[source_rows])].to(self.device, non_blocking=True)
        return images, labels


# --------------------------------------------------------------------------------------------
# the trainer's view of a streamed set
# --------------------------------------------------------------------------------------------


class _LoadReader(torch.utils.data.Dataset):
    """Chunks of a source decoded and center-cropped to ``size`` (for in-memory subsets)."""

    def __init__(self, source: _Source, chunks: list[np.ndarray], size: int):
        self.source, self.chunks, self.size = source, chunks, size

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
        out, kept, failed = [], [], []
        for i in self.chunks[k].tolist():
            try:
                img = decode_image_bytes(self.source.read(i), max_side=None)
            except (OSError, ValueError) as e:
                failed.append((i, _one_line(str(e))))
                continue
            out.append(_resize_center_crop(img, self.size))
            kept.append(i)
        images = torch.stack(out) if out else torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        return images, kept, failed


def load_in_memory(source: _Source, indices: np.ndarray | None, size: int, workers: int | None = None,
                   max_bad_fraction: float = 0.1) -> ImageDataset:
    """Decode ``indices`` of ``source`` (all when ``None``) into an :class:`ImageDataset` at
    ``size x size`` (shorter side resized to ``size``, then center-cropped, as the in-memory
    image-folder loader). Unreadable files are skipped with a warning."""
    idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    chunks = [idx[i : i + 64] for i in range(0, len(idx), 64)]
    reader = _LoadReader(source, chunks, size)
    w = _auto_workers() if workers is None else workers
    if w == 0 or len(chunks) <= 1:
        parts: Iterator = (reader[k] for k in range(len(chunks)))
    else:
        parts = iter(torch.utils.data.DataLoader(reader, batch_size=None, num_workers=min(w, len(chunks)),
                                                 collate_fn=_identity, worker_init_fn=_worker_init))
    counter = BadImageCounter(len(idx), max_bad_fraction, min_seen=len(idx) + 1)
    images, kept = [], []
    for imgs, k, failed in parts:
        images.append(imgs)
        kept += k
        counter.update(len(k) + len(failed), [(i, source.describe(i), why) for i, why in failed])
    if not kept:
        raise DataError(f"no image of {source.where} could be decoded; check the files")
    keep = torch.as_tensor(kept, dtype=torch.int64)
    labels = None if source.labels is None else source.labels[keep].clone()
    return ImageDataset(torch.cat(images), labels, list(source.classes), source.name)


class StreamedDataset:
    """A streamed training set as the trainer sees it (the attributes it reads of an
    :class:`~siamgrad.data.datasets.ImageDataset`).

    ``labels``/``classes``/``len()`` cover the whole set; ``image_size`` is the output and
    evaluation size (``data.image_size``, default 64): images are never resized ahead, the
    random crops are taken from the decoded images. ``images`` is *not* the set: it is a fixed
    random sample of at most :data:`SAMPLE_IMAGES` images at ``image_size``, loaded on first use
    (channel statistics, the diagnostics batch).
    """

    def __init__(self, source: _Source, image_size: int, workers: int | None = None, seed: int = 0):
        self.source, self.name = source, source.name
        self._image_size, self.workers, self.seed = int(image_size), workers, seed
        self._sample: ImageDataset | None = None

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labels(self) -> torch.Tensor | None:
        return self.source.labels

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    @property
    def image_size(self) -> int:
        return self._image_size

    def sample(self) -> ImageDataset:
        """A fixed random sample (seeded) of ``min(SAMPLE_IMAGES, N)`` images in memory at
        ``image_size`` (unreadable ones left out), loaded once."""
        if self._sample is None:
            k = min(SAMPLE_IMAGES, len(self))
            g = torch.Generator().manual_seed(self.seed + 4_242)
            idx = torch.sort(torch.randperm(len(self), generator=g)[:k]).values.numpy()
            self._sample = load_in_memory(self.source, idx, self.image_size, self.workers)
        return self._sample

    @property
    def images(self) -> torch.Tensor:
        return self.sample().images

    def fraction(self, frac: float, seed: int = 0) -> StreamedDataset:
        """A class-stratified subset of about ``frac`` of the set (the rule of
        :meth:`ImageDataset.fraction`)."""
        if isinstance(frac, bool) or not 0.0 < float(frac) <= 1.0:
            raise ConfigError(f"data fraction must be in (0, 1], got {frac!r}; e.g. data.fraction=0.5")
        if float(frac) == 1.0:
            return self
        idx = _stratified_sample(self.labels, len(self), float(frac), seed).numpy()
        return StreamedDataset(self.source.subset(idx), self.image_size, self.workers, self.seed)

    def load(self, indices: np.ndarray | None = None, size: int | None = None) -> ImageDataset:
        return load_in_memory(self.source, indices, size or self.image_size, self.workers)


def _stream_source(data: DataConfig) -> _Source | None:
    """The streaming source of ``data`` when it is streamed, else ``None``.

    ``data.stream``: true/false as given; ``None`` (auto): always for shards, and for image
    folders of more than :data:`STREAM_AUTO_MIN_FILES` files.
    """
    split = data.train_split or "train"
    stream = getattr(data, "stream", None)
    if stream is not None:
        if stream and data.name not in ("imagefolder", "shards"):
            raise ConfigError(f"data.stream=true works with data=imagefolder or data=shards, not {data.name}; "
                              "set data.stream=false")
        return open_source(data.name, data.root, split) if stream else None
    if data.name == "shards":
        return open_source("shards", data.root, split)
    if data.name != "imagefolder" or not data.root:
        return None
    try:
        source = FolderSource.scan(data.root, split)
    except DataError:
        return None  # the in-memory loader reports the problem
    return source if len(source) > STREAM_AUTO_MIN_FILES else None


def should_stream(data: DataConfig) -> bool:
    """Whether ``data`` is streamed (see :func:`load_train_set`)."""
    return _stream_source(data) is not None


def load_train_set(data: DataConfig, seed: int = 0) -> ImageDataset | StreamedDataset:
    """The training set of a DataConfig: streamed (:class:`StreamedDataset`) or in memory.

    Streamed when ``data.stream`` is true, or when it is ``None`` (auto) for ``shards`` and for
    image folders of more than :data:`STREAM_AUTO_MIN_FILES` files. ``data.fraction`` is
    applied (class-stratified, seeded by ``seed``). ``shards`` with ``stream=false`` are
    decoded into memory at ``data.image_size`` (default 64).
    """
    size = data.image_size or IMAGEFOLDER_DEFAULT_SIZE
    workers = getattr(data, "workers", None)
    source = _stream_source(data)
    if source is not None:
        ds: ImageDataset | StreamedDataset = StreamedDataset(source, size, workers, seed)
    elif data.name == "shards":
        ds = load_in_memory(open_source("shards", data.root, data.train_split or "train"), None, size, workers)
    else:
        ds = load_dataset(data.name, data.root, data.train_split or "train", image_size=data.image_size,
                          download=data.download)
    if data.fraction < 1.0:
        ds = ds.fraction(data.fraction, seed=seed)
    return ds


def make_batches(train_set: ImageDataset | StreamedDataset, device: torch.device | str, batch_size: int,
                 seed: int, *, data: DataConfig | None = None, rank: int | None = None, world: int | None = None):
    """The trainer's batch source: ``InMemoryBatches`` for an in-memory set, :class:`StreamBatches`
    for a streamed one (options from the DataConfig ``data``). ``rank``/``world`` default to the
    process group's (one process when none)."""
    rank = D.rank() if rank is None else rank
    world = D.world_size() if world is None else world
    if isinstance(train_set, ImageDataset):
        return InMemoryBatches(train_set, torch.device(device), batch_size, seed, rank=rank, world=world)
    opts = {}
    if data is not None:
        opts = dict(workers=data.workers, decode=data.decode, shuffle_buffer=data.shuffle_buffer,
                    max_bad_fraction=data.max_bad_fraction, max_side=data.max_side)
    return StreamBatches(train_set.source, device, batch_size, seed, rank=rank, world=world, **opts)


def dataset_channel_stats(train_set: ImageDataset | StreamedDataset) -> tuple[tuple[float, float, float],
                                                                               tuple[float, float, float]]:
    """Per-channel mean/std in ``[0, 1]`` units: :func:`siamgrad.data.datasets.channel_stats` of the set,
    or for a streamed set of its fixed sample (at most :data:`SAMPLE_IMAGES` images)."""
    if isinstance(train_set, StreamedDataset):
        return channel_stats(train_set.sample())
    return channel_stats(train_set)


def stream_eval_sets(data: DataConfig, train_set: ImageDataset | StreamedDataset, size: int,
                     seed: int = 0) -> tuple[ImageDataset | None, ImageDataset | None]:
    """Bounded in-memory labeled sets for kNN evaluation of streamed (or shard) data.

    Train: the training set itself when in memory and labeled; else a class-stratified sample
    of at most ``data.eval_images`` images (the labeled ``train`` split when the training
    split is unlabeled). Test: the same bound on ``data.test_split``. Images at
    ``size x size`` (shorter side resized, center crop). ``(None, None)`` when either is
    missing or unlabeled.
    """
    cap = int(getattr(data, "eval_images", 10_000))
    workers = getattr(data, "workers", None)

    def bounded(source: _Source) -> ImageDataset | None:
        if source.labels is None:
            return None
        idx = None
        if len(source) > cap:
            idx = _stratified_sample(source.labels, len(source), cap / len(source), seed).numpy()
        return load_in_memory(source, idx, size, workers)

    try:
        if isinstance(train_set, ImageDataset):
            train = train_set if train_set.labels is not None else None
        elif train_set.labels is not None:
            train = bounded(train_set.source)
        else:
            train = None
        if train is None:
            train = bounded(open_source(data.name, data.root, "train"))
        test = bounded(open_source(data.name, data.root, data.test_split))
    except DataError:
        return None, None
    if train is None or test is None:
        return None, None
    return train, test
