"""In-memory image sets: the :class:`ImageDataset` container and loading a source into it.

An :class:`ImageDataset` holds ``images``, a contiguous ``uint8`` tensor ``[N, 3, H, W]`` with
``H == W`` (grayscale sources replicated to three channels), and ``labels``, ``int64`` ``[N]``
(``None`` for unlabeled data). Keeping the whole set as one tensor lets the trainer move batches
to the device in one copy and run the augmentations there, batched.

:func:`stratified_sample` is the one class-stratified sampling rule (``data.fraction``, the
digits test split, the bounded evaluation sets of streamed data); :func:`channel_stats` the
per-channel mean and std the augmentation normalizes with; :func:`load_in_memory` decodes the
images of a :class:`~siamgrad.data.sources.Source` (an image folder, shards) into an
:class:`ImageDataset` at a square size, skipping unreadable files
(:class:`~siamgrad.data.bad_images.BadImageCounter`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from siamgrad.data.bad_images import DEFAULT_MAX_BAD_FRACTION, BadImageCounter
from siamgrad.data.decode import decode_image_bytes, one_line, resize_center_crop
from siamgrad.data.sources import Source
from siamgrad.data.workers import auto_workers, pass_through, worker_init
from siamgrad.errors import ConfigError, DataError

__all__ = ["STATS_MAX_IMAGES", "ImageDataset", "channel_stats", "load_in_memory", "stratified_sample"]

STATS_MAX_IMAGES = 10_000
""":func:`channel_stats` uses at most this many images (a fixed random sample beyond it)."""

STATS_CHUNK = 512  # images per chunk of the channel sums, bounds the int64 working memory
LOAD_CHUNK = 64  # images per work item of load_in_memory


def _error(message: str) -> DataError:
    """A :class:`DataError` whose message is collapsed onto one line."""
    return DataError(one_line(message))


@dataclass
class ImageDataset:
    """Images and labels held in memory.

    Attributes:
        images: ``uint8`` tensor ``[N, 3, H, W]``, contiguous, square (``H == W``).
        labels: ``int64`` tensor ``[N]`` with values in ``0..len(classes)-1``, or ``None`` for
            unlabeled data.
        classes: class names; ``labels[i]`` indexes this list.
        name: the dataset's name (``digits``, ``cifar10``, ..., ``imagefolder``, ``shards``).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    classes: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        img = self.images
        if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8 or img.dim() != 4:
            raise _error(
                f"dataset {self.name!r}: images must be a uint8 tensor [N, 3, H, W], got "
                f"{getattr(img, 'dtype', type(img).__name__)} of shape "
                f"{tuple(getattr(img, 'shape', ()))}"
            )
        if img.shape[1] != 3 or img.shape[2] != img.shape[3]:
            raise _error(
                f"dataset {self.name!r}: images must be square with 3 channels [N, 3, S, S], "
                f"got shape {tuple(img.shape)}"
            )
        if not img.is_contiguous():
            self.images = img.contiguous()
        if self.labels is not None:
            lab = self.labels
            if not isinstance(lab, torch.Tensor) or lab.dim() != 1 or lab.shape[0] != img.shape[0]:
                raise _error(
                    f"dataset {self.name!r}: labels must be a 1-D tensor with one entry per image "
                    f"({img.shape[0]}), got shape {tuple(getattr(lab, 'shape', ()))}"
                )
            if lab.dtype != torch.int64:
                self.labels = lab.to(torch.int64)
        self.classes = list(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        """Side length ``H`` (``== W``) of the square images."""
        return int(self.images.shape[2])

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        """The images at ``indices`` (an integer index tensor or a boolean mask), in that order."""
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx, as_tuple=False).flatten()
        idx = idx.to(torch.int64)
        labels = None if self.labels is None else self.labels[idx].clone()
        return ImageDataset(
            images=self.images[idx].contiguous(),
            labels=labels,
            classes=list(self.classes),
            name=self.name,
        )

    def fraction(self, frac: float, seed: int = 0) -> ImageDataset:
        """A class-stratified random subset holding about ``frac`` of the images.

        For every class with ``n_c`` images, ``k_c = clamp(floor(frac * n_c + 1/2), 1, n_c)``
        of them are drawn without replacement (a random permutation seeded by ``seed``);
        unlabeled data is sampled as one group. The kept images stay in their original order.
        ``frac`` must lie in ``(0, 1]``; ``frac == 1`` returns the full set.
        """
        if isinstance(frac, bool) or not isinstance(frac, numbers.Real) or not 0.0 < frac <= 1.0:
            raise ConfigError(
                f"data fraction must be in (0, 1], got {frac!r}; e.g. data.fraction=0.5"
            )
        if float(frac) == 1.0:
            return self.subset(torch.arange(len(self)))
        return self.subset(stratified_sample(self.labels, len(self), float(frac), seed))


def stratified_sample(labels: torch.Tensor | None, n: int, frac: float, seed: int) -> torch.Tensor:
    """Sorted indices of a per-class random sample of ``round(frac * n_c)`` (>= 1) items.

    ``k_c = clamp(floor(frac * n_c + 1/2), 1, n_c)`` of the ``n_c`` items of every class are drawn
    without replacement (one generator seeded by ``seed``, classes in increasing order);
    unlabeled items (``labels=None``) are one group.
    """
    gen = torch.Generator().manual_seed(int(seed))
    groups = [torch.arange(n)] if labels is None else [
        torch.nonzero(labels == c, as_tuple=False).flatten() for c in torch.unique(labels)
    ]
    picked = []
    for members in groups:
        n_c = members.numel()
        if n_c == 0:
            continue
        k = min(n_c, max(1, math.floor(frac * n_c + 0.5)))
        picked.append(members[torch.randperm(n_c, generator=gen)[:k]])
    return torch.sort(torch.cat(picked)).values


def channel_stats(
    ds: ImageDataset, max_images: int = STATS_MAX_IMAGES, seed: int = 0
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and standard deviation of the pixel values in ``[0, 1]`` units.

    ``mean_c = sum(x) / M`` and ``std_c = sqrt(sum(x^2) / M - mean_c^2)`` (population std) over
    all ``M`` pixels of channel ``c`` of the images, with ``x = value / 255``. Sets larger than
    ``max_images`` use a fixed random sample of ``max_images`` images (seeded by ``seed``).
    The sums are accumulated exactly in int64.
    """
    n = len(ds)
    if n == 0:
        raise _error(f"dataset {ds.name!r} is empty: no images to compute channel statistics from")
    if n > max_images:
        gen = torch.Generator().manual_seed(int(seed))
        idx = torch.sort(torch.randperm(n, generator=gen)[:max_images]).values
    else:
        idx = torch.arange(n)
    total = torch.zeros(3, dtype=torch.int64)
    total_sq = torch.zeros(3, dtype=torch.int64)
    for start in range(0, idx.numel(), STATS_CHUNK):
        x = ds.images[idx[start : start + STATS_CHUNK]].to(torch.int64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = idx.numel() * ds.images.shape[2] * ds.images.shape[3]
    mean = total.double() / count
    var = (total_sq.double() / count - mean * mean).clamp_min(0.0)
    mean01 = (mean / 255.0).tolist()
    std01 = (var.sqrt() / 255.0).tolist()
    return (mean01[0], mean01[1], mean01[2]), (std01[0], std01[1], std01[2])


class _LoadReader(torch.utils.data.Dataset):
    """Chunks of a source decoded and center-cropped to ``size`` (for in-memory subsets)."""

    def __init__(self, source: Source, chunks: list[np.ndarray], size: int):
        self.source, self.chunks, self.size = source, chunks, size

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
        out, kept, failed = [], [], []
        for i in self.chunks[k].tolist():
            try:
                img = decode_image_bytes(self.source.read(i), max_side=None)
            except (OSError, ValueError) as e:
                failed.append((i, one_line(e)))
                continue
            out.append(resize_center_crop(img, self.size))
            kept.append(i)
        images = torch.stack(out) if out else torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        return images, kept, failed


def load_in_memory(source: Source, indices: np.ndarray | None, size: int, workers: int | None = None,
                   max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> ImageDataset:
    """Decode ``indices`` of ``source`` (all when ``None``) into an :class:`ImageDataset` at
    ``size x size``: shorter side resized to ``size``, then center-cropped.

    Unreadable files are skipped with a warning each; more than ``max_bad_fraction`` of the
    files (``data.max_bad_fraction``) raise :class:`DataError`. ``workers``: reader processes
    (0: this process; ``None``: :func:`~siamgrad.data.workers.auto_workers`).
    """
    idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
    chunks = [idx[i : i + LOAD_CHUNK] for i in range(0, len(idx), LOAD_CHUNK)]
    reader = _LoadReader(source, chunks, size)
    w = auto_workers() if workers is None else workers
    if w == 0 or len(chunks) <= 1:
        parts: Iterator = (reader[k] for k in range(len(chunks)))
    else:
        parts = iter(torch.utils.data.DataLoader(reader, batch_size=None, num_workers=min(w, len(chunks)),
                                                 collate_fn=pass_through, worker_init_fn=worker_init))
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
