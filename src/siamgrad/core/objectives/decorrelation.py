r"""Feature-decorrelation objectives: Barlow Twins, VICReg, their multi-view forms and gradient forms.

Every function first gathers its inputs over processes (with gradient), so the loss is the
global-batch loss on every rank (see :mod:`siamgrad.distributed`). ``B`` is the global batch.

Barlow Twins (Zbontar et al. 2021), views standardized per dimension over the batch
(``h = (z - mean) / sqrt(var + eps)``, biased variance, as ``BatchNorm1d(affine=False)``):

.. math:: C = H_1^T H_2 / B,\qquad L = \sum_k (1 - C_{kk})^2 + \lambda_{BT} \sum_{k\ne l} C_{kl}^2 .

With ``l2=True`` the features are l2-normalized before the standardization (the small-projector
recipe of arXiv 2312.10725, used with :func:`width_scaled_lambda`).

Multi-view Barlow Twins (M >= 3 views, arXiv 2312.10725): standardize all views jointly (one
mean/variance over the M*B rows), ``hbar = mean_a H_a``;
``L = (1/M) sum_a sum_k (1 - (H_a^T hbar / B)_kk)^2 + lambda_BT sum_{k!=l} (hbar^T hbar / B)_kl^2``.

VICReg (Bardes et al. 2022) for M >= 2 views, each view against the leave-one-out mean of the
others ``zbar_{-a} = (sum_b z_b - z_a) / (M - 1)``:

* invariance ``s = (1/M) sum_a mean_{i,k} (z_a - zbar_{-a})_{ik}^2``,
* variance ``v = (1/M) sum_a (1/D) sum_k relu(gamma - sqrt(Var_k(z_a) + eps))`` (unbiased Var),
* covariance ``c = (2/M) sum_a (1/D) sum_{k!=l} Cov(z_a)_{kl}^2`` (unbiased Cov),

``L = w_s s + w_v v + w_c c``; for M = 2 this is exactly the paper's loss
(variance averaged over the two views, covariance summed).

Multi-crop and mixing (local crops, mixed views; :mod:`siamgrad.methods.objectives`): Barlow Twins
is the two-view loss averaged over the (online view, global target) pairs; VICReg's invariance is
:func:`vicreg_invariance` averaged over those pairs, its variance and covariance
(:func:`vicreg_variance_covariance`) taken over every online view. For G = 2 global crops alone
both are the two-view losses. The gradient forms below are already pairwise.

Gradient forms (UniGrad Table 1, l2-normalization instead of batch standardization), w.r.t. the
normalized online feature ``u1`` (view a) with target ``u2^m`` (view b):

* Barlow Twins, the cross-correlation's weighting matrix replaced by identity:
  ``g = 2 (-u2^m + lam sum_j (u2^m . v2_j / B) v1_j)`` -- ``v2_j`` the target (negative-source)
  features of view b, ``v1_j`` the online features of view a (the rows of ``C``), detached.
* VICReg with its last gradient term (the diagonal/variance correction, nearly radial for
  l2-normalized features) dropped: ``g = 2 (-u2^m + lam C (u1 - mu))`` with
  ``C = sum_j (v1_j - mu)(v1_j - mu)^T / B`` the covariance of the online features of view a,
  i.e. negatives ``v1_j - mu`` weighted by ``(u1 - mu) . (v1_j - mu) / B``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from siamgrad import distributed as D
from siamgrad.core.gradient import l2n, unified_gradient

__all__ = [
    "WIDTH_LAMBDA_TABLE",
    "width_scaled_lambda",
    "batch_standardize",
    "barlow_twins_terms",
    "barlow_twins_loss",
    "barlow_twins_multiview_terms",
    "vicreg_terms",
    "vicreg_invariance",
    "vicreg_variance_covariance",
    "vicreg_loss",
    "barlow_twins_gradient",
    "vicreg_gradient",
]

#: Off-diagonal weight vs projector width for l2-normalized, batch-standardized features (arXiv 2312.10725).
WIDTH_LAMBDA_TABLE: tuple[tuple[int, float], ...] = (
    (128, 0.04),
    (256, 0.02),
    (512, 0.01),
    (1024, 0.002),
    (2048, 0.001),
    (8192, 0.0008),
)


def width_scaled_lambda(d: int) -> float:
    """lambda(d) from :data:`WIDTH_LAMBDA_TABLE`, log-linear between entries, clamped to the ends outside."""
    if d <= WIDTH_LAMBDA_TABLE[0][0]:
        return WIDTH_LAMBDA_TABLE[0][1]
    for (d0, l0), (d1, l1) in zip(WIDTH_LAMBDA_TABLE, WIDTH_LAMBDA_TABLE[1:]):
        if d <= d1:
            t = (math.log(d) - math.log(d0)) / (math.log(d1) - math.log(d0))
            return math.exp((1 - t) * math.log(l0) + t * math.log(l1))
    return WIDTH_LAMBDA_TABLE[-1][1]


def _gather(x: Tensor) -> Tensor:
    return D.all_gather_with_grad(x) if x.requires_grad else D.all_gather(x)


def batch_standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """``(z - mean) / sqrt(var + eps)`` per column over the rows (biased variance)."""
    mu = z.mean(dim=0)
    var = z.var(dim=0, unbiased=False)
    return (z - mu) / torch.sqrt(var + eps)


def _off_diagonal_sq(c: Tensor) -> Tensor:
    return c.pow(2).sum() - torch.diagonal(c).pow(2).sum()


def barlow_twins_terms(z1: Tensor, z2: Tensor, l2: bool = False, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """``(sum_k (1 - C_kk)^2, sum_{k!=l} C_kl^2)`` for two views [n, D]."""
    a, b = _gather(z1), _gather(z2)
    if l2:
        a, b = l2n(a), l2n(b)
    h1, h2 = batch_standardize(a, eps), batch_standardize(b, eps)
    c = h1.T @ h2 / h1.shape[0]
    on = (1.0 - torch.diagonal(c)).pow(2).sum()
    return on, _off_diagonal_sq(c)


def barlow_twins_multiview_terms(zs: list[Tensor], l2: bool = False, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Multi-view Barlow Twins terms ``(diagonal, off-diagonal)`` (see the module docstring)."""
    gathered = [_gather(z) for z in zs]
    if l2:
        gathered = [l2n(z) for z in gathered]
    joint = torch.cat(gathered, dim=0)
    mu = joint.mean(dim=0)
    std = torch.sqrt(joint.var(dim=0, unbiased=False) + eps)
    hs = [(z - mu) / std for z in gathered]
    n = hs[0].shape[0]
    hbar = torch.stack(hs).mean(dim=0)
    on = torch.stack([(1.0 - (h * hbar).sum(dim=0) / n).pow(2).sum() for h in hs]).mean()
    off = _off_diagonal_sq(hbar.T @ hbar / n)
    return on, off


def barlow_twins_loss(zs: list[Tensor], lambd: float, l2: bool = False, eps: float = 1e-5) -> Tensor:
    """Barlow Twins for two views, the multi-view form for three or more.

    Two identical views whose standardized dimensions are uncorrelated give a cross-correlation of
    exactly the identity, hence no loss:

    >>> z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    >>> abs(float(barlow_twins_loss([z, z], lambd=0.005))) < 1e-6
    True
    """
    if len(zs) == 2:
        on, off = barlow_twins_terms(zs[0], zs[1], l2, eps)
    else:
        on, off = barlow_twins_multiview_terms(zs, l2, eps)
    return on + lambd * off


def vicreg_terms(zs: list[Tensor], gamma: float = 1.0, eps: float = 1e-4) -> tuple[Tensor, Tensor, Tensor]:
    """VICReg's ``(invariance, variance, covariance)`` terms for M >= 2 views (module docstring)."""
    gathered = [_gather(z) for z in zs]
    m = len(gathered)
    total = torch.stack(gathered).sum(dim=0)
    inv = torch.stack([F.mse_loss(z, (total - z) / (m - 1)) for z in gathered]).mean()
    return (inv, *_variance_covariance(gathered, gamma, eps))


def vicreg_invariance(z: Tensor, target: Tensor) -> Tensor:
    """``mean_{i,k} (z - target)_{ik}^2`` over the global batch: the invariance term of one view pair."""
    return F.mse_loss(_gather(z), _gather(target))


def vicreg_variance_covariance(zs: list[Tensor], gamma: float = 1.0, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """VICReg's variance and covariance terms of the views ``zs`` (module docstring), on their own."""
    return _variance_covariance([_gather(z) for z in zs], gamma, eps)


def _variance_covariance(gathered: list[Tensor], gamma: float, eps: float) -> tuple[Tensor, Tensor]:
    var_terms, cov_terms = [], []
    for z in gathered:
        n, d = z.shape
        std = torch.sqrt(z.var(dim=0) + eps)
        var_terms.append(F.relu(gamma - std).mean())
        zc = z - z.mean(dim=0)
        cov_terms.append(_off_diagonal_sq(zc.T @ zc / (n - 1)) / d)
    return torch.stack(var_terms).mean(), 2.0 * torch.stack(cov_terms).mean()


def vicreg_loss(zs: list[Tensor], sim_weight: float, var_weight: float, cov_weight: float) -> Tensor:
    """``w_s * invariance + w_v * variance + w_c * covariance``."""
    inv, var, cov = vicreg_terms(zs)
    return sim_weight * inv + var_weight * var + cov_weight * cov


@torch.no_grad()
def barlow_twins_gradient(
    online: Tensor, target: Tensor, negative: Tensor, lam: float, with_value: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """``g = 2 (-u2^m + lam sum_j (u2^m . v2_j / B) v1_j)``; ``v1 = online`` (view a), ``v2 = negative`` (view b).

    With ``with_value`` also the per-row potential ``2 (-u1.u2^m + lam sum_j (u2^m.v2_j / B)(u1.v1_j))``.
    """
    u_bank = D.all_gather(l2n(online.detach()))
    v_bank = D.all_gather(l2n(negative.detach()))
    t = l2n(target.detach())
    weights = t @ v_bank.T / v_bank.shape[0]
    neg = weights @ u_bank
    g = unified_gradient(t, neg, lam, scale=2.0)
    if not with_value:
        return g
    u = l2n(online.detach())
    return g, 2.0 * (-(u * t).sum(dim=1) + lam * (u * neg).sum(dim=1))


@torch.no_grad()
def vicreg_gradient(
    online: Tensor, target: Tensor, lam: float, with_value: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """``g = 2 (-u2^m + lam C (u1 - mu))``, ``C``/``mu`` the covariance/mean of the online view over the batch.

    With ``with_value`` also the per-row potential ``2 (-u1.u2^m + (lam/2) (u1-mu)^T C (u1-mu))``.
    """
    u = l2n(online.detach())
    bank = D.all_gather(u)
    mu = bank.mean(dim=0)
    centered = bank - mu
    cov = centered.T @ centered / bank.shape[0]
    t = l2n(target.detach())
    neg = (u - mu) @ cov
    g = unified_gradient(t, neg, lam, scale=2.0)
    if not with_value:
        return g
    return g, 2.0 * (-(u * t).sum(dim=1) + 0.5 * lam * ((u - mu) * neg).sum(dim=1))
