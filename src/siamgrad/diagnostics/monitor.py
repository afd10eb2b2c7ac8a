r"""Seeing inside training: feature statistics, collapse detection, gradient decomposition.

Feature statistics are pure functions of feature tensors. They run in float64 on the CPU (the
inputs are detached and copied), so they are device-independent, exact enough to resolve
eigenvalues many orders of magnitude below the largest, and never touch autograd.

Conventions: ``z`` is a batch of features ``[N, D]`` (rows are samples); ``u = z / ||z||`` its
row-wise l2-normalization. The *feature correlation matrix* is ``F = U^T U / N`` (no centering,
as the ``F`` of UniGrad and DirectPred), so ``trace F = 1`` for normalized features and its
eigenvalues are the squared singular values of ``U`` divided by ``N``.

Measures (each documented at its function):

* :func:`correlation_spectrum` -- eigenvalues of ``F``, descending;
* :func:`effective_rank` -- RankMe (Garrido et al., ICML 2023);
* :func:`alignment`, :func:`uniformity` -- Wang & Isola (ICML 2020);
* :func:`per_dim_std` -- the per-dimension std of normalized features (SimSiam's collapse
  indicator: ``1/sqrt(D)`` for features uniform on the sphere, ``0`` for collapse);
* :func:`predictor_alignment` -- alignment of a linear predictor's eigenspace with ``F``'s
  (DirectPred, Tian et al. 2021);
* :func:`feature_stats` bundles them for logging; :class:`CollapseDetector` watches them.

Gradient decomposition (:func:`decompose`, :func:`gradient_table`): a method's true gradient on a
batch (autograd of its original loss) split into the unified form ``c(-u2^m + lam sum_v s_v v)``
of :mod:`siamgrad.core.gradient`, with the effective ``lambda`` and the cosine between the true
gradient and the method's gradient form. :func:`method_diagnostics` and :class:`TrainingMonitor`
compute everything for a live method inside a training loop; the record keys are ``diag/*`` and
``grad/*`` (read by :mod:`siamgrad.report.html`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import Tensor

from siamgrad.errors import ConfigError, SiamgradError
from siamgrad.core.gradient import batch_correlation, float32, l2n
from siamgrad.core.objectives.asymmetric import directpred_weight
from siamgrad.methods.protocol import Branches, unwrap

__all__ = [
    "correlation_spectrum",
    "matrix_spectrum",
    "effective_rank",
    "alignment",
    "uniformity",
    "per_dim_std",
    "predictor_alignment",
    "feature_stats",
    "diag_record",
    "CollapseDetector",
    "decompose",
    "grad_record",
    "gradient_table",
    "method_diagnostics",
    "method_gradient_table",
    "TrainingMonitor",
    "DIAG_PREFIX",
    "GRAD_PREFIX",
    "GRAD_KEYS",
]

#: Prefix of the feature-statistic keys in ``metrics.jsonl`` records (``diag/eff_rank`` ...).
DIAG_PREFIX = "diag/"
#: Prefix of the gradient-decomposition keys in ``metrics.jsonl`` records (``grad/lambda_eff`` ...).
GRAD_PREFIX = "grad/"


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
    phi = vecs[:, :k]  # [D, k] columns phi_j
    w_phi = w @ phi
    num = (phi * w_phi).sum(dim=0)
    den = w_phi.norm(dim=0)
    cos = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))
    return float(cos.mean())


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
        if spectrum:
            rec[DIAG_PREFIX + "F_spectrum"] = [float(v) for v in matrix_spectrum(correlation)]
    return rec


# --------------------------------------------------------------------------------------------
# collapse


class CollapseDetector:
    r"""Flags complete or dimensional collapse that persists over ``patience`` consecutive checks.

    * complete collapse: ``std_mean < complete_std`` -- the per-dimension std of normalized
      features is ~0, i.e. all features are (nearly) the same vector;
    * dimensional collapse: ``eff_rank < dim_rank_frac * width`` -- the features span only a few
      directions of the ``width``-dimensional space.

    :meth:`check` takes a :func:`feature_stats` dict (keys with or without the ``diag/`` prefix;
    a missing statistic counts as "not collapsed"), and returns a one-line explanation while the
    condition has held for at least ``patience`` checks in a row, else ``None``. Complete collapse
    is reported in preference to dimensional collapse. Every report is also kept in ``events``.
    """

    def __init__(self, width: int, complete_std: float = 1e-4, dim_rank_frac: float = 0.05, patience: int = 3) -> None:
        if width < 1 or patience < 1:
            raise SiamgradError("width and patience must be >= 1")
        self.width = int(width)
        self.complete_std = float(complete_std)
        self.dim_rank_frac = float(dim_rank_frac)
        self.patience = int(patience)
        self.complete_count = 0
        self.dim_count = 0
        self.events: list[tuple[int | None, str, str]] = []  # (step, kind, message)

    @staticmethod
    def _get(stats: Mapping[str, Any], key: str) -> float | None:
        for k in (key, DIAG_PREFIX + key):
            v = stats.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                return float(v)
        return None

    def check(self, stats: Mapping[str, Any]) -> str | None:
        std = self._get(stats, "std_mean")
        rank = self._get(stats, "eff_rank")
        step = stats.get("step")
        complete = std is not None and std < self.complete_std
        dim = rank is not None and rank < self.dim_rank_frac * self.width
        self.complete_count = self.complete_count + 1 if complete else 0
        self.dim_count = self.dim_count + 1 if dim else 0
        where = f" at step {step}" if step is not None else ""
        if self.complete_count >= self.patience:
            msg = (f"complete collapse{where}: per-dimension std of normalized features {std:.2e} < "
                   f"{self.complete_std:.0e} for {self.complete_count} checks (all features nearly identical)")
            self.events.append((step, "complete", msg))
            return msg
        if self.dim_count >= self.patience:
            msg = (f"dimensional collapse{where}: effective rank {rank:.1f} < {self.dim_rank_frac:g} x width "
                   f"{self.width} for {self.dim_count} checks (features span few directions)")
            self.events.append((step, "dimensional", msg))
            return msg
        return None


# --------------------------------------------------------------------------------------------
# gradient decomposition


_TARGET_CHOICES = ("none", "stopgrad", "momentum", "momentum_positive")


def _method_spec(name: str):
    from siamgrad.methods import registry as methods

    if name not in methods.REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(methods.available())}")
    return methods.REGISTRY[name]


def _form_params(name: str, form: str, target: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Resolved options (plus derived ones) of ``name`` in ``form``; ``target`` if that form allows it, else its default."""
    from siamgrad.methods import registry as methods

    spec = _method_spec(name)
    allowed = spec.targets[form]
    opts = {k: v for k, v in options.items() if k not in ("form", "target")}
    resolved = methods.resolve_options(name, form=form, target=target if target in allowed else "auto", **opts)
    return {**resolved, **spec.derived(resolved)}, resolved["target"]


def _fresh_state(spec, params: dict[str, Any], dim: int, form: str, F: Tensor | None, queue: Tensor | None,
                 default_queue: Tensor) -> Any:
    """The method's state for one evaluation, built by its own ``make_state`` and pinned to the given F / queue."""
    with torch.random.fork_rng(devices=[]):  # a queue's random init must not move the caller's RNG
        st = spec.make_state({**params, "queue_size": 1} if "queue_size" in params else params, dim, form)
    if st is None:
        return None
    dtype = default_queue.dtype
    return st.pin(F=None if F is None else F.detach().to(dtype),
                  queue=(queue if queue is not None else default_queue).detach().to(dtype))


def _branches(target: str, z1: Tensor, z2: Tensor, z1_target: Tensor, z2_online: Tensor):
    """Two-view :class:`siamgrad.methods.protocol.Branches` for ``target`` (``z1`` carries the gradient)."""
    online = [z1, z2_online]
    if target == "none":
        positive = negative = online
    elif target == "stopgrad":
        positive = negative = [z1.detach(), z2]
    elif target == "momentum":
        positive = negative = [z1_target, z2]
    else:  # momentum_positive: momentum features in the positive term, negatives from the online branch
        positive = [z1_target, z2]
        negative = [z1.detach(), z2_online]
    return Branches(online=online, predicted=online, positive=positive, negative=negative)


def _grad_wrt(loss: Tensor, z1: Tensor) -> Tensor:
    (g,) = torch.autograd.grad(loss, z1)
    return g.detach() * z1.shape[0]


def _row_norm_mean(x: Tensor) -> float:
    return float(x.norm(dim=1).mean())


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = a.norm(), b.norm()
    if not bool(na > 0) or not bool(nb > 0):
        return float("nan")
    return float((a * b).sum() / (na * nb))


def decompose(
    method: str,
    z1: Tensor,
    z2: Tensor,
    *,
    target: str = "stopgrad",
    z1_target: Tensor | None = None,
    z2_online: Tensor | None = None,
    F: Tensor | None = None,
    queue: Tensor | None = None,
    predictor: Tensor | torch.nn.Module | None = None,
    options: Mapping[str, Any] | None = None,
    return_tensors: bool = False,
) -> dict[str, Any]:
    r"""Split a method's *true* gradient on one batch into the unified form and measure the fit.

    Inputs: ``z1`` the online projector outputs of view 1 ``[N, D]`` (the features whose gradient is
    measured), ``z2`` the target-branch features of view 2. Optional method state: ``z1_target``
    (target-branch features of view 1, default ``z1``), ``z2_online`` (online features of view 2,
    default ``z2``), ``F`` (the moving-average correlation matrix of UniGrad / the asymmetric
    gradient forms / DirectPred's ``F_hat``; held fixed in both forms; default: each form's first
    step, ``F = F_batch``), ``queue`` (MoCo's negatives ``[K, D]``; default: the batch's target
    features of both views), ``predictor`` (BYOL/SimSiam: a matrix ``W_p`` or a module applied to the
    online features; default: DirectPred's linear ``W_p`` of ``F`` with the method's ``eps``, as in
    the paper's analysis), ``options`` (method options, e.g. ``temperature``, ``lam``).
    ``target`` picks the target branch (``none``/``stopgrad``/``momentum``/``momentum_positive``);
    a form that does not allow it uses its default (Barlow Twins' original loss: ``none``).

    Gradients are taken w.r.t. the raw online features ``z1`` -- what backpropagates into the
    projector -- and scaled by ``N`` (per-sample units). For losses on ``u1 = z1/||z1||`` this is
    ``(I - u1 u1^T) g / ||z1||``: radial parts vanish. Computed (all with the method's own code):

    * ``g_true``: autograd of the method's *original* loss (both views, as trained: e.g. SimCLR's
      ``u1`` also acts as a negative and a positive for other anchors when ``target="none"``);
    * ``g_uni``: autograd of its *gradient form* (surrogate loss), the unified form
      ``c(-u2^m + lam sum_v s_v v)``;
    * the parts ``P = g_form(lam=0)`` (positive) and ``Q = g_form(lam=1) - g_form(lam=0)``
      (negative term at unit ``lam``), so ``g_uni = P + lam Q``;
    * the least-squares fit ``g_true ~ a P + b Q`` over the whole batch; ``lambda_eff = b / a``.

    Returns (floats): ``true_norm``, ``unified_norm`` (mean per-row norms of ``g_true``, ``g_uni``);
    ``pos_norm`` = mean ``||a P_i||`` and ``neg_norm`` = mean ``||b Q_i||`` (the true gradient's
    positive and negative parts); ``lambda`` (the form's nominal value; for the adaptive
    asymmetric form the mean over view-1 samples of its per-sample value); ``lambda_eff``;
    ``scale_eff`` (``a``: 1 when the true positive part equals the form's); ``cos_unified`` =
    cos(g_true, g_uni) over the batch (the paper's equivalence claim, measured); ``cos_fit`` =
    cos(g_true, aP + bQ) (>= ``cos_unified`` whenever ``lambda`` is one number, not per sample);
    ``fit_residual`` = ``||g_true - aP - bQ|| / ||g_true||``. Also ``method``, ``target_true``,
    ``target_unified``, ``n``. ``lambda_eff`` is NaN when the positive or the negative part
    vanishes (identical views: ``u2 = u1`` is radial; an isotropic ``F``: ``F u1`` is radial).
    ``return_tensors=True`` adds ``tensors``: ``{"true", "unified", "positive", "negative"}``
    (``[N, D]``: ``g_true``, ``g_uni``, ``P``, ``Q``).

    Multi-process: the objectives gather over processes, so call it on every process.
    """
    spec = _method_spec(method)
    if target not in _TARGET_CHOICES:
        raise ConfigError(f"target={target!r} is invalid; choose one of: {', '.join(_TARGET_CHOICES)}")
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise SiamgradError(f"z1 and z2 must be [N, D] feature batches of the same shape with N >= 2; "
                            f"got {tuple(z1.shape)} and {tuple(z2.shape)}")
    options = dict(options or {})
    dtype = torch.float32
    x1 = z1.detach().to(dtype).clone().requires_grad_(True)
    t2 = z2.detach().to(dtype)
    t1 = (z1_target if z1_target is not None else z1).detach().to(dtype)
    o2 = (z2_online if z2_online is not None else z2).detach().to(dtype)
    Fx = F.detach().to(device=x1.device, dtype=dtype) if F is not None else None
    with float32(x1.device), torch.enable_grad():
        return _decompose(spec, method, x1, t1, t2, o2, target, Fx, queue, predictor, options, return_tensors)


def _decompose(spec, method: str, x1: Tensor, t1: Tensor, t2: Tensor, o2: Tensor, target: str, Fx: Tensor | None,
               queue: Tensor | None, predictor: Any, options: dict[str, Any], return_tensors: bool) -> dict[str, Any]:
    n, dim = x1.shape
    dtype = x1.dtype
    default_queue = torch.cat([t1, t2]).detach()

    # --- the true gradient: the original loss
    p_true, target_true = _form_params(method, "original", target, options)
    b = _branches(target_true, x1, t2, t1, o2)
    if spec.predictor is not None:
        if predictor is None:
            f_pred = Fx if Fx is not None else batch_correlation([l2n(v.detach()) for v in b.negative])
            predictor = directpred_weight(f_pred, p_true["eps"])
        if isinstance(predictor, Tensor):
            w = predictor.detach().to(device=x1.device, dtype=dtype)
            b.predicted = [z @ w.T for z in b.online]
        else:
            b.predicted = [predictor(z) for z in b.online]
    state = _fresh_state(spec, p_true, dim, "original", Fx, queue, default_queue)
    loss_true, _ = spec.evaluate("original", b, p_true, state)
    g_true = _grad_wrt(loss_true, x1)

    # --- the unified form, and its positive / negative parts
    p_uni, target_uni = _form_params(method, "gradient", target, options)

    def form_grad(lam: Any) -> tuple[Tensor, dict]:
        params = {**p_uni, "lam": lam}
        bb = _branches(target_uni, x1, t2, t1, o2)
        st = _fresh_state(spec, params, dim, "gradient", Fx, queue, default_queue)
        loss, logs = spec.evaluate("gradient", bb, params, st)
        return _grad_wrt(loss, x1), logs

    g_uni, _ = form_grad(p_uni["lam"])
    g_pos, _ = form_grad(0.0)
    g_one, _ = form_grad(1.0)
    g_neg = g_one - g_pos
    if isinstance(p_uni["lam"], (int, float)):
        lam_nominal = float(p_uni["lam"])
    else:  # a per-sample lambda ("auto"): recover lambda_i from g_uni = P + lambda_i Q, row by row
        qq = (g_neg * g_neg).sum(dim=1)
        ok = qq > 1e-12 * qq.max().clamp_min(1e-30)
        lam_i = ((g_uni - g_pos) * g_neg).sum(dim=1)[ok] / qq[ok]
        lam_nominal = float(lam_i.mean()) if lam_i.numel() else float("nan")

    # --- least-squares fit  g_true ~ a P + b Q  (float64, on the CPU)
    y = g_true.double().flatten().cpu()
    X = torch.stack([g_pos.double().flatten(), g_neg.double().flatten()], dim=1).cpu()
    col = X.norm(dim=0)
    ref = max(float(y.norm()), float(col.max()), 1e-30)
    usable = col > 1e-6 * ref  # a part that vanishes (e.g. radial) cannot be fitted
    sol = torch.zeros(2, dtype=torch.float64)
    if bool(usable.any()):
        Xu = X[:, usable] / col[usable]
        sol[usable] = torch.linalg.lstsq(Xu, y[:, None]).solution.squeeze(1) / col[usable]
    a, bq = float(sol[0]), float(sol[1])
    fit = X @ sol
    pos_ok, neg_ok = bool(usable[0]), bool(usable[1])
    lambda_eff = bq / a if pos_ok and neg_ok and a != 0 else float("nan")
    ynorm = float(y.norm())
    out: dict[str, Any] = {
        "method": method,
        "target_true": target_true,
        "target_unified": target_uni,
        "n": int(n),
        "true_norm": _row_norm_mean(g_true),
        "unified_norm": _row_norm_mean(g_uni),
        "pos_norm": abs(a) * _row_norm_mean(g_pos),
        "neg_norm": abs(bq) * _row_norm_mean(g_neg),
        "lambda": lam_nominal,
        "lambda_eff": lambda_eff,
        "scale_eff": a if pos_ok else float("nan"),
        "cos_unified": _cos(g_true.double(), g_uni.double()),
        "cos_fit": _cos(y, fit),
        "fit_residual": float((y - fit).norm()) / ynorm if ynorm > 0 else float("nan"),
    }
    if return_tensors:
        out["tensors"] = {"true": g_true, "unified": g_uni, "positive": g_pos, "negative": g_neg}
    return out


#: The float keys of :func:`decompose` logged by :func:`grad_record` (as ``grad/<key>``).
GRAD_KEYS = ("true_norm", "unified_norm", "pos_norm", "neg_norm", "lambda", "lambda_eff", "scale_eff",
             "cos_unified", "cos_fit", "fit_residual")


def grad_record(method: str, z1: Tensor, z2: Tensor, **kwargs: Any) -> dict[str, float]:
    """:func:`decompose` as a metrics record: ``{"grad/<key>": float}`` for the keys of :data:`GRAD_KEYS`."""
    d = decompose(method, z1, z2, **kwargs)
    return {GRAD_PREFIX + k: float(d[k]) for k in GRAD_KEYS}


def gradient_table(
    z1: Tensor,
    z2: Tensor,
    methods: Iterable[str] | None = None,
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> str:
    """A plain-text table of :func:`decompose` for several methods (default: all) on the same batch.

    ``options`` maps a method name to its options; other keyword arguments (``target``, ``F``,
    ``queue``, ``z1_target``, ``z2_online``, ``predictor``) go to every :func:`decompose` call.
    """
    from siamgrad.methods import registry as registry

    names = list(methods) if methods is not None else registry.available()
    cols = [("method", "method", 13), ("target", "target_true", 10), ("form tgt", "target_unified", 10),
            ("|g_true|", "true_norm", 10), ("|pos|", "pos_norm", 10), ("|neg|", "neg_norm", 10),
            ("lambda", "lambda", 10), ("lambda_eff", "lambda_eff", 10), ("cos(uni)", "cos_unified", 9),
            ("cos(fit)", "cos_fit", 9)]
    head = " ".join(h.rjust(w) if i > 2 else h.ljust(w) for i, (h, _, w) in enumerate(cols))
    lines = [head, "-" * len(head)]
    for name in names:
        d = decompose(name, z1, z2, options=(options or {}).get(name), **kwargs)
        cells = []
        for i, (_, key, w) in enumerate(cols):
            v = d[key]
            if isinstance(v, float):
                text = "nan" if not math.isfinite(v) else (f"{v:.4f}" if key.startswith("cos") else f"{v:.4g}")
                cells.append(text.rjust(w))
            else:
                cells.append(str(v).ljust(w))
        lines.append(" ".join(cells))
    lines.append(f"N={z1.shape[0]}, D={z1.shape[1]}; norms are mean per-sample norms of N x dL/dz1; "
                 "pos/neg: the true gradient's least-squares parts a*P and b*Q; lambda_eff = b/a")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# diagnostics of a live method (what the trainer calls)


@contextlib.contextmanager
def _left_untouched(m: torch.nn.Module) -> Iterator[None]:
    """Restore every batch-norm running statistic and ``last_features`` of ``m`` on exit."""
    saved = [(b, b.detach().clone()) for mod in m.modules()
             if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for b in mod.buffers()]
    last = getattr(m, "last_features", None)
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)
        if hasattr(m, "last_features"):
            m.last_features = last


def _unwrap(method: torch.nn.Module, views: Any, who: str) -> torch.nn.Module:
    m = unwrap(method)  # DistributedDataParallel and similar wrappers
    if not all(hasattr(m, k) for k in ("branches", "state_diagnostics", "name", "target", "options")):
        raise SiamgradError(f"{who} needs a method built by siamgrad.methods.build")
    if not isinstance(views, (list, tuple)) or len(views) < 2:
        raise SiamgradError(f"{who} needs a list of at least 2 view batches [N, C, H, W]")
    return m


def method_diagnostics(method: torch.nn.Module, views: list[Tensor], *, gradients: bool = True,
                       spectrum: bool = True) -> dict[str, Any]:
    r"""Feature statistics (``diag/*``) and gradient decomposition (``grad/*``) of a live method on a batch.

    ``method``: a :class:`siamgrad.methods.registry.SiameseMethod` (or a wrapper with ``.module``, e.g.
    DistributedDataParallel); ``views``: the augmented batches of a training step (views 0 and 1
    are used). Runs one extra forward without gradients and leaves the method as it found it
    (batch-norm running statistics and ``last_features`` restored; F matrices, queues untouched).

    * ``diag/*``: :func:`diag_record` of the online projector outputs of the two views, with
      ``diag/F_spectrum`` (the method's moving-average ``F`` or DirectPred's ``F_hat``, once it has
      been updated) and ``diag/pred_align`` (DirectPred: its predictor vs ``F_hat``);
    * ``grad/*``: :func:`grad_record` with the method's own target branch, options, ``F``, queue and
      (BYOL/SimSiam) trained predictor.

    Cost: a forward of two views plus a few objective evaluations on ``[N, D]`` features and an
    SVD of ``[2N, D]`` (float64, CPU); log it every few hundred steps. Under multi-process training
    call it on every process (the objectives gather) and write the record on rank 0.
    """
    m = _unwrap(method, views, "method_diagnostics")
    with _left_untouched(m):
        with torch.no_grad():
            b = m.branches(list(views[:2]))
            z1, z2o = b.online[0].detach().float(), b.online[1].detach().float()
            t1, t2 = b.positive[0].detach().float(), b.positive[1].detach().float()
        st = m.state_diagnostics()
        F, predictor_w, queue = st.get("F"), st.get("predictor"), st.get("queue")
        rec = diag_record(z1, z2o, spectrum=spectrum, predictor=predictor_w, correlation=F)
        if gradients:
            rec.update(grad_record(m.name, z1, t2, target=m.target, z1_target=t1, z2_online=z2o, F=F, queue=queue,
                                   predictor=m.predictor, options=m.options))
    return rec


def method_gradient_table(method: torch.nn.Module, views: list[Tensor], methods: Iterable[str] | None = None,
                          **kwargs: Any) -> str:
    """:func:`gradient_table` on the online projector outputs of a live method's views 0 and 1.

    Every method is evaluated with a stop-gradient target on the same features (its ``F`` / queue
    from the batch itself unless given in ``kwargs``), so the rows compare the gradient *forms*
    on this model's features. The method is left untouched (see :func:`method_diagnostics`).
    """
    m = _unwrap(method, views, "method_gradient_table")
    with _left_untouched(m), torch.no_grad():
        b = m.branches(list(views[:2]))
        z1, z2 = b.online[0].detach().float(), b.online[1].detach().float()
    return gradient_table(z1, z2, methods, **{"target": "stopgrad", **kwargs})


class TrainingMonitor:
    """What a training loop needs for diagnostics: one call per diagnostic step, one record back.

    ``monitor.record(method, views, step)`` returns ``{"step": step, "diag/...": ..., "grad/...": ...}``
    (see :func:`method_diagnostics`) and, when the :class:`CollapseDetector` (built on the first
    call with the projector width) fires, ``"diag/collapse": message``. ``collapse_messages`` keeps
    every message.
    """

    def __init__(self, *, gradients: bool = True, spectrum: bool = True, complete_std: float = 1e-4,
                 dim_rank_frac: float = 0.05, patience: int = 3) -> None:
        self.gradients, self.spectrum = gradients, spectrum
        self.detector_args = dict(complete_std=complete_std, dim_rank_frac=dim_rank_frac, patience=patience)
        self.detector: CollapseDetector | None = None
        self.collapse_messages: list[str] = []

    def record(self, method: torch.nn.Module, views: list[Tensor], step: int) -> dict[str, Any]:
        rec: dict[str, Any] = {"step": int(step)}
        rec.update(method_diagnostics(method, views, gradients=self.gradients, spectrum=self.spectrum))
        if self.detector is None:
            self.detector = CollapseDetector(int(rec[DIAG_PREFIX + "width"]), **self.detector_args)
        msg = self.detector.check(rec)
        if msg is not None:
            rec[DIAG_PREFIX + "collapse"] = msg
            self.collapse_messages.append(msg)
        return rec
