r"""Gradient decomposition: a method's true gradient on a batch split into the unified form.

:func:`decompose` takes a method's true gradient on a batch (autograd of its original loss) and
splits it into the unified form ``c(-u2^m + lam sum_v s_v v)`` of :mod:`siamgrad.core.gradient`,
with the effective ``lambda`` and the cosine between the true gradient and the method's
gradient form. Everything is computed with the method's own objective and state code from the
registry, on feature tensors: no model, no training loop. :func:`grad_record` gives the
``grad/`` keys of ``metrics.jsonl`` (read by :mod:`siamgrad.report.html`), :func:`gradient_table`
a plain-text table over several methods.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from siamgrad.core.gradient import batch_correlation, float32, l2n
from siamgrad.core.objectives.asymmetric import directpred_weight
from siamgrad.errors import ConfigError, SiamgradError
from siamgrad.methods import registry
from siamgrad.methods.protocol import Branches

__all__ = ["decompose", "grad_record", "gradient_table", "GRAD_KEYS", "GRAD_PREFIX"]

#: Prefix of the gradient-decomposition keys in ``metrics.jsonl`` records (``grad/lambda_eff`` ...).
GRAD_PREFIX = "grad/"


_TARGET_CHOICES = ("none", "stopgrad", "momentum", "momentum_positive")


def _method_spec(name: str):
    if name not in registry.REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(registry.available())}")
    return registry.REGISTRY[name]


def _form_params(name: str, form: str, target: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Resolved options (plus derived ones) of ``name`` in ``form``; ``target`` if that form allows it, else its default."""
    spec = _method_spec(name)
    allowed = spec.targets[form]
    opts = {k: v for k, v in options.items() if k not in ("form", "target")}
    resolved = registry.resolve_options(name, form=form, target=target if target in allowed else "auto", **opts)
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
