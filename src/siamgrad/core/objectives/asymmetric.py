r"""Asymmetric-network objectives: BYOL / SimSiam cosine losses and the DirectPred predictor.

Original losses (``p`` the online prediction, ``z`` the target projection, both raw):

* BYOL / DirectPred: ``l(p, z) = mean_i (2 - 2 cos(p_i, z_i))``, summed over the two directions.
* SimSiam: ``D(p, z) = -mean_i cos(p_i, z_i)``, averaged over the two directions.

DirectPred (Tian et al., ICML 2021): the predictor is linear and *set*, not trained. ``F_hat``
is a moving average of ``E[f f^T]`` over the online projector outputs of all views (detached,
no centering, ``rho = 0.3``, first step ``F_hat = F_batch``); every ``freq`` steps
``F_hat = U diag(s) U^T`` and ``W_p = U diag(p) U^T`` with
``p_j = max(sqrt(max(s_j, 0) / max_k s_k) + eps, clamp)``.

Gradient form (UniGrad Table 1). With ``u1`` the normalized online projection, ``u2^m`` the
normalized target, ``F`` the moving-average correlation of the target features, ``s_max`` its
largest eigenvalue, ``W_p`` the DirectPred predictor of ``F`` and ``F~ = F / s_max + eps^2 I``
(``W_p^2`` without its cross term), the gradient of ``-cos(W_p u1, u2^m)`` w.r.t. ``u1`` is

.. math:: g = \frac{1}{\|W_p u_1\|}\Big(-P u_2^m + \lambda\, \tilde F u_1\Big),\qquad
          \lambda = \frac{(W_p u_1)\cdot u_2^m}{u_1^T \tilde F u_1}

with ``P = W_p`` (``positive_predictor="directpred"``) or ``P = I`` (``"identity"``); ``lambda``
is this per-sample value (``lam="auto"``) or a fixed number. ``F~ u1 = sum_v (u1 . v / N') v / s_max
+ eps^2 u1``: negatives = the features averaged into ``F``, weights their dot products with ``u1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from siamgrad.core.gradient import l2n

__all__ = [
    "byol_loss",
    "simsiam_loss",
    "directpred_weight",
    "precondition",
    "asymmetric_gradient",
]


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """``mean_i (2 - 2 cos(p_i, z_i))`` with ``z`` detached (one direction).

    >>> z = torch.randn(4, 8)
    >>> abs(float(byol_loss(z, z))) < 1e-6, round(float(byol_loss(z, -z)), 5)  # aligned: 0; opposite: 4
    (True, 4.0)
    """
    return (2.0 - 2.0 * (l2n(p) * l2n(z.detach())).sum(dim=1)).mean()


def simsiam_loss(p: Tensor, z: Tensor) -> Tensor:
    """``-mean_i cos(p_i, z_i)`` with ``z`` detached (one direction).

    >>> z = torch.randn(4, 8)
    >>> round(float(simsiam_loss(z, 3 * z)), 6)  # the cosine ignores the scale
    -1.0
    """
    return -(l2n(p) * l2n(z.detach())).sum(dim=1).mean()


def _eigh(F: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh``; on CPU with one thread (multi-threaded LAPACK is much slower on the small
    matrices used here when cores are shared; docs/benchmarks.md)."""
    if F.device.type != "cpu":
        return torch.linalg.eigh(F)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(F)
    finally:
        torch.set_num_threads(threads)


def _spectrum(F: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Eigen-decomposition of the symmetric ``F``: eigenvalues, eigenvectors, and ``max(s_max, tiny)``."""
    s, U = _eigh(F)
    s_max = s.max().clamp_min(torch.finfo(s.dtype).tiny)
    return s, U, s_max


@torch.no_grad()
def directpred_weight(F: Tensor, eps: float, clamp: float = 1e-4) -> Tensor:
    """DirectPred's predictor ``W_p = U diag(p) U^T``, ``p_j = max(sqrt(max(s_j,0)/s_max) + eps, clamp)``."""
    s, U, s_max = _spectrum(F.detach())
    p = (s.clamp_min(0) / s_max).sqrt().add(eps).clamp_min(clamp)
    return (U * p) @ U.T


@torch.no_grad()
def precondition(F: Tensor, eps: float, clamp: float = 1e-4) -> tuple[Tensor, Tensor]:
    """``(W_p, F~)`` for the asymmetric gradient form: DirectPred's ``W_p`` and ``F / s_max + eps^2 I``."""
    s, U, s_max = _spectrum(F.detach())
    p = (s.clamp_min(0) / s_max).sqrt().add(eps).clamp_min(clamp)
    eye = torch.eye(F.shape[0], dtype=F.dtype, device=F.device)
    return (U * p) @ U.T, F.detach() / s_max + eps**2 * eye


@torch.no_grad()
def asymmetric_gradient(
    online: Tensor,
    target: Tensor,
    Wp: Tensor,
    Ft: Tensor,
    lam: float | None = None,
    identity_positive: bool = False,
    with_value: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """The gradient form above: returns ``(g, lambda_i)`` ([n, D], [n, 1]); ``lam=None`` is the adaptive lambda.

    With ``with_value`` also the per-row potential ``(-u1.P u2^m + (lambda_i/2) u1^T F~ u1) / ||W_p u1||``
    (norm and lambda_i held fixed); for the adaptive lambda and ``P = W_p`` it is ``-cos(W_p u1, u2^m) / 2``.
    """
    u = l2n(online.detach())
    t = l2n(target.detach())
    wu = u @ Wp.T
    norm = wu.norm(dim=1, keepdim=True)
    positive = t if identity_positive else t @ Wp.T
    ftu = u @ Ft.T
    if lam is None:
        lam_i = (wu * t).sum(dim=1, keepdim=True) / (u * ftu).sum(dim=1, keepdim=True)
    else:
        lam_i = torch.full_like(norm, float(lam))
    g = (-positive + lam_i * ftu) / norm
    if not with_value:
        return g, lam_i
    value = (-(u * positive).sum(dim=1, keepdim=True) + 0.5 * lam_i * (u * ftu).sum(dim=1, keepdim=True)) / norm
    return g, lam_i, value.squeeze(1)
