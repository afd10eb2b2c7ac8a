"""Thin helpers over ``torch.distributed`` used by every objective.

All helpers are no-ops (identity / single-process semantics) when ``torch.distributed`` is not
initialized, so the objectives are written once and run unchanged on one CPU, one GPU or many.

Gradient convention
-------------------
:func:`all_gather_with_grad` concatenates the local batches of all processes in rank order. Its
backward *sums* the incoming gradients over processes (an all-reduce) and returns each process
its own slice. With DistributedDataParallel averaging parameter gradients over the ``W``
processes, this reproduces single-process training with the full batch in both of the ways the
objectives use it:

* the loss on every rank is the *global* loss computed from gathered tensors (Barlow Twins,
  VICReg): each rank's slice receives ``W * dL/dz_r``, and DDP's average divides by ``W``;
* the loss on every rank is the mean over its *local* anchors with gathered negatives
  (contrastive): the global loss is the mean of the ``W`` local losses, and summing their
  gradients then averaging over ``W`` gives its gradient.

Statistics that need no gradient (correlation matrices F, queues) go through
:func:`all_reduce_mean` / :func:`all_reduce_sum` / :func:`all_gather`, which detach.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_dist",
    "world_size",
    "rank",
    "all_gather",
    "all_gather_with_grad",
    "all_reduce_mean",
    "all_reduce_sum",
]


def is_dist() -> bool:
    """True when ``torch.distributed`` is available and a process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    """Rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_dist() else 0


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate along dim 0 across processes; backward = all-reduce(sum) of grads, then slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.local_size = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.local_size
        return grad[start : start + ctx.local_size]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` ([n, ...], same n on every rank) over processes in rank order.

    Backward: each rank's slice gets the SUM over ranks of the gradients flowing into it.
    Identity when not distributed.
    """
    if not is_dist() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def all_gather(x: Tensor) -> Tensor:
    """Detached concatenation of ``x`` over processes (rank order); ``x.detach()`` alone otherwise."""
    x = x.detach()
    if not is_dist() or world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_sum(x: Tensor) -> Tensor:
    """Detached sum of ``x`` over processes (a new tensor; ``x`` is left untouched)."""
    out = x.detach().clone()
    if is_dist() and world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """Detached mean of ``x`` over processes (a new tensor; ``x`` is left untouched)."""
    out = all_reduce_sum(x)
    if is_dist() and world_size() > 1:
        out /= world_size()
    return out
