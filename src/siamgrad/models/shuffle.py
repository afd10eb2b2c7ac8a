"""Shuffled batch norm for MoCo's key encoder (He et al. 2020, Sec. 3.3).

With batch norm in the key encoder, a query and its key normalized with statistics of the same
samples let the model "cheat" the pretext task. The official code (facebookresearch/moco,
``moco/builder.py``) shuffles the batch across GPUs before the key encoder's forward and puts the
keys back in order after it, so every GPU's key statistics come from a random subset of images.

Here, for a key batch ``x`` (``n`` rows on each of ``W`` processes, all views stacked) and a
permutation ``perm`` of the ``W * n`` rows of the global batch (rank order):

* :func:`shuffle` returns this rank's ``n`` rows of the permuted global batch,
  ``gather(x)[perm[r n : (r + 1) n]]``;
* :func:`unshuffle` gathers the key encoder's outputs and returns the rows of this rank's
  original samples, ``gather(y)[argsort(perm)[r n : (r + 1) n]]``.

On one process (``W = 1``) this is a permutation of the local batch; combined with per-view batch
norm (:mod:`siamgrad.models.view_norm`) the key encoder's statistic groups are then random sets of
``n`` (view, image) pairs, a different grouping from the queries' (one view per group). Under
``torchrun`` it is the official code's scheme. :class:`KeyShuffle` draws the permutation of a step
from a generator seeded by the run's seed and a step counter kept in buffers (so a resumed run
draws the same ones, and an extra forward between two steps, e.g. the diagnostics', draws the
next step's permutation without consuming it); rank 0's permutation is broadcast to every rank
as the official code does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from siamgrad import distributed as D

__all__ = ["KeyShuffle", "shuffle", "unshuffle"]


def _local_rows(index: Tensor, n: int) -> Tensor:
    return index.view(D.world_size(), n)[D.rank()]


@torch.no_grad()
def shuffle(x: Tensor, perm: Tensor) -> Tensor:
    """This rank's share of the permuted global batch (detached: the key branch has no gradient)."""
    n = x.shape[0]
    return D.all_gather(x)[_local_rows(perm.to(x.device), n)]


@torch.no_grad()
def unshuffle(y: Tensor, perm: Tensor) -> Tensor:
    """The inverse of :func:`shuffle` applied to the outputs ``y`` of the shuffled rows."""
    n = y.shape[0]
    inverse = torch.argsort(perm.to(y.device))
    return D.all_gather(y)[_local_rows(inverse, n)]


class KeyShuffle(nn.Module):
    """Draws the shuffle permutation of each step; its buffers (seed, steps) make them resume exactly."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        seed = torch.initial_seed() if seed is None else seed  # the run's seed, drawn from no RNG
        self.register_buffer("seed", torch.tensor(int(seed) % (2**62), dtype=torch.int64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def permutation(self, n_global: int, device: torch.device | str) -> Tensor:
        """This step's permutation of ``range(n_global)``, the same on every rank (rank 0's)."""
        g = torch.Generator().manual_seed((int(self.seed) * 1_000_003 + int(self.steps)) % (2**63))
        perm = torch.randperm(n_global, generator=g).to(device)
        if D.is_dist() and D.world_size() > 1:
            dist.broadcast(perm, src=0)
        return perm

    @torch.no_grad()
    def advance(self) -> None:
        """The next step draws a new permutation (call after the optimizer step)."""
        self.steps += 1
