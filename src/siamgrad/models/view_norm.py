"""Per-view batch-norm statistics in one forward pass.

The reference implementations forward each augmented view separately, so every BatchNorm layer
normalizes one view's batch with that view's statistics. siamgrad stacks the M views into one
batch ``[M * n, ...]`` (one forward is faster); inside ``view_groups(module, M)`` every batch-norm
layer of ``module`` normalizes each of the M consecutive slices of ``n`` samples with its own
statistics and updates its running statistics once per slice, in slice order. Outputs, gradients
and running statistics (``num_batches_tracked`` too) are those of M separate forwards; outside
the context (or with ``groups=1``) the layers are ordinary, i.e. joint statistics over the union.

Any ``torch.nn.modules.batchnorm._BatchNorm`` works (BatchNorm1d/2d/3d, ``SyncBatchNorm``,
:class:`siamgrad.distributed.GlobalBatchNorm`): each slice goes through the layer's own forward.
On entry the layer's class is swapped in place for a subclass that splits the batch, so its
parameters, buffers and state-dict keys stay as they are; a layer replaced later (``sync_bn``
converts the layers after the method is built) is swapped again at the next ``view_groups``.
In eval mode with running statistics the layer uses no batch statistics and is left whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from siamgrad.errors import SiamgradError

__all__ = ["view_groups", "per_view_layers"]


class _PerView:
    """Mixin placed before a batch-norm class: split the batch into ``view_groups`` slices."""

    view_groups: int = 1

    def forward(self, x: Tensor) -> Tensor:
        groups = self.view_groups
        uses_batch_stats = self.training or self.running_mean is None  # type: ignore[attr-defined]
        if groups == 1 or not uses_batch_stats:
            return super().forward(x)  # type: ignore[misc]
        n = x.shape[0] // groups
        if n * groups != x.shape[0] or n == 0:
            raise SiamgradError(
                f"per-view batch norm: a batch of {x.shape[0]} does not split into {groups} views of "
                "equal size; give every view the same batch size (or method.view_bn=joint)"
            )
        outs = []
        for chunk in x.split(n):  # in view order: the running statistics see view 1 first
            outs.append(super().forward(chunk))  # type: ignore[misc]
        return torch.cat(outs, dim=0)


_CLASSES: dict[type, type] = {}


def _per_view_class(cls: type) -> type:
    if issubclass(cls, _PerView):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"PerView{cls.__name__}", (_PerView, cls), {"__module__": __name__})
    return _CLASSES[cls]


def per_view_layers(module: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``module``, each switched (in place) to its per-view class."""
    layers = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    for m in layers:
        m.__class__ = _per_view_class(type(m))
    return layers


@contextlib.contextmanager
def view_groups(module: nn.Module, groups: int) -> Iterator[None]:
    """Inside: every batch-norm layer of ``module`` normalizes ``groups`` equal consecutive slices of
    its batch separately (``groups=1``: the whole batch). Nested uses restore the outer value."""
    if not isinstance(groups, int) or groups < 1:
        raise SiamgradError(f"view_groups: groups={groups!r} is invalid; pass a positive integer")
    layers = per_view_layers(module)
    previous = [m.__dict__.get("view_groups") for m in layers]
    for m in layers:
        m.view_groups = groups
    try:
        yield
    finally:
        for m, p in zip(layers, previous):
            if p is None:
                del m.view_groups  # back to the class default, 1
            else:
                m.view_groups = p
