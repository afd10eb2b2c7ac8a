r"""Image mixing inside the batch: CutMix and Mixup with a Beta(alpha, alpha) ratio.

One draw per mixed view and step, for the whole (global) batch, as the reference CutMix and Mixup
code does: a ratio ``lam ~ Beta(alpha, alpha)`` and a permutation ``perm`` of the batch; every image
``x_i`` is mixed with its partner ``x_perm(i)`` of the same view:

* Mixup (Zhang et al. 2018): ``x_i' = r x_i + (1 - r) x_perm(i)`` with ``r = lam``;
* CutMix (Yun et al. 2019, the ``rand_bbox`` of its reference code): a box of side
  ``(floor(W sqrt(1 - lam)), floor(H sqrt(1 - lam)))`` centred at a uniform integer pixel, clipped
  at the border, is pasted from the partner; the ratio is recomputed from the clipped box,
  ``r = 1 - box area / (H W)``, so ``r`` is exactly the share of the image's own pixels.

With probability ``1 - p`` a step is not mixed (:func:`draw_step_mix` returns None). The draws come
from the step's ``torch.Generator`` (through a NumPy generator seeded from it: torch's Beta
sampler takes no generator), so a seed fixes them and every process of a torchrun draws the same.
How a method trains on the mixed images (the ratio-weighted targets) is in
:mod:`siamgrad.methods.siamese` and docs/methods.md ("Multi-crop and mixing").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from siamgrad import distributed as D
from siamgrad.errors import ConfigError

__all__ = ["MIX_KINDS", "MixParams", "cutmix_box", "draw_mix", "draw_step_mix", "mix_images", "partner_rows"]

MIX_KINDS = ("none", "cutmix", "mixup")


@dataclass(frozen=True)
class MixParams:
    """One mixing draw for a batch: ``kind``, the ratio ``r`` of each image's own pixels, the partner
    of every sample of the global batch (``perm`` [B]) and, for CutMix, the pasted box
    ``(top, left, height, width)``."""

    kind: str
    ratio: float
    perm: torch.Tensor
    box: tuple[int, int, int, int] | None = None


def cutmix_box(lam: float, height: int, width: int, cy: int, cx: int) -> tuple[int, int, int, int]:
    """CutMix's box for ``lam`` centred at pixel ``(cy, cx)``: sides ``floor(H sqrt(1 - lam))`` and
    ``floor(W sqrt(1 - lam))``, clipped at the border; returns ``(top, left, height, width)``."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    top, bottom = min(max(cy - ch // 2, 0), height), min(max(cy + ch // 2, 0), height)
    left, right = min(max(cx - cw // 2, 0), width), min(max(cx + cw // 2, 0), width)
    return top, left, bottom - top, right - left


def draw_mix(kind: str, alpha: float, batch: int, height: int, width: int,
             generator: torch.Generator | None = None) -> MixParams:
    """A mixing draw for a batch of ``batch`` images of ``height x width``."""
    if kind not in ("cutmix", "mixup"):
        raise ConfigError(f"augment.mix={kind!r} is not a mixing; choose cutmix or mixup (or none)")
    if not alpha > 0:
        raise ConfigError(f"augment.mix_alpha={alpha} must be > 0 (the Beta(alpha, alpha) parameter)")
    rng = _numpy_rng(generator)
    perm = torch.randperm(batch, generator=generator)
    lam = float(rng.beta(alpha, alpha))
    if kind == "mixup":
        return MixParams(kind, lam, perm)
    box = cutmix_box(lam, height, width, int(rng.integers(height)), int(rng.integers(width)))
    return MixParams(kind, 1.0 - box[2] * box[3] / (height * width), perm, box)


def draw_step_mix(kind: str, alpha: float, p: float, views: int, batch: int, height: int, width: int,
                  generator: torch.Generator | None = None) -> list[MixParams] | None:
    """One step's draws: with probability ``p`` one :func:`draw_mix` per view (``views`` of them),
    else None (the step is not mixed)."""
    if kind == "none" or _numpy_rng(generator).random() >= p:
        return None
    return [draw_mix(kind, alpha, batch, height, width, generator) for _ in range(views)]


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A NumPy generator seeded from ``generator`` (torch's Beta sampler takes no generator)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


def _local_partners(perm: torch.Tensor, n: int) -> torch.Tensor:
    """The partners (global indices) of this process's ``n`` samples."""
    start = D.rank() * n
    return perm[start : start + n]


def partner_rows(t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Rows of ``t`` ([n, ...], this process's share of the batch) at every sample's partner,
    gathered over processes (with gradient when ``t`` carries one)."""
    full = D.all_gather_with_grad(t) if t.requires_grad else D.all_gather(t)
    return full[_local_partners(perm, t.shape[0]).to(t.device)]


@torch.no_grad()
def mix_images(x: torch.Tensor, params: MixParams) -> torch.Tensor:
    """The mixed images of ``x`` ([n, C, H, W], this process's share): Mixup's convex combination
    ``r x + (1 - r) x[perm]`` or CutMix's partner box pasted into ``x``."""
    partner = partner_rows(x, params.perm)
    if params.kind == "mixup":
        return torch.lerp(partner, x, params.ratio)
    assert params.box is not None
    top, left, h, w = params.box
    out = x.clone()
    out[:, :, top : top + h, left : left + w] = partner[:, :, top : top + h, left : left + w]
    return out
