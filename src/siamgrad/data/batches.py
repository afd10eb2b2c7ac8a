"""Batches of an in-memory dataset, in an epoch order that resume and several processes reproduce."""

from __future__ import annotations

import torch

from siamgrad.data.in_memory import ImageDataset
from siamgrad.data.seeding import epoch_generator
from siamgrad.errors import ConfigError


class InMemoryBatches:
    """Shuffled batches of an in-memory uint8 dataset that was moved to the device once.

    The order of epoch ``e`` is a permutation drawn from a generator seeded by ``(seed, e)`` over
    the whole dataset; a global batch is ``batch_size`` consecutive entries of it (the last
    incomplete batch is dropped). With ``world`` processes, process ``rank`` takes its
    ``batch_size / world`` share of every global batch, so the union over processes is the batch
    one process would see, and a run resumed with another number of processes sees the same data.
    """

    def __init__(self, dataset: ImageDataset, device: torch.device, batch_size: int, seed: int,
                 rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ConfigError(f"batch_size={batch_size} is not divisible by the {world} processes; "
                              "make it a multiple of the number of processes")
        self.n = len(dataset)
        if batch_size > self.n:
            raise ConfigError(
                f"batch_size={batch_size} is larger than the training set ({self.n} images); lower batch_size"
            )
        self.images = dataset.images.to(device)
        self.labels = dataset.labels.to(device) if dataset.labels is not None else None
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.local = batch_size // world
        self.offset = rank * self.local
        self.steps_per_epoch = self.n // batch_size

    def __len__(self) -> int:
        return self.steps_per_epoch

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=epoch_generator(self.seed, epoch))

    def epoch(self, epoch: int, start: int = 0):
        """Yield ``(images, labels)`` for the steps ``start..steps_per_epoch-1`` of ``epoch``."""
        order = self.order(epoch)
        for b in range(start, self.steps_per_epoch):
            lo = b * self.batch_size + self.offset
            idx = order[lo : lo + self.local].to(self.device)
            yield self.images[idx], (self.labels[idx] if self.labels is not None else None)
