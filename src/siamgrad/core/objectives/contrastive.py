r"""Contrastive objectives: InfoNCE with batch negatives (SimCLR) or queue negatives (MoCo v2).

All inputs are raw features ([n, D], any dtype); they are l2-normalized here. ``tau`` is the
temperature. For one anchor ``q`` with positive ``k+`` and negatives ``k_j``:

.. math:: \ell(q) = -\log \frac{e^{q\cdot k_+/\tau}}{e^{q\cdot k_+/\tau} + \sum_j e^{q\cdot k_j/\tau}},
          \qquad \partial\ell/\partial q = \frac1\tau\Big(-k_+ + \sum_{v\in\{k_+\}\cup\{k_j\}} p_v\, v\Big),

``p_v = softmax_v(q . v / tau)``: the unified form with ``s_v = p_v``, ``lambda = 1`` and scale
``1/tau`` (plus, in SimCLR, the terms from ``q`` being a negative of the other anchors).

Distributed: batch negatives are gathered from all processes (with gradient when they carry one),
and every process averages over its local anchors; see :mod:`siamgrad.distributed`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from siamgrad import distributed as D
from siamgrad.core.gradient import l2n, unified_gradient

__all__ = [
    "batch_contrastive_loss",
    "nt_xent_loss",
    "queue_contrastive_loss",
    "batch_contrastive_gradient",
    "queue_contrastive_gradient",
]


def _gather(x: Tensor) -> Tensor:
    return D.all_gather_with_grad(x) if x.requires_grad else D.all_gather(x)


def batch_contrastive_loss(anchor: Tensor, positive: Tensor, negatives: list[Tensor], tau: float) -> Tensor:
    r"""InfoNCE of ``anchor`` against its ``positive`` with the *other images* of the batch as negatives.

    ``anchor``, ``positive``: [n, D]. ``negatives``: list of [n, D] batches (one per view used as
    negative source); for anchor ``i`` every row ``j != i`` (over the global batch) of every
    negative batch is a negative, rows of the same image are excluded. Returns
    ``mean_i l(anchor_i)``.

    SimCLR's NT-Xent for views ``z1, z2`` is the mean of this loss in both directions with
    ``negatives=[z1, z2]`` (anchor ``z1_i``: negatives ``z1_j, z2_j``, ``j != i``): see
    :func:`nt_xent_loss`.
    """
    q = l2n(anchor)
    k = l2n(positive)
    n = q.shape[0]
    pos = (q * k).sum(dim=1, keepdim=True) / tau
    offset = D.rank() * n
    idx = torch.arange(n, device=q.device)
    neg_logits = []
    for neg in negatives:
        v = _gather(l2n(neg))
        logits = q @ v.T / tau
        same_image = torch.zeros_like(logits, dtype=torch.bool)
        same_image[idx, offset + idx] = True
        neg_logits.append(logits.masked_fill(same_image, float("-inf")))
    logits = torch.cat([pos, *neg_logits], dim=1)
    return -(pos.squeeze(1) - torch.logsumexp(logits, dim=1)).mean()


def nt_xent_loss(z1: Tensor, z2: Tensor, tau: float) -> Tensor:
    """SimCLR's NT-Xent: the mean over the 2N anchors of both views, 2N - 2 negatives each.

    Two orthogonal samples seen identically in both views, temperature 1: each anchor has its
    positive at cosine 1 and two negatives at 0, so the loss is ``log(1 + 2/e)``.

    >>> import math
    >>> round(float(nt_xent_loss(torch.eye(2), torch.eye(2), tau=1.0)), 4), round(math.log(1 + 2 / math.e), 4)
    (0.5514, 0.5514)
    """
    return 0.5 * (
        batch_contrastive_loss(z1, z2, [z1, z2], tau) + batch_contrastive_loss(z2, z1, [z2, z1], tau)
    )


def queue_contrastive_loss(anchor: Tensor, positive: Tensor, queue: Tensor, tau: float) -> Tensor:
    """MoCo's InfoNCE: positive key per anchor, the (detached, l2-normalized) queue [K, D] as negatives."""
    q = l2n(anchor)
    k = l2n(positive)
    pos = (q * k).sum(dim=1, keepdim=True) / tau
    neg = q @ queue.detach().T / tau
    logits = torch.cat([pos, neg], dim=1)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def batch_contrastive_gradient(
    anchor: Tensor, positive: Tensor, negatives: list[Tensor], tau: float, lam: float, with_value: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    r"""SimCLR's gradient form (UniGrad Table 1, batch negatives), w.r.t. the normalized anchor ``u1``:

    .. math:: g = \frac1\tau\Big(-u_2^m + \lambda \sum_{v\in V} s_v v\Big), \quad
              s_v = \mathrm{softmax}_{v\in V}(u_1\cdot v/\tau),

    ``V`` = all rows of all ``negatives`` batches over the global batch (including the anchor's own
    image, as in the paper's code), normalized and detached. Returns ``g`` ([n, D]), and with
    ``with_value`` also the potential ``-u1.u2^m/tau + lam logsumexp_v(u1.v/tau)`` per row.
    """
    u = l2n(anchor.detach())
    t = l2n(positive.detach())
    bank = torch.cat([D.all_gather(l2n(v.detach())) for v in negatives], dim=0)
    logits = u @ bank.T / tau
    g = unified_gradient(t, torch.softmax(logits, dim=1) @ bank, lam, scale=1.0 / tau)
    if not with_value:
        return g
    return g, -(u * t).sum(dim=1) / tau + lam * torch.logsumexp(logits, dim=1)


@torch.no_grad()
def queue_contrastive_gradient(
    anchor: Tensor, positive: Tensor, queue: Tensor, tau: float, lam: float, with_value: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    r"""MoCo's gradient form (UniGrad Table 1, queue negatives), w.r.t. the normalized anchor ``u1``:

    .. math:: g = \frac1\tau\Big(-u_2^m + \lambda \sum_{v\in \{u_2^m\}\cup Q} s_v v\Big), \quad
              s_v = \mathrm{softmax}_v(u_1\cdot v/\tau).

    With ``lam = 1`` this is exactly the InfoNCE gradient w.r.t. the normalized query (and the
    potential returned with ``with_value``, ``-u1.u2^m/tau + lam logsumexp_v(u1.v/tau)``, its value).
    """
    u = l2n(anchor.detach())
    t = l2n(positive.detach())
    qd = queue.detach()
    logits = torch.cat([(u * t).sum(dim=1, keepdim=True), u @ qd.T], dim=1) / tau
    s = torch.softmax(logits, dim=1)
    neg_term = s[:, :1] * t + s[:, 1:] @ qd
    g = unified_gradient(t, neg_term, lam, scale=1.0 / tau)
    if not with_value:
        return g
    return g, -(u * t).sum(dim=1) / tau + lam * torch.logsumexp(logits, dim=1)
