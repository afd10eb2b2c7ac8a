r"""UniGrad (Tao et al., CVPR 2022): positive term plus a correlation-matrix negative term.

With ``u1`` the normalized online feature, ``u2^m`` the normalized target feature of the other
view and ``F`` the moving average of the target features' correlation matrix
(``F <- rho F + (1 - rho) (1/M) sum_a U_a^T U_a / N``, detached, all-reduced; first step
``F = F_batch``; see :class:`siamgrad.methods.states.CorrelationEMA`):

.. math:: L = \mathbb E\big[-\cos(u_1, u_2^m) + \tfrac\lambda2\, u_1^T F u_1\big], \qquad
          g = \partial L/\partial u_1 \cdot N = -u_2^m + \lambda F u_1
          = -u_2^m + \lambda \sum_{v} \frac{u_1\cdot v}{N'} v

(the sum over the ``N'`` features averaged into ``F``). The loss form and the gradient form have
the same gradient; ``lambda = 100`` and ``rho = 0.99`` in the reference configuration.
"""

from __future__ import annotations

import torch
from torch import Tensor

from siamgrad.core.gradient import l2n, unified_gradient

__all__ = ["unigrad_loss", "unigrad_gradient"]


def unigrad_loss(online: Tensor, target: Tensor, F: Tensor, lam: float) -> Tensor:
    """``mean_i [-cos(u1_i, u2^m_i) + (lam/2) u1_i^T F u1_i]`` with ``u = l2n(.)``; ``target`` and ``F`` detached.

    With ``F = I`` the negative term is ``lam/2`` for every unit vector:

    >>> z = torch.randn(4, 8)
    >>> abs(float(unigrad_loss(z, z, torch.eye(8), lam=2.0))) < 1e-6  # -1 + 2/2
    True
    """
    u = l2n(online)
    t = l2n(target.detach())
    pos = -(u * t).sum(dim=1)
    neg = 0.5 * lam * ((u @ F.detach()) * u).sum(dim=1)
    return (pos + neg).mean()


@torch.no_grad()
def unigrad_gradient(
    online: Tensor, target: Tensor, F: Tensor, lam: float, with_value: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """``g = -u2^m + lam F u1`` (rows), for :func:`siamgrad.core.gradient.surrogate_loss` on ``l2n(online)``.

    With ``with_value`` also the per-row loss ``-u1.u2^m + (lam/2) u1^T F u1``.
    """
    u = l2n(online.detach())
    t = l2n(target.detach())
    fu = u @ F.detach()
    g = unified_gradient(t, fu, lam)
    if not with_value:
        return g
    return g, -(u * t).sum(dim=1) + 0.5 * lam * (u * fu).sum(dim=1)
