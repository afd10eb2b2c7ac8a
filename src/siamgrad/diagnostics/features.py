r"""Feature statistics: pure functions of feature tensors.

They run in float64 on the CPU (the inputs are detached and copied), so they are
device-independent, exact enough to resolve eigenvalues many orders of magnitude below the
largest, and never touch autograd.

Conventions: ``z`` is a batch of features ``[N, D]`` (rows are samples); ``u = z / ||z||`` its
row-wise l2-normalization. The *feature correlation matrix* is ``F = U^T U / N`` (no centering,
as the ``F`` of UniGrad and DirectPred), so ``trace F = 1`` for normalized features and its
eigenvalues are the squared singular values of ``U`` divided by ``N``.

Measures (each documented at its function):

* :func:`correlation_spectrum` -- eigenvalues of ``F``, descending; :func:`matrix_spectrum` --
  those of a given matrix (UniGrad's moving-average ``F``);
* :func:`effective_rank` -- RankMe (Garrido et al., ICML 2023);
* :func:`alignment`, :func:`uniformity` -- Wang & Isola (ICML 2020);
* :func:`per_dim_std` -- the per-dimension std of normalized features (SimSiam's collapse
  indicator: ``1/sqrt(D)`` for features uniform on the sphere, ``0`` for collapse);
* :func:`predictor_alignment` -- alignment of a linear predictor's eigenspace with ``F``'s
  (DirectPred, Tian et al. 2021);
* :func:`feature_stats` bundles them for logging; :func:`diag_record` is the same with the
  ``diag/`` keys of ``metrics.jsonl`` (read by :mod:`siamgrad.report.html`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from siamgrad.errors import SiamgradError

__all__ = [
    "correlation_spectrum",
    "matrix_spectrum",
    "effective_rank",
    "alignment",
    "uniformity",
    "per_dim_std",
    "predictor_alignment",
    "chance_alignment",
    "feature_stats",
    "diag_record",
    "DIAG_PREFIX",
]

#: Prefix of the feature-statistic keys in ``metrics.jsonl`` records (``diag/eff_rank`` ...).
DIAG_PREFIX = "diag/"


def _one_thread(fn):
    """Run ``fn`` with one intra-op CPU thread: LAPACK's eigen/singular-value routines on the
    moderate matrices used here are many times slower multi-threaded when cores are shared."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        threads = torch.get_num_threads()
        if threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


def _f64(x: Tensor) -> Tensor:
    """A detached float64 CPU copy of ``x``."""
    return x.detach().to(device="cpu", dtype=torch.float64)


def _rows(z: Tensor, name: str = "z") -> Tensor:
    if z.ndim != 2:
        raise SiamgradError(f"{name} must be a [N, D] batch of features, got shape {tuple(z.shape)}")
    return z


def _normalize(z: Tensor) -> Tensor:
    return torch.nn.functional.normalize(z, dim=1)


# --------------------------------------------------------------------------------------------
# spectra and rank


def correlation_spectrum(z: Tensor, *, normalize: bool = True) -> Tensor:
    r"""Eigenvalues (descending, float64, clamped at 0) of ``F = U^T U / N`` for features ``z`` [N, D].

    ``U = l2n(z)`` when ``normalize`` (the default), else ``z`` as given. ``D`` eigenvalues are
    returned (``D - N`` of them zero when ``N < D``); they sum to ``trace F`` (1 when normalized).
    """
    u = _f64(_rows(z))
    if normalize:
        u = _normalize(u)
    f = u.T @ u / u.shape[0]
    return matrix_spectrum(f)


@_one_thread
def matrix_spectrum(f: Tensor) -> Tensor:
    """Eigenvalues (descending, float64, clamped at 0) of a symmetric PSD matrix such as UniGrad's ``F``."""
    if f.ndim != 2 or f.shape[0] != f.shape[1]:
        raise SiamgradError(f"expected a square matrix, got shape {tuple(f.shape)}")
    m = _f64(f)
    m = 0.5 * (m + m.T)
    return torch.linalg.eigvalsh(m).flip(0).clamp_min(0.0)


def _rankme_from_singular_values(s: Tensor, eps: float) -> float:
    total = s.sum()
    if not bool(total > 0):
        return 0.0
    p = s / total + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


@_one_thread
def effective_rank(z: Tensor, *, normalize: bool = False, eps: float = 1e-7) -> float:
    r"""RankMe (Garrido et al. 2023): ``exp(-sum_k p_k log p_k)``, ``p_k = s_k / sum_j s_j + eps``.

    ``s_k`` are the singular values of ``z`` [N, D] (of ``l2n(z)`` when ``normalize``). The value
    lies in ``[1, min(N, D)]`` up to ``eps``: ``min(N, D)`` for equal singular values, 1 for a
    rank-one batch (complete collapse). An all-zero batch gives 0.
    """
    u = _f64(_rows(z))
    if normalize:
        u = _normalize(u)
    return _rankme_from_singular_values(torch.linalg.svdvals(u), eps)


# --------------------------------------------------------------------------------------------
# alignment and uniformity


def alignment(u1: Tensor, u2: Tensor, alpha: float = 2.0) -> float:
    r"""Wang & Isola's alignment ``mean_i ||u1_i - u2_i||_2^alpha`` of positive pairs (rows of [N, D]).

    Expects l2-normalized features (it does not normalize); 0 for identical views, 4 (alpha=2) for
    opposite ones.
    """
    a, b = _f64(_rows(u1, "u1")), _f64(_rows(u2, "u2"))
    if a.shape != b.shape:
        raise SiamgradError(f"u1 and u2 must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(u: Tensor, t: float = 2.0, max_samples: int = 2048) -> float:
    r"""Wang & Isola's uniformity ``log mean_{i<j} exp(-t ||u_i - u_j||^2)`` over the distinct pairs.

    Expects l2-normalized features. Computed as a log-mean-exp (stable). Only the first
    ``max_samples`` rows are used (the cost is quadratic). Identical features give 0 (the
    maximum); the more spread on the sphere, the more negative (about ``-t * 2`` for uniform
    features in high dimension, since ``||u_i - u_j||^2 -> 2``).
    """
    x = _f64(_rows(u, "u"))[:max_samples]
    n = x.shape[0]
    if n < 2:
        raise SiamgradError("uniformity needs at least 2 samples")
    d2 = torch.pdist(x).pow(2)
    return float(torch.logsumexp(-t * d2, dim=0) - math.log(d2.numel()))


def per_dim_std(z: Tensor, *, normalize: bool = True) -> Tensor:
    r"""Per-dimension standard deviation over the batch (unbiased) of ``l2n(z)`` [N, D] -> [D] (float64).

    SimSiam's collapse indicator: for features uniform on the unit sphere every dimension has
    std ``1/sqrt(D)``; complete collapse (all rows identical) gives 0. Summaries: ``.mean()``,
    ``.min()``; ``mean * sqrt(D)`` is ~1 for well-spread features.
    """
    u = _f64(_rows(z))
    if normalize:
        u = _normalize(u)
    if u.shape[0] < 2:
        raise SiamgradError("per_dim_std needs at least 2 samples")
    return u.std(dim=0, unbiased=True)


# --------------------------------------------------------------------------------------------
# predictor / F alignment (DirectPred)


@_one_thread
def predictor_alignment(wp: Tensor, f: Tensor, k: int | None = None, rel_tol: float = 1e-6) -> float:
    r"""How well a linear predictor's eigenspace matches that of ``F``: 1 = perfectly aligned.

    Measure: with ``F = sum_j s_j phi_j phi_j^T`` (``s`` descending) and the top-``k`` eigenvectors
    ``phi_j``,

    .. math:: A = \frac1k \sum_{j\le k} \cos(W_p \phi_j, \phi_j)
                = \frac1k \sum_{j \le k} \frac{\phi_j^T W_p \phi_j}{\|W_p \phi_j\|}.

    ``cos(W_p phi, phi) = 1`` exactly when ``phi`` is an eigenvector of ``W_p`` with a positive
    eigenvalue, so ``A = 1`` iff every one of ``F``'s top eigenvectors is an eigenvector of ``W_p``
    (e.g. ``W_p`` any polynomial of ``F`` with positive values on its spectrum, as DirectPred's
    ``W_p = U diag(p) U^T``); a ``W_p`` whose eigenvectors are rotated away from ``F``'s scores
    lower, and a negative eigen-direction scores -1.

    ``k`` defaults to the number of eigenvalues above ``rel_tol * s_max`` (eigenvectors of a null
    space are arbitrary). Inside a block of tied eigenvalues the eigenvectors are an arbitrary
    basis; the measure is then basis-dependent unless ``W_p`` maps the whole block to itself (a
    function of ``F`` does). An eigenvector in ``W_p``'s null space scores 0.
    """
    w, m = _f64(wp), _f64(f)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape != m.shape:
        raise SiamgradError(f"wp and f must be square matrices of the same shape, got {tuple(w.shape)} and {tuple(m.shape)}")
    s, vecs = torch.linalg.eigh(0.5 * (m + m.T))
    s, vecs = s.flip(0), vecs.flip(1)
    if k is None:
        k = int((s > rel_tol * s[0].clamp_min(torch.finfo(s.dtype).tiny)).sum().clamp_min(1))
    k = max(1, min(int(k), s.numel()))
    return _mean_cosine(w, vecs[:, :k])


def _mean_cosine(w: Tensor, phi: Tensor) -> float:
    """The mean over the columns ``phi_j`` of ``cos(W phi_j, phi_j)`` (0 for a column W maps to 0)."""
    w_phi = w @ phi
    num = (phi * w_phi).sum(dim=0)
    den = w_phi.norm(dim=0)
    cos = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))
    return float(cos.mean())


def chance_alignment(wp: Tensor, f: Tensor, rel_tol: float = 1e-6, seed: int = 0) -> float:
    """:func:`predictor_alignment` with ``F``'s top eigenvectors replaced by as many directions of a
    random orthonormal basis (seeded): the score a predictor gets whatever ``F`` is.

    A predictor near a multiple of the identity scores near 1 against any basis, so alignment with
    ``F`` means something only above this chance level.

    >>> chance_alignment(torch.eye(4), torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0])))
    1.0
    """
    w, m = _f64(wp), _f64(f)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape != m.shape:
        raise SiamgradError(f"wp and f must be square matrices of the same shape, got {tuple(w.shape)} and {tuple(m.shape)}")
    s = torch.linalg.eigvalsh(0.5 * (m + m.T)).flip(0)
    k = int((s > rel_tol * s[0].clamp_min(torch.finfo(s.dtype).tiny)).sum().clamp_min(1))
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(w.shape[0], k, generator=gen, dtype=w.dtype))
    return _mean_cosine(w, q.to(w.device))


# --------------------------------------------------------------------------------------------
# bundles for logging


@_one_thread
def feature_stats(z1: Tensor, z2: Tensor | None = None, *, spectrum: bool = False) -> dict[str, Any]:
    r"""Feature statistics of a batch for logging, computed on l2-normalized features.

    ``z1``, ``z2``: the two views' features ``[N, D]`` (projector outputs, raw). Both views
    together (``2N`` rows) feed the batch statistics. Keys:

    * ``width``: ``D``; ``n``: number of rows used;
    * ``eff_rank``: RankMe of the normalized features; ``eff_rank_frac``: ``eff_rank / min(n, D)``;
    * ``std_mean``, ``std_min``: mean / min over dimensions of :func:`per_dim_std`;
      ``std_ratio``: ``std_mean * sqrt(D)`` (~1 uniform on the sphere, 0 collapsed);
    * ``align``: :func:`alignment` of the two views (only with ``z2``);
    * ``uniform``: :func:`uniformity` of the normalized features;
    * ``spec_top1_frac``: largest eigenvalue of ``F`` over its trace (1 = all mass on one direction);
    * ``spec_dims90``: how many eigen-directions carry 90% of the trace;
    * ``spectrum`` (when ``spectrum=True``): the eigenvalues of ``F``, descending, as a list.

    All values are plain Python floats/ints/lists (JSON-ready).
    """
    u1 = _normalize(_f64(_rows(z1, "z1")))
    u = u1
    out: dict[str, Any] = {}
    if z2 is not None:
        u2 = _normalize(_f64(_rows(z2, "z2")))
        if u2.shape != u1.shape:
            raise SiamgradError(f"z1 and z2 must have the same shape, got {tuple(u1.shape)} and {tuple(u2.shape)}")
        u = torch.cat([u1, u2], dim=0)
    n, d = u.shape
    out["width"] = d
    out["n"] = n
    sv = torch.linalg.svdvals(u)
    out["eff_rank"] = _rankme_from_singular_values(sv, 1e-7)
    out["eff_rank_frac"] = out["eff_rank"] / min(n, d)
    std = per_dim_std(u, normalize=False)
    out["std_mean"] = float(std.mean())
    out["std_min"] = float(std.min())
    out["std_ratio"] = float(std.mean()) * math.sqrt(d)
    if z2 is not None:
        out["align"] = alignment(u1, u2)
    out["uniform"] = uniformity(u)
    # eigenvalues of F = U^T U / n are the squared singular values / n (padded with zeros to D)
    eig = torch.zeros(d, dtype=torch.float64)
    eig[: sv.numel()] = sv.pow(2) / n
    trace = float(eig.sum())
    out["spec_top1_frac"] = float(eig[0]) / trace if trace > 0 else float("nan")
    cum = torch.cumsum(eig, 0) / max(trace, 1e-300)
    out["spec_dims90"] = int((cum < 0.9 - 1e-12).sum()) + 1
    if spectrum:
        out["spectrum"] = [float(v) for v in eig]
    return out


def diag_record(z1: Tensor, z2: Tensor | None = None, *, spectrum: bool = True,
                predictor: Tensor | None = None, correlation: Tensor | None = None) -> dict[str, Any]:
    """:func:`feature_stats` with keys prefixed ``diag/`` (ready to merge into a metrics record).

    With ``predictor`` (a linear predictor ``W_p``) and ``correlation`` (the ``F`` it is compared
    with), adds ``diag/pred_align`` (:func:`predictor_alignment`). With ``correlation`` alone,
    adds ``diag/F_spectrum`` (the eigenvalues of that matrix, e.g. UniGrad's moving-average ``F``).
    """
    rec = {DIAG_PREFIX + k: v for k, v in feature_stats(z1, z2, spectrum=spectrum).items()}
    if correlation is not None:
        if predictor is not None:
            rec[DIAG_PREFIX + "pred_align"] = predictor_alignment(predictor, correlation)
            rec[DIAG_PREFIX + "pred_align_chance"] = chance_alignment(predictor, correlation)
        if spectrum:
            rec[DIAG_PREFIX + "F_spectrum"] = [float(v) for v in matrix_spectrum(correlation)]
    return rec
