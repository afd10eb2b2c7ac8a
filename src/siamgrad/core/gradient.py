r"""The unified gradient of Siamese self-supervised learning (UniGrad, arXiv 2112.05141).

Notation: ``u1`` is the l2-normalized online feature of one view of an image, ``u2^m`` the
l2-normalized feature of another view of the same image from the *target branch* (stop-gradient
copy or momentum encoder), ``V`` a set of "negative" features and ``N`` the batch size. Every
method studied in the paper has a gradient w.r.t. ``u1`` of the form

.. math::  \partial L / \partial u_1 \;=\; c\,\Big(-u_2^m + \lambda \sum_{v \in V} s_v\, v\Big)

with a positive term ``-u2^m``, a negative term (a weighted sum over ``V``) balanced by
``lambda`` and an overall scale ``c`` (``1/tau`` for InfoNCE, ``2`` for the decorrelation losses,
``1`` otherwise). The *gradient form* of a method is trained by handing autograd a chosen
gradient ``g`` through the surrogate loss

.. math::  L_{sur} = \frac1N \sum_i \langle \mathrm{stopgrad}(g_i), u_i \rangle, \qquad
           \partial L_{sur} / \partial u_i = g_i / N,

which autograd then carries back through the l2-normalization ``u = z/||z||`` (projecting it on
the tangent space, ``(I - u u^T) g / ||z||``) and the network.

This module holds the pieces every family shares: :func:`surrogate_loss`, :func:`unified_gradient`,
l2-normalization, float32 islands under autocast, view pairs and the batch correlation matrix.
The moving average of ``F`` that UniGrad and DirectPred keep is method state
(:mod:`siamgrad.methods.states`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from siamgrad import distributed as D

__all__ = [
    "UnifiedGradient",
    "surrogate_loss",
    "gradient_form_loss",
    "unified_gradient",
    "l2n",
    "upcast",
    "float32",
    "ordered_pairs",
    "view_pairs",
    "batch_correlation",
]


@dataclass(frozen=True)
class UnifiedGradient:
    """A method's gradient in the unified form ``c * (-u2^m + lam * sum_v s_v v)``, described in words.

    Used by ``siamgrad methods`` to print one row per method.
    """

    family: str
    positive: str
    negatives: str
    weights: str
    lam: str
    scale: str = "1"


def surrogate_loss(z: Tensor, g: Tensor) -> Tensor:
    """``mean_i <stopgrad(g_i), z_i>`` for ``z, g`` of shape [N, D]; its gradient w.r.t. ``z`` is ``g / N``."""
    return (g.detach() * z).sum(dim=1).mean()


def gradient_form_loss(u: Tensor, g: Tensor, value: Tensor) -> Tensor:
    """:func:`surrogate_loss` whose *value* is ``mean(value)`` while its gradient stays ``g / N``.

    ``value`` ([N]) is the per-sample potential whose gradient w.r.t. ``u`` is ``g`` when the
    stop-gradient quantities (target, negatives, F, weights) are held fixed. The surrogate's own
    value ``mean <g, u>`` carries no meaning (it is 0 for scale-invariant losses); the potential
    gives a loss curve to watch.
    """
    s = surrogate_loss(u, g)
    return s + (value.detach().mean() - s.detach())


def unified_gradient(positive: Tensor, negative_term: Tensor, lam: float | Tensor, scale: float = 1.0) -> Tensor:
    """``scale * (-positive + lam * negative_term)``, all detached ([N, D]).

    ``negative_term`` is the already weighted sum ``sum_v s_v v`` per row; ``lam`` may be a float
    or a per-row tensor of shape [N, 1].
    """
    return (scale * (-positive.detach() + lam * negative_term.detach())).detach()


def l2n(x: Tensor) -> Tensor:
    """Row-wise l2-normalization ``x / max(||x||, 1e-12)``."""
    return F.normalize(x, dim=-1)


def upcast(x: Tensor) -> Tensor:
    """``x`` in float32 when it is a half-precision tensor (bf16/fp16 under autocast), else unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@contextlib.contextmanager
def float32(device: torch.device | str) -> Iterator[None]:
    """Disable autocast inside the block so the objectives compute in float32 (cast inputs with ``.float()``)."""
    device_type = torch.device(device).type
    if device_type not in ("cuda", "cpu", "xpu", "mps"):
        yield
        return
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def ordered_pairs(m: int) -> list[tuple[int, int]]:
    """All ordered view pairs ``(a, b)``, ``a != b``: anchor view ``a``, target view ``b``."""
    return [(a, b) for a in range(m) for b in range(m) if a != b]


def view_pairs(n_global: int, n_local: int = 0, n_mixed: int = 0) -> list[tuple[int, int]]:
    """The (online view, target view) pairs of a multi-crop step (SwAV / DINO pairing).

    Online views are the ``n_global`` global crops, then ``n_local`` local crops, then ``n_mixed``
    mixed copies of the first global crops; targets are global crops only. A global crop (and its
    mixed copy) is paired with every *other* global crop, a local crop with every global crop:
    ``G (G - 1) + L G + K (G - 1)`` pairs. Without local and mixed views: :func:`ordered_pairs`.
    """
    g = n_global
    pairs = ordered_pairs(g)
    pairs += [(g + l, c) for l in range(n_local) for c in range(g)]
    pairs += [(g + n_local + k, c) for k in range(n_mixed) for c in range(g) if c != k]
    return pairs


@torch.no_grad()
def batch_correlation(features: list[Tensor]) -> Tensor:
    """``F_batch = (1/M) sum_a (Z_a^T Z_a) / N`` over the M views and the global batch (detached).

    ``Z_a`` are [n, D] local batches (same ``n`` on every rank); the per-rank means are averaged
    over processes, which equals the mean over the global batch.
    """
    zs = [upcast(z.detach()) for z in features]
    local = sum(z.T @ z for z in zs) / (len(zs) * zs[0].shape[0])
    return D.all_reduce_mean(local)
