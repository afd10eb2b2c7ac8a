"""Data: from files (or scikit-learn's digits) to the batches and evaluation sets of a run.

Start at :func:`load_data` (a data config -> :class:`DataSets`: the training set, the kNN sets,
the channel statistics) and :func:`make_batches` (the training set -> batches on the device).
The modules, lowest first (each imports only those above it):

* :mod:`~siamgrad.data.decode`: encoded bytes -> uint8 RGB; resizing (the one decoder).
* :mod:`~siamgrad.data.bad_images`: unreadable files: one warning line each, one limit
  (``data.max_bad_fraction``).
* :mod:`~siamgrad.data.sources`: where samples live: image folders, tar shards and their
  index; the epoch order of each.
* :mod:`~siamgrad.data.workers`: reader processes (how many, their setup).
* :mod:`~siamgrad.data.in_memory`: :class:`ImageDataset`, stratified sampling, channel
  statistics, decoding a source into memory.
* :mod:`~siamgrad.data.streaming`: :class:`StreamBatches` (workers read batches from disk) and
  :class:`StreamedDataset`.
* :mod:`~siamgrad.data.datasets`: the named datasets (digits, CIFAR-10/100, STL-10, image
  folders) in memory: :func:`load_dataset`.
* :mod:`~siamgrad.data.batches`: :class:`InMemoryBatches`.
* :mod:`~siamgrad.data.sets`: :func:`load_data`, :func:`make_batches`.
* :mod:`~siamgrad.data.pack`: ``siamgrad data pack``: an image folder -> tar shards.
"""

from siamgrad.data.bad_images import BadImageCounter, UnreadableImageWarning
from siamgrad.data.batches import InMemoryBatches
from siamgrad.data.datasets import DATASETS, load_dataset
from siamgrad.data.decode import IMAGE_EXTENSIONS, decode_image_bytes
from siamgrad.data.in_memory import ImageDataset, channel_stats, load_in_memory, stratified_sample
from siamgrad.data.pack import pack_folder
from siamgrad.data.sets import DataSets, load_data, make_batches, should_stream
from siamgrad.data.sources import FolderSource, ShardSource, Source, open_source
from siamgrad.data.streaming import StreamBatches, StreamedDataset

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "BadImageCounter",
    "DataSets",
    "FolderSource",
    "ImageDataset",
    "InMemoryBatches",
    "ShardSource",
    "Source",
    "StreamBatches",
    "StreamedDataset",
    "UnreadableImageWarning",
    "channel_stats",
    "decode_image_bytes",
    "load_data",
    "load_dataset",
    "load_in_memory",
    "make_batches",
    "open_source",
    "pack_folder",
    "should_stream",
    "stratified_sample",
]
