"""Label subsets and held-out splits for evaluation, class-balanced and seeded.

* :func:`balanced_label_subset`: the labeled images of a few-label evaluation; the same number
  of images from every class (``round(fraction * N / C)``, at least 1, all of a class that has
  fewer), drawn without replacement by a generator seeded with ``seed``.
* :func:`validation_split`: a validation split carved from the training images (``fraction`` of
  every class, seeded), so that settings are chosen without looking at the test split.
"""

from __future__ import annotations

import torch

from siamgrad.errors import ConfigError


def _check_fraction(fraction: float, what: str) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ConfigError(f"{what} must be in (0, 1], got {fraction!r}; e.g. 0.1 for 10%")
    return float(fraction)


def balanced_label_subset(labels: torch.Tensor, fraction: float, seed: int = 0,
                          num_classes: int | None = None) -> torch.Tensor:
    """Sorted indices of ``round(fraction * N / C)`` (>= 1) images of every class."""
    fraction = _check_fraction(fraction, "label fraction")
    labels = labels.to(torch.int64)
    num_classes = num_classes or int(labels.max()) + 1
    per_class = max(1, round(fraction * len(labels) / num_classes))
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c, as_tuple=False).flatten()
        if members.numel():
            picked.append(members[torch.randperm(members.numel(), generator=gen)[:per_class]])
    return torch.sort(torch.cat(picked)).values


def validation_split(labels: torch.Tensor, fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_indices, val_indices)``: ``round(fraction * n_c)`` images of every class held out.

    A class of one image stays in training. Both index tensors are sorted and disjoint, and
    together they cover every image once.
    """
    fraction = _check_fraction(fraction, "validation fraction")
    labels = labels.to(torch.int64)
    gen = torch.Generator().manual_seed(int(seed) + 7_777)  # not the same draw as the label subsets
    val = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c, as_tuple=False).flatten()
        k = min(members.numel() - 1, round(fraction * members.numel()))
        if k > 0:
            val.append(members[torch.randperm(members.numel(), generator=gen)[:k]])
    val_idx = torch.sort(torch.cat(val)).values if val else torch.zeros(0, dtype=torch.int64)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep, as_tuple=False).flatten(), val_idx
