"""From a data config to the sets a run uses: :func:`load_data`, and :func:`make_batches`.

:func:`load_data` is the one entry point from a :class:`~siamgrad.config.DataConfig` to data:
the training set (in memory or streamed, ``data.fraction`` applied), the labeled sets kNN
evaluates on, and the channel statistics the augmentation normalizes with. Training,
evaluation, ``siamgrad analyze`` and the experiment runner all call it, so a run trained from
any format (a named dataset, an image folder, tar shards) is evaluated and analyzed on the same
sets. :func:`make_batches` turns the training set into the trainer's batch source.

Streamed or in memory (:func:`should_stream`): ``data.stream`` true/false as given; ``None``
(auto) streams ``shards`` always and image folders of more than :data:`STREAM_AUTO_MIN_FILES`
files. ``shards`` with ``stream=false`` are decoded into memory at ``data.image_size``
(default 64).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from siamgrad import distributed as D
from siamgrad.config import DataConfig
from siamgrad.data.batches import InMemoryBatches
from siamgrad.data.datasets import IMAGEFOLDER_DEFAULT_SIZE, load_dataset
from siamgrad.data.in_memory import ImageDataset, channel_stats, load_in_memory, stratified_sample
from siamgrad.data.sources import FolderSource, Source, image_folder_split, open_source, shard_files
from siamgrad.data.streaming import StreamBatches, StreamedDataset
from siamgrad.errors import ConfigError, DataError

__all__ = [
    "STREAM_AUTO_MIN_FILES",
    "DataSets",
    "dataset_channel_stats",
    "load_data",
    "load_eval_sets",
    "load_train_set",
    "make_batches",
    "one_class",
    "should_stream",
]

STREAM_AUTO_MIN_FILES = 50_000
"""``data.stream=null`` streams an image folder holding more files than this (shards always)."""

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass
class DataSets:
    """What a run trains and evaluates on (see :func:`load_data`).

    Attributes:
        train: the training set, ``data.fraction`` applied: an
            :class:`~siamgrad.data.in_memory.ImageDataset`, or a
            :class:`~siamgrad.data.streaming.StreamedDataset` for streamed data.
        knn_train, knn_test: labeled in-memory sets for kNN evaluation, or ``None`` (both) when
            the data has no labels or no test split, or all its labels are one class (see
            ``no_eval``), or ``eval_sets=False``.
        mean, std: per-channel statistics of the training set in ``[0, 1]`` units
            (:func:`dataset_channel_stats`).
        image_size: the side the model sees: ``size`` when given, else the training set's own.
        no_eval: why labeled sets that exist are not evaluated on (all of one class), for a
            warning; ``None`` otherwise.
    """

    train: ImageDataset | StreamedDataset
    knn_train: ImageDataset | None
    knn_test: ImageDataset | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    no_eval: str | None = None


def load_data(data: DataConfig, *, seed: int, size: int | None = None, eval_sets: bool = True) -> DataSets:
    """The training set, the kNN sets and the channel statistics of the data config ``data``.

    In this order, which a fixed-seed run relies on (decoding with worker processes draws
    DataLoader seeds from torch's global generator, seeded by the trainer right before):

    1. the training set (:func:`load_train_set`; ``data.fraction`` applied, seeded by ``seed``);
    2. with ``eval_sets``, the kNN sets (:func:`load_eval_sets`) at ``image_size``;
    3. the channel statistics (:func:`dataset_channel_stats`).

    ``size``: the side the model sees (``augment.size``); ``None``: the training set's own.
    Unreadable image files are skipped up to ``data.max_bad_fraction`` for every format.

    Ranks: for streamed data and shards (``data.name == "shards" or should_stream(data)``) the
    evaluation sets are decoded from disk; the trainer passes ``eval_sets=False`` on ranks
    other than 0 for such data, since only rank 0 evaluates. In-memory datasets load them on
    every rank.
    """
    train = load_train_set(data, seed)
    image_size = int(size or train.image_size)
    knn_train, knn_test = load_eval_sets(data, train, image_size, seed) if eval_sets else (None, None)
    no_eval = one_class(data, knn_train) if knn_train is not None and knn_test is not None else None
    if no_eval is not None:
        knn_train = knn_test = None
    mean, std = dataset_channel_stats(train)
    return DataSets(train, knn_train, knn_test, mean, std, image_size, no_eval)


def one_class(data: DataConfig, bank: ImageDataset) -> str | None:
    """Why kNN cannot judge an encoder on ``bank`` when all its labels are one class (every image
    gets that class whatever the features: 100% for the trained, the untrained encoder and raw
    pixels alike), else ``None``."""
    present = torch.unique(bank.labels)
    if present.numel() >= 2:
        return None
    only = bank.classes[int(present[0])] if present.numel() and int(present[0]) < len(bank.classes) else "none"
    where = f"{data.name} data at {data.root}" if data.root else f"{data.name} data"
    return (f"kNN needs labeled data with two classes or more, and the labeled images of {where} are all of "
            f"one class ('{only}')")


def _split_absent(data: DataConfig, split: str) -> bool:
    """Whether ``split`` is absent from an image folder or shard folder (the data then has no kNN
    sets); a split that is there but unreadable is an error its loader names. Named datasets have
    their splits in every complete copy: a missing or damaged file of them is an error too."""
    if data.name not in ("imagefolder", "shards") or not data.root:
        return False
    base = Path(data.root).expanduser()
    if data.name == "imagefolder":
        try:
            image_folder_split(base, split)
        except DataError:
            return True
        return False
    return not ((base / split).is_dir() or (split == "train" and shard_files(base)))


def _stream_source(data: DataConfig) -> Source | None:
    """The streaming source of ``data`` when it is streamed, else ``None``."""
    split = data.train_split or "train"
    stream = data.stream
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
    """Whether the training set of ``data`` is streamed (see the module docstring)."""
    return _stream_source(data) is not None


def load_train_set(data: DataConfig, seed: int = 0) -> ImageDataset | StreamedDataset:
    """The training set of ``data`` (step 1 of :func:`load_data`): streamed
    (:class:`StreamedDataset`) or in memory, ``data.fraction`` applied (class-stratified,
    seeded by ``seed``)."""
    size = data.image_size or IMAGEFOLDER_DEFAULT_SIZE
    split = data.train_split or "train"
    source = _stream_source(data)
    if source is not None:
        ds: ImageDataset | StreamedDataset = StreamedDataset(source, size, data.workers, seed, data.max_bad_fraction)
    elif data.name == "shards":
        ds = load_in_memory(open_source("shards", data.root, split), None, size, data.workers, data.max_bad_fraction)
    else:
        ds = load_dataset(data.name, data.root, split, image_size=data.image_size, download=data.download,
                          max_bad_fraction=data.max_bad_fraction)
    if data.fraction < 1.0:
        ds = ds.fraction(data.fraction, seed=seed)
    return ds


def load_eval_sets(data: DataConfig, train_set: ImageDataset | StreamedDataset, size: int,
                   seed: int = 0) -> tuple[ImageDataset | None, ImageDataset | None]:
    """Labeled in-memory sets for kNN evaluation (step 2 of :func:`load_data`), or ``(None, None)``.

    Named datasets and in-memory image folders: the bank is the training set itself when
    labeled, else the whole ``train`` split; the test set ``data.test_split``; both at the
    dataset's image size (the feature extractor resizes them to ``size``).

    Shards and streamed folders: bounded samples decoded at ``size x size`` (shorter side
    resized, center crop): the training set when in memory and labeled; else a class-stratified
    sample of at most ``data.eval_images`` images of it (of the labeled ``train`` split when
    the training split is unlabeled); the same bound on ``data.test_split``. More unreadable
    files in them than ``data.max_bad_fraction`` allows raise :class:`DataError`.

    ``(None, None)`` when either set is missing or unlabeled.
    """
    if data.name == "shards" or not isinstance(train_set, ImageDataset):
        return _bounded_eval_sets(data, train_set, size, seed)
    # a split the data lacks means no kNN; one that is there but damaged stops with its loader's
    # one-line error (naming the file), as a damaged training file does
    train = train_set if train_set.labels is not None else None
    if train is None and not _split_absent(data, "train"):
        train = load_dataset(data.name, data.root, "train", image_size=data.image_size,
                             max_bad_fraction=data.max_bad_fraction)
    test = None
    if not _split_absent(data, data.test_split):
        test = load_dataset(data.name, data.root, data.test_split, image_size=data.image_size,
                            max_bad_fraction=data.max_bad_fraction)
    if train is None or train.labels is None or test is None or test.labels is None:
        return None, None
    return train, test


def _bounded_eval_sets(data: DataConfig, train_set: ImageDataset | StreamedDataset, size: int,
                       seed: int) -> tuple[ImageDataset | None, ImageDataset | None]:
    cap = int(data.eval_images)

    def labeled(split: str) -> Source | None:
        if _split_absent(data, split):  # no such split: no kNN
            return None
        source = open_source(data.name, data.root, split)  # there but unreadable: its error
        return source if source.labels is not None else None

    def bounded(source: Source) -> ImageDataset:
        # decoding errors (too many unreadable files) reach the user: they name the fix
        idx = None
        if len(source) > cap:
            idx = stratified_sample(source.labels, len(source), cap / len(source), seed).numpy()
        return load_in_memory(source, idx, size, data.workers, data.max_bad_fraction)

    if isinstance(train_set, ImageDataset):
        train_source = None
        train = train_set if train_set.labels is not None else None
    else:
        train_source = train_set.source if train_set.labels is not None else None
        train = None
    if train is None and train_source is None:
        train_source = labeled("train")
    test_source = labeled(data.test_split)
    if (train is None and train_source is None) or test_source is None:
        return None, None
    if train is None:
        train = bounded(train_source)
    return train, bounded(test_source)


def dataset_channel_stats(train_set: ImageDataset | StreamedDataset) -> Stats:
    """Per-channel mean/std in ``[0, 1]`` units (step 3 of :func:`load_data`):
    :func:`~siamgrad.data.in_memory.channel_stats` of the set, or for a streamed set of its
    fixed sample (at most :data:`~siamgrad.data.streaming.SAMPLE_IMAGES` images)."""
    if isinstance(train_set, StreamedDataset):
        return channel_stats(train_set.sample())
    return channel_stats(train_set)


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
