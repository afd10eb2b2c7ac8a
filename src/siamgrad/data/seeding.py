"""The seeding of every random draw of training: one generator per ``(seed, epoch)`` for the order
of the images, one per ``(seed, step)`` for a step's augmentation, so a resumed or multi-process
run draws exactly what an uninterrupted single-process run draws."""

from __future__ import annotations

import torch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of epoch ``epoch``'s order of the training images."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator of step ``step``'s augmentation draws; ``stream`` keeps independent draws apart."""
    return torch.Generator().manual_seed(seed * 7_919 + step + 1 + stream)
