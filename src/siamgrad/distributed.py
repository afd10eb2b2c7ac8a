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

Process groups and batch norm
-----------------------------
:func:`init_from_env` starts the process group from the variables ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL for CUDA devices, gloo
otherwise. :func:`convert_sync_batchnorm` makes every batch-norm layer normalize with the
statistics of the *global* batch: ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm`
(below, any device and backend) elsewhere. Inside :func:`local_only` the helpers of this module
act as in a single process (the trainer's diagnostics run the same fixed batch on every rank).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import inspect
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from siamgrad.errors import ConfigError

__all__ = [
    "is_dist",
    "world_size",
    "rank",
    "all_gather",
    "all_gather_with_grad",
    "all_reduce_mean",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "same_on_all_ranks",
    "local_only",
    "DistInfo",
    "init_from_env",
    "close",
    "GlobalBatchNorm",
    "convert_sync_batchnorm",
    "wrap_ddp",
]

# collectives wait this long for a slow rank (rank 0 evaluating or writing a checkpoint)
TIMEOUT = datetime.timedelta(minutes=60)

_local_only = False


def is_dist() -> bool:
    """True when a process group is initialized (and not inside :func:`local_only`)."""
    return not _local_only and dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within this block the helpers here (and :class:`GlobalBatchNorm`) act as in one process."""
    global _local_only
    before, _local_only = _local_only, True
    try:
        yield
    finally:
        _local_only = before


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

    Backward: each rank's slice gets the SUM over ranks of the gradients flowing into it (the
    scaling of torch.distributed.nn's all_gather, which this torch marks deprecated).
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


@torch.no_grad()
def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on at least one (``flag`` when not distributed)."""
    if not is_dist() or world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


@torch.no_grad()
def same_on_all_ranks(value: int, device: torch.device | str = "cpu") -> bool:
    """True on every rank when every rank passed the same integer (True when not distributed)."""
    if not is_dist() or world_size() == 1:
        return True
    t = torch.tensor([value, -value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # max(v) and -min(v)
    return bool(t[0].item() == -t[1].item())


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_dist() and world_size() > 1:
        dist.barrier()


# --------------------------------------------------------------------------------------------
# process group from torchrun's environment


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its node;
    ``owner`` when :func:`init_from_env` created the process group (and :func:`close` ends it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owner: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer; launch with torchrun") from None


def init_from_env(device_type: str = "cpu") -> DistInfo:
    """Join the process group described by torchrun's environment, or run alone.

    * a process group already initialized (by the caller): use it;
    * ``WORLD_SIZE`` > 1 in the environment: ``init_process_group`` with ``env://``, backend
      ``nccl`` when ``device_type == "cuda"``, else ``gloo``;
    * otherwise: a single process (rank 0 of 1), nothing is initialized.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()), False)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo()
    rank_, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set; launch with "
                          "torchrun --nproc_per_node=N -m siamgrad train ...")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"process LOCAL_RANK={local} needs GPU {local} but {torch.cuda.device_count()} are "
                              "visible; start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend, init_method="env://", rank=rank_, world_size=world, timeout=TIMEOUT)
    except Exception as e:  # rendezvous failures surface as assorted RuntimeErrors
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ConfigError(f"could not join the {backend} process group as rank {rank_} of {world} ({reason}); "
                          "check MASTER_ADDR/MASTER_PORT or launch with torchrun") from None
    return DistInfo(rank_, world, local, True)


def close(info: DistInfo) -> None:
    """End the process group if ``info`` says this process created it."""
    if info.owner and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# batch norm over the global batch


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    r"""Batch norm whose training-mode statistics are those of the global batch, on any backend.

    Each rank computes its count ``n_r``, mean ``mu_r`` and biased variance ``v_r`` per channel
    (over every dimension but 1), the triples are gathered with :func:`all_gather_with_grad`, and

    .. math:: N = \sum_r n_r,\quad \mu = \sum_r n_r \mu_r / N,\quad
              \sigma^2 = \sum_r n_r \big(v_r + (\mu_r - \mu)^2\big) / N,

    ``y = (x - mu) / sqrt(sigma^2 + eps) * weight + bias``. The gradient flows through the gathered
    statistics to every rank's inputs (the gather's backward sums over ranks), so with DDP's gradient
    averaging the update equals one process's on the whole batch. Running statistics are updated as
    ``torch.nn.BatchNorm`` does with the global ``mu`` and the unbiased ``sigma^2 N / (N - 1)``.
    Outside a process group (or in eval mode) it is ``torch.nn.BatchNorm``. Its state-dict keys are
    those of ``BatchNorm{1,2,3}d``, so checkpoints move freely between the two.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if not (self.training and is_dist() and world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()  # statistics in >= fp32
        var_r, mean_r = torch.var_mean(xf, dim=dims, correction=0)
        n_r = torch.full((1,), float(x.numel() // c), device=x.device, dtype=xf.dtype)
        stats = all_gather_with_grad(torch.cat([mean_r, var_r, n_r])[None])  # [W, 2C + 1]
        counts = stats[:, -1:].detach()
        total = counts.sum()
        mean = (counts * stats[:, :c]).sum(0) / total
        var = (counts * (stats[:, c : 2 * c] + (stats[:, :c] - mean) ** 2)).sum(0) / total
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var.detach() * (total / (total - 1).clamp_min(1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.to(xf.dtype)
        y = (xf - mean.view(shape)) * scale.view(shape)
        if self.bias is not None:
            y = y + self.bias.to(xf.dtype).view(shape)
        return y.to(x.dtype)


def _to_global_bn(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias  # the same Parameter objects
        # the same buffer tensors (a momentum encoder's copies keep pointing at live storage)
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_global_bn(child))
    return out


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Every batch-norm layer of ``module`` (heads included) normalized over the global batch.

    CUDA: ``torch.nn.SyncBatchNorm`` (fused kernels, NCCL); other devices: :class:`GlobalBatchNorm`
    (``torch.nn.SyncBatchNorm`` runs on GPUs only). Parameters are kept (the same objects), so
    build the optimizer after converting or before, either works.
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global_bn(module)


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``module``; gradients are averaged over ranks.

    Buffers are not re-broadcast at every forward: the methods keep their state (F matrices,
    queues, global batch-norm statistics) equal on every rank themselves, and rank 0's copy is
    what checkpoints hold.
    """
    kwargs: dict = {"device_ids": [device.index]} if device.type == "cuda" else {}
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        kwargs["forward_sync_buffers"] = False
    else:
        kwargs["broadcast_buffers"] = False
    return nn.parallel.DistributedDataParallel(module, **kwargs)
