r"""The method registry: method name -> objective + target branch + heads + defaults.

A method is data: one :class:`MethodSpec` per name (a few lines), built into one generic
:class:`SiameseMethod`. Every method has two *forms*:

* ``form="original"`` -- the paper's loss;
* ``form="gradient"`` -- its unified-gradient form (UniGrad Table 1), trained through
  :func:`siamgrad.core.gradient.surrogate_loss`: ``g = c (-u2^m + lam sum_v s_v v)``.

and a *target branch* (UniGrad Table 2), the source of ``u2^m`` and of the negatives:

=====================  ==========================================================================
``target``             meaning
=====================  ==========================================================================
``none``               no target branch: both views carry gradients (SimCLR/Barlow Twins/VICReg)
``stopgrad``           shared weights, target features detached
``momentum``           EMA encoder ``m = 1 - (1 - m0)(cos(pi t/T) + 1)/2``, positives and negatives
``momentum_positive``  momentum features in the positive term only; negatives / F from the
                       (detached) online branch
``auto``               the paper's branch for the chosen form (first entry of the table below)
=====================  ==========================================================================

Allowed targets (the first is what ``auto`` picks):

==============  ===============================================  =========================================
method          original                                          gradient
==============  ===============================================  =========================================
simclr          none, stopgrad, momentum, momentum_positive       stopgrad, momentum, momentum_positive
moco            momentum, stopgrad, momentum_positive             momentum, stopgrad, momentum_positive
byol            momentum, stopgrad                                momentum, stopgrad, momentum_positive
simsiam         stopgrad, momentum                                stopgrad, momentum, momentum_positive
directpred      momentum, stopgrad                                momentum, stopgrad, momentum_positive
barlow_twins    none                                              stopgrad, momentum, momentum_positive
vicreg          none                                              stopgrad, momentum
unigrad         momentum, stopgrad, momentum_positive             momentum, stopgrad, momentum_positive
==============  ===============================================  =========================================

Views: all M >= 2 views go through the backbone in one forward (``torch.cat`` then split).
Barlow Twins (M >= 3) and VICReg have genuine multi-view losses (see
:mod:`siamgrad.core.objectives.decorrelation`); every other loss and every gradient form is averaged
over the M(M-1) *ordered* view pairs (anchor a, target b) -- for symmetric losses with
``target="none"`` this equals the average over unordered pairs. BYOL and DirectPred keep the
paper's *sum* of the two directions (2 x the ordered-pair mean). MoCo enqueues the
negative-source keys of the first view each step (after the optimizer step).

Loss values of gradient forms: the returned loss has the gradient of the surrogate
``mean_i <g_i, u_i>`` and, as its value, the potential whose gradient is ``g`` with the
stop-gradient quantities held fixed (e.g. UniGrad's own loss, InfoNCE for the contrastive forms);
see :func:`siamgrad.core.gradient.gradient_form_loss`. Logs: ``loss``, ``pos_sim`` (mean cosine of
online and positive features over the view pairs), ``lambda`` for gradient forms (the mean
per-sample value for the adaptive asymmetric form), loss parts, and ``momentum`` (the last EMA
coefficient) for momentum targets.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from siamgrad.errors import ConfigError, SiamgradError
from siamgrad.core.gradient import (
    CorrelationEMA,
    UnifiedGradient,
    batch_correlation,
    float32,
    gradient_form_loss,
    l2n,
    ordered_pairs,
    upcast,
)
from siamgrad.models.heads import HeadSpec, mlp
from siamgrad.core.objectives import asymmetric as asym
from siamgrad.core.objectives import contrastive as con
from siamgrad.core.objectives import decorrelation as dec
from siamgrad.core.objectives import unigrad as uni

__all__ = [
    "Branches",
    "Option",
    "MethodSpec",
    "SiameseMethod",
    "REGISTRY",
    "available",
    "default_options",
    "build",
    "describe",
    "format_table",
]

FORMS = ("original", "gradient")
TARGETS = ("auto", "none", "stopgrad", "momentum", "momentum_positive")
MOMENTUM_TARGETS = ("momentum", "momentum_positive")


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Option:
    """One validated method option: ``kind`` is ``choice``, ``int``, ``float``, ``bool`` or ``float_or_auto``.

    Numeric bounds are inclusive unless ``low_open``/``high_open``.
    """

    default: Any
    kind: str
    doc: str = ""
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def expected(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.kind == "bool":
            return "true or false"
        lo = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        hi = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        rng = " and ".join(x for x in (lo, hi) if x)
        base = {"int": "an integer", "float": "a number", "float_or_auto": "'auto' or a number"}[self.kind]
        return f"{base} {rng}".strip()

    def validate(self, method: str, name: str, value: Any) -> Any:
        """Return the normalized value or raise a one-line :class:`ConfigError`."""

        def bad() -> ConfigError:
            return ConfigError(f"method.{name}={value!r} is invalid for {method}: expected {self.expected()}")

        if self.kind == "choice":
            if value not in self.choices:
                raise bad()
            return value
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise bad()
        if self.kind == "float_or_auto" and value == "auto":
            return "auto"
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, str):
            try:
                value = float(value) if self.kind != "int" else int(value)
            except ValueError:
                raise bad() from None
        if self.kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise bad()
        elif not isinstance(value, (int, float)):
            raise bad()
        else:
            value = float(value)
        if not math.isfinite(value):
            raise bad()
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise bad()
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise bad()
        return value


# predictor depth of the trained-predictor methods: 2 (the papers' MLP), 1 (a trained linear
# predictor, DirectPred's comparison) or 0 (no predictor: the collapse demonstration of SimSiam)
_PRED_LAYERS = Option(2, "int", "predictor layers: 2 = MLP, 1 = linear, 0 = none (identity)", low=0, high=3)


def _pos_int(default: int, doc: str) -> Option:
    return Option(default, "int", doc, low=1)


def _pos_float(default: float, doc: str) -> Option:
    return Option(default, "float", doc, low=0.0, low_open=True)


def _unit(default: float, doc: str) -> Option:
    return Option(default, "float", doc, low=0.0, high=1.0, high_open=True)


def _common(hidden: int, out: int, layers: int, momentum: float) -> dict[str, Option]:
    return {
        "form": Option("original", "choice", "original loss or unified-gradient form", FORMS),
        "target": Option("auto", "choice", "target branch (UniGrad Table 2)", TARGETS),
        "momentum": _unit(momentum, "base EMA coefficient m0 of the momentum encoder"),
        "proj_hidden_dim": _pos_int(hidden, "projector hidden width"),
        "proj_output_dim": _pos_int(out, "projector output width"),
        "proj_layers": _pos_int(layers, "number of linear layers in the projector"),
    }


def _asym_gradient_options(rho: float, eps: float) -> dict[str, Option]:
    return {
        "lam": Option("auto", "float_or_auto", "gradient form: balance lambda ('auto' = DirectPred's per-sample value)", low=0.0),
        "rho": _unit(rho, "EMA coefficient of the correlation matrix F"),
        "eps": Option(eps, "float", "eps added to the predictor eigenvalues", low=0.0),
        "positive_predictor": Option(
            "directpred", "choice", "gradient form: W_p or identity in the positive term", ("directpred", "identity")
        ),
    }


# --------------------------------------------------------------------------------------------
# Branches and objectives


@dataclass
class Branches:
    """Per-view float32 features handed to an objective (lists of [n, D], one per view).

    ``online``: projector outputs (graph attached); ``predicted``: trained-predictor outputs
    (``online`` when the method has none); ``positive``: source of ``u2^m``; ``negative``: source of
    negatives / F. With ``target="none"`` positive and negative are the online features themselves.
    """

    online: list[Tensor]
    predicted: list[Tensor]
    positive: list[Tensor]
    negative: list[Tensor]


Logs = dict[str, Tensor]
Objective = Callable[[Branches, dict[str, Any], Any], tuple[Tensor, Logs]]


def _pair_mean(values: list[Tensor]) -> Tensor:
    return torch.stack(values).mean()


def _surrogate_over_pairs(b: Branches, grad: Callable[[int, int], tuple[Tensor, Tensor]]) -> Tensor:
    """Mean over ordered pairs (a, c) of the surrogate ``mean_i <g_ac,i, l2n(online_a)_i>``.

    ``grad(a, c)`` returns ``(g, potential)``; the loss value is the mean potential (see
    :func:`siamgrad.core.gradient.gradient_form_loss`), its gradient ``g / N`` per pair.
    """
    terms = []
    for a, c in ordered_pairs(len(b.online)):
        g, value = grad(a, c)
        terms.append(gradient_form_loss(l2n(b.online[a]), g, value))
    return _pair_mean(terms)


# -- contrastive


def _simclr_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    tau = o["temperature"]
    loss = _pair_mean(
        [
            con.batch_contrastive_loss(b.online[a], b.positive[c], [b.negative[a], b.negative[c]], tau)
            for a, c in ordered_pairs(len(b.online))
        ]
    )
    return loss, {}


def _simclr_gradient(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    tau, lam = o["temperature"], o["lam"]
    loss = _surrogate_over_pairs(
        b,
        lambda a, c: con.batch_contrastive_gradient(
            b.online[a], b.positive[c], [b.negative[a], b.negative[c]], tau, lam, with_value=True
        ),
    )
    return loss, {"lambda": torch.tensor(lam)}


def _moco_original(b: Branches, o: dict, st: con.FeatureQueue) -> tuple[Tensor, Logs]:
    tau = o["temperature"]
    loss = _pair_mean(
        [con.queue_contrastive_loss(b.online[a], b.positive[c], st.queue, tau) for a, c in ordered_pairs(len(b.online))]
    )
    st.stash(b.negative[0])
    return loss, {}


def _moco_gradient(b: Branches, o: dict, st: con.FeatureQueue) -> tuple[Tensor, Logs]:
    tau, lam = o["temperature"], o["lam"]
    loss = _surrogate_over_pairs(
        b, lambda a, c: con.queue_contrastive_gradient(b.online[a], b.positive[c], st.queue, tau, lam, with_value=True)
    )
    st.stash(b.negative[0])
    return loss, {"lambda": torch.tensor(lam)}


# -- asymmetric


def _byol_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    pairs = ordered_pairs(len(b.online))
    return 2.0 * _pair_mean([asym.byol_loss(b.predicted[a], b.positive[c]) for a, c in pairs]), {}


def _simsiam_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    pairs = ordered_pairs(len(b.online))
    return _pair_mean([asym.simsiam_loss(b.predicted[a], b.positive[c]) for a, c in pairs]), {}


def _directpred_original(b: Branches, o: dict, st: asym.DirectPredictor) -> tuple[Tensor, Logs]:
    st.update([z.detach() for z in b.online])
    predicted = [st(z) for z in b.online]
    pairs = ordered_pairs(len(b.online))
    return 2.0 * _pair_mean([asym.byol_loss(predicted[a], b.positive[c]) for a, c in pairs]), {}


def _asymmetric_gradient(b: Branches, o: dict, st: CorrelationEMA) -> tuple[Tensor, Logs]:
    F = st.update(batch_correlation([l2n(v.detach()) for v in b.negative]))
    Wp, Ft = asym.precondition(F, o["eps"], o.get("clamp", 1e-4))
    lam = None if o["lam"] == "auto" else o["lam"]
    identity = o["positive_predictor"] == "identity"
    lams: list[Tensor] = []

    def grad(a: int, c: int) -> tuple[Tensor, Tensor]:
        g, lam_i, value = asym.asymmetric_gradient(b.online[a], b.positive[c], Wp, Ft, lam, identity, with_value=True)
        lams.append(lam_i.mean())
        return g, value

    loss = _surrogate_over_pairs(b, grad)
    return loss, {"lambda": torch.stack(lams).mean()}


# -- decorrelation


def _barlow_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    l2 = o["l2"] or o["width_scaled"]
    if len(b.online) == 2:
        on, off = dec.barlow_twins_terms(b.online[0], b.online[1], l2=l2)
    else:
        on, off = dec.barlow_twins_multiview_terms(b.online, l2=l2)
    return on + o["lambd_effective"] * off, {"loss_on_diag": on.detach(), "loss_off_diag": off.detach()}


def _barlow_gradient(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    lam = o["lam"]
    loss = _surrogate_over_pairs(
        b, lambda a, c: dec.barlow_twins_gradient(b.online[a], b.positive[c], b.negative[c], lam, with_value=True)
    )
    return loss, {"lambda": torch.tensor(lam)}


def _vicreg_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    inv, var, cov = dec.vicreg_terms(b.online)
    loss = o["sim_weight"] * inv + o["var_weight"] * var + o["cov_weight_effective"] * cov
    return loss, {"loss_invariance": inv.detach(), "loss_variance": var.detach(), "loss_covariance": cov.detach()}


def _vicreg_gradient(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    lam = o["lam"]
    loss = _surrogate_over_pairs(b, lambda a, c: dec.vicreg_gradient(b.online[a], b.positive[c], lam, with_value=True))
    return loss, {"lambda": torch.tensor(lam)}


# -- unigrad


def _unigrad_F(b: Branches, st: CorrelationEMA) -> Tensor:
    return st.update(batch_correlation([l2n(v.detach()) for v in b.negative]))


def _unigrad_original(b: Branches, o: dict, st: CorrelationEMA) -> tuple[Tensor, Logs]:
    F = _unigrad_F(b, st)
    pairs = ordered_pairs(len(b.online))
    loss = _pair_mean([uni.unigrad_loss(b.online[a], b.positive[c], F, o["lam"]) for a, c in pairs])
    return loss, {"lambda": torch.tensor(o["lam"])}


def _unigrad_gradient(b: Branches, o: dict, st: CorrelationEMA) -> tuple[Tensor, Logs]:
    F = _unigrad_F(b, st)
    loss = _surrogate_over_pairs(
        b, lambda a, c: uni.unigrad_gradient(b.online[a], b.positive[c], F, o["lam"], with_value=True)
    )
    return loss, {"lambda": torch.tensor(o["lam"])}


# --------------------------------------------------------------------------------------------
# State builders: (resolved options, projector output dim, form) -> module holding buffers or None


def _no_state(o: dict, dim: int, form: str) -> nn.Module | None:
    return None


def _queue_state(o: dict, dim: int, form: str) -> nn.Module:
    return con.FeatureQueue(o["queue_size"], dim)


def _asym_state(o: dict, dim: int, form: str) -> nn.Module | None:
    return CorrelationEMA(dim, o["rho"]) if form == "gradient" else None


def _directpred_state(o: dict, dim: int, form: str) -> nn.Module:
    if form == "gradient":
        return CorrelationEMA(dim, o["rho"])
    return asym.DirectPredictor(dim, o["rho"], o["eps"], o["freq"], o["clamp"])


def _ema_state(o: dict, dim: int, form: str) -> nn.Module:
    return CorrelationEMA(dim, o["rho"])


# --------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class MethodSpec:
    """Everything that makes a method: objectives, target branches, heads, options and its unified form."""

    name: str
    family: str
    paper: str
    options: dict[str, Option]
    targets: dict[str, tuple[str, ...]]
    projector: HeadSpec
    original: Objective
    gradient: Objective
    unified: UnifiedGradient
    predictor: HeadSpec | None = None
    make_state: Callable[[dict, int, str], nn.Module | None] = _no_state
    derived: Callable[[dict], dict] = field(default=lambda o: {})


_ALL_TARGETS = ("stopgrad", "momentum", "momentum_positive")
_ASYM_UNIFIED = dict(
    family="asymmetric",
    positive="-W_p u2^m (positive_predictor=directpred) or -u2^m (identity)",
    weights="(u1.v)/N' / s_max, plus eps^2 u1",
    scale="1/||W_p u1||",
)


def _barlow_derived(o: dict) -> dict:
    if o["width_scaled"]:
        return {"lambd_effective": dec.width_scaled_lambda(o["proj_output_dim"])}
    return {"lambd_effective": o["lambd"]}


def _vicreg_derived(o: dict) -> dict:
    if o["width_scaled"]:
        ratio = dec.width_scaled_lambda(o["proj_output_dim"]) / dec.width_scaled_lambda(8192)
        return {"cov_weight_effective": o["cov_weight"] * ratio}
    return {"cov_weight_effective": o["cov_weight"]}


REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            name="simclr",
            family="contrastive",
            paper="Chen et al. 2020 (arXiv 2002.05709)",
            options={
                **_common(2048, 128, 2, 0.996),
                "temperature": _pos_float(0.1, "InfoNCE temperature tau (0.1 ImageNet, 0.2 CIFAR)"),
                "lam": _pos_float(1.0, "gradient form: balance lambda"),
            },
            targets={"original": ("none",) + _ALL_TARGETS, "gradient": _ALL_TARGETS},
            projector=HeadSpec(hidden_bn=True),
            original=_simclr_original,
            gradient=_simclr_gradient,
            unified=UnifiedGradient(
                "contrastive", "-u2^m", "all 2N features of the batch (both views)", "softmax_v(u1.v/tau)", "1", "1/tau"
            ),
        ),
        MethodSpec(
            name="moco",
            family="contrastive",
            paper="He et al. 2020; Chen et al. 2020 (MoCo v2, arXiv 2003.04297)",
            options={
                **_common(2048, 128, 2, 0.99),
                "temperature": _pos_float(0.2, "InfoNCE temperature tau"),
                "queue_size": _pos_int(65536, "number of negative keys in the queue"),
                "lam": _pos_float(1.0, "gradient form: balance lambda"),
            },
            targets={"original": ("momentum", "stopgrad", "momentum_positive"), "gradient": ("momentum", "stopgrad", "momentum_positive")},
            projector=HeadSpec(hidden_bn=False),
            original=_moco_original,
            gradient=_moco_gradient,
            make_state=_queue_state,
            unified=UnifiedGradient(
                "contrastive", "-u2^m", "u2^m and the queue of past keys", "softmax_v(u1.v/tau)", "1", "1/tau"
            ),
        ),
        MethodSpec(
            name="byol",
            family="asymmetric",
            paper="Grill et al. 2020 (arXiv 2006.07733)",
            options={
                **_common(4096, 256, 2, 0.996),
                "pred_hidden_dim": _pos_int(4096, "predictor hidden width"),
                "pred_layers": _PRED_LAYERS,
                **_asym_gradient_options(0.99, 0.3),
            },
            targets={"original": ("momentum", "stopgrad"), "gradient": ("momentum", "stopgrad", "momentum_positive")},
            projector=HeadSpec(hidden_bn=True),
            predictor=HeadSpec(hidden_bn=True),
            original=_byol_original,
            gradient=_asymmetric_gradient,
            make_state=_asym_state,
            unified=UnifiedGradient(
                negatives="target features averaged into F (EMA, rho 0.99)", lam="adaptive per sample", **_ASYM_UNIFIED
            ),
        ),
        MethodSpec(
            name="simsiam",
            family="asymmetric",
            paper="Chen & He 2021 (arXiv 2011.10566)",
            options={
                **_common(2048, 2048, 3, 0.996),
                "pred_hidden_dim": _pos_int(512, "predictor bottleneck width"),
                "pred_layers": _PRED_LAYERS,
                **_asym_gradient_options(0.99, 0.3),
            },
            targets={"original": ("stopgrad", "momentum"), "gradient": ("stopgrad", "momentum", "momentum_positive")},
            projector=HeadSpec(hidden_bn=True, last_bn=True, last_bn_affine=False),
            predictor=HeadSpec(hidden_bn=True),
            original=_simsiam_original,
            gradient=_asymmetric_gradient,
            make_state=_asym_state,
            unified=UnifiedGradient(
                negatives="stop-gradient features averaged into F (EMA, rho 0.99)", lam="adaptive per sample", **_ASYM_UNIFIED
            ),
        ),
        MethodSpec(
            name="directpred",
            family="asymmetric",
            paper="Tian, Chen & Ganguli 2021 (arXiv 2102.06810)",
            options={
                **_common(4096, 256, 2, 0.996),
                **_asym_gradient_options(0.3, 0.01),
                "freq": _pos_int(1, "reset the predictor from F_hat every freq steps"),
                "clamp": _pos_float(1e-4, "lower clamp of the predictor eigenvalues"),
            },
            targets={"original": ("momentum", "stopgrad"), "gradient": ("momentum", "stopgrad", "momentum_positive")},
            projector=HeadSpec(hidden_bn=True),
            original=_directpred_original,
            gradient=_asymmetric_gradient,
            make_state=_directpred_state,
            unified=UnifiedGradient(
                negatives="features averaged into F_hat (EMA, rho 0.3)", lam="adaptive per sample", **_ASYM_UNIFIED
            ),
        ),
        MethodSpec(
            name="barlow_twins",
            family="decorrelation",
            paper="Zbontar et al. 2021 (arXiv 2103.03230); small projectors/many views: arXiv 2312.10725",
            options={
                **_common(8192, 8192, 3, 0.996),
                "lambd": _pos_float(0.0051, "off-diagonal weight of the cross-correlation loss"),
                "width_scaled": Option(
                    False, "bool", "l2-normalize before standardizing and use lambda(d) of arXiv 2312.10725 (overrides lambd)"
                ),
                "l2": Option(False, "bool", "l2-normalize before standardizing, keeping lambd (width_scaled implies it)"),
                "lam": _pos_float(50.0, "gradient form: balance lambda"),
            },
            targets={"original": ("none",), "gradient": _ALL_TARGETS},
            projector=HeadSpec(hidden_bn=True, hidden_bias=False, last_bias=False),
            original=_barlow_original,
            gradient=_barlow_gradient,
            derived=_barlow_derived,
            unified=UnifiedGradient(
                "decorrelation",
                "-u2^m",
                "online features v1_j of the anchor's view",
                "(u2^m . v2_j)/N, v2_j target features of the other view",
                "50",
                "2",
            ),
        ),
        MethodSpec(
            name="vicreg",
            family="decorrelation",
            paper="Bardes, Ponce & LeCun 2022 (arXiv 2105.04906)",
            options={
                **_common(8192, 8192, 3, 0.996),
                "sim_weight": Option(25.0, "float", "invariance weight", low=0.0),
                "var_weight": Option(25.0, "float", "variance weight", low=0.0),
                "cov_weight": Option(1.0, "float", "covariance (off-diagonal) weight", low=0.0),
                "width_scaled": Option(
                    False, "bool", "scale cov_weight by lambda(d)/lambda(8192) of arXiv 2312.10725"
                ),
                "lam": _pos_float(50.0, "gradient form: balance lambda"),
            },
            targets={"original": ("none",), "gradient": ("stopgrad", "momentum")},
            projector=HeadSpec(hidden_bn=True),
            original=_vicreg_original,
            gradient=_vicreg_gradient,
            derived=_vicreg_derived,
            unified=UnifiedGradient(
                "decorrelation",
                "-u2^m",
                "centered online features v_j - mu of the anchor's view",
                "(u1 - mu).(v_j - mu)/N",
                "50",
                "2",
            ),
        ),
        MethodSpec(
            name="unigrad",
            family="unigrad",
            paper="Tao et al. 2022 (arXiv 2112.05141)",
            options={
                **_common(2048, 2048, 3, 0.996),
                "lam": _pos_float(100.0, "balance lambda of the F u1 term"),
                "rho": _unit(0.99, "EMA coefficient of the correlation matrix F"),
            },
            targets={"original": ("momentum", "stopgrad", "momentum_positive"), "gradient": ("momentum", "stopgrad", "momentum_positive")},
            projector=HeadSpec(hidden_bn=True, hidden_bias=False),
            original=_unigrad_original,
            gradient=_unigrad_gradient,
            make_state=_ema_state,
            unified=UnifiedGradient(
                "unigrad", "-u2^m", "target features averaged into F (EMA, rho 0.99)", "(u1.v)/N'", "100", "1"
            ),
        ),
    )
}


def available() -> list[str]:
    """Names of all registered methods."""
    return list(REGISTRY)


def _spec(name: str) -> MethodSpec:
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def default_options(name: str) -> dict[str, Any]:
    """The method's full option set with the papers' defaults."""
    return {k: opt.default for k, opt in _spec(name).options.items()}


def resolve_options(name: str, **options: Any) -> dict[str, Any]:
    """Validate ``options`` over the defaults; resolve ``target="auto"``; raise one-line ConfigErrors."""
    spec = _spec(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ConfigError(
            f"unknown option method.{unknown[0]} for {name}; valid options: {', '.join(spec.options)}"
        )
    resolved = default_options(name)
    for key, value in options.items():
        resolved[key] = spec.options[key].validate(name, key, value)
    allowed = spec.targets[resolved["form"]]
    if resolved["target"] == "auto":
        resolved["target"] = allowed[0]
    elif resolved["target"] not in allowed:
        raise ConfigError(
            f"method.target={resolved['target']!r} is not available for {name} with form={resolved['form']}; "
            f"choose one of: auto, {', '.join(allowed)}"
        )
    return resolved


# --------------------------------------------------------------------------------------------
# The model


class SiameseMethod(nn.Module):
    """Backbone + projector (+ predictor) + target branch + objective of one registered method.

    ``training_step(views)`` returns ``(loss, logs)``; ``on_step_end(step, total_steps)`` updates the
    momentum encoder (``m = 1 - (1 - m0)(cos(pi step/T) + 1)/2``, ``theta_m <- m theta_m + (1 - m) theta``,
    buffers copied) and the MoCo queue. All state needed to resume (momentum encoder, queue and
    pointer, F / F_hat and their counters, the DirectPred predictor) lives in submodules/buffers.
    """

    def __init__(self, spec: MethodSpec, backbone: nn.Module, feature_dim: int, options: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.feature_dim = int(feature_dim)
        self.options = dict(options)
        self.params = {**self.options, **spec.derived(self.options)}
        self.form: str = options["form"]
        self.target: str = options["target"]
        o = self.options
        self.backbone = backbone
        self.projector = mlp(feature_dim, o["proj_hidden_dim"], o["proj_output_dim"], o["proj_layers"], spec.projector)
        self.predictor: nn.Module | None = None
        if spec.predictor is not None and self.form == "original":
            dim = o["proj_output_dim"]
            layers = o.get("pred_layers", 2)
            if layers > 0:
                self.predictor = mlp(dim, o["pred_hidden_dim"], dim, layers, spec.predictor)
        self.momentum_backbone: nn.Module | None = None
        self.momentum_projector: nn.Module | None = None
        if self.target in MOMENTUM_TARGETS:
            self.momentum_backbone = copy.deepcopy(backbone).requires_grad_(False)
            self.momentum_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.state = spec.make_state(self.params, o["proj_output_dim"], self.form)
        self.last_features: Tensor | None = None
        self.last_momentum: float = float(o["momentum"])

    @property
    def objective(self) -> Objective:
        return self.spec.original if self.form == "original" else self.spec.gradient

    def extra_repr(self) -> str:
        return f"method={self.name}, form={self.form}, target={self.target}"

    # -- training

    def _check_views(self, views: Any) -> None:
        """One-line errors for inputs the backbone would reject deep inside torch."""
        if not isinstance(views, (list, tuple)) or len(views) < 2 or not all(isinstance(v, Tensor) for v in views):
            raise SiamgradError("training_step needs a list of at least 2 view batches (tensors [N, C, H, W])")
        shapes = {tuple(v.shape) for v in views}
        if len(shapes) != 1:
            raise SiamgradError(f"all views must have the same shape; got {sorted(shapes)}")
        v = views[0]
        if v.dim() != 4:
            raise SiamgradError(f"views must be image batches [N, C, H, W]; got shape {tuple(v.shape)}")
        if v.shape[0] < 2:
            raise SiamgradError("a batch needs at least 2 images per view for batch statistics")
        if len({t.dtype for t in views}) != 1 or len({t.device for t in views}) != 1:
            raise SiamgradError("all views must have the same dtype and device")
        if not v.is_floating_point():
            raise SiamgradError(
                f"views must be float tensors (augmented, normalized images), got {v.dtype}; pass uint8 "
                "images through siamgrad.augment.multiview first (e.g. build_augment('cifar', 32)(images))"
            )
        in_channels = next((m.in_channels for m in self.backbone.modules() if isinstance(m, nn.Conv2d)), None)
        if in_channels is not None and v.shape[1] != in_channels:
            raise SiamgradError(f"views have {v.shape[1]} channels but the backbone takes {in_channels}; "
                                f"got shape {tuple(v.shape)}")
        p = next(self.parameters(), None)
        if p is not None:
            if v.device != p.device:
                raise SiamgradError(f"views are on {v.device} but the model is on {p.device}; move one of them")
            if v.dtype != p.dtype and not torch.is_autocast_enabled(v.device.type):
                raise SiamgradError(f"views are {v.dtype} but the model is {p.dtype}; convert the views "
                                    f"(views = [v.to({p.dtype}) for v in views])")

    def _features(self, x: Tensor) -> Tensor:
        y = self.backbone(x)
        if y.ndim != 2 or y.shape[1] != self.feature_dim:
            raise ConfigError(
                f"the backbone returned features of shape {tuple(y.shape)} but feature_dim={self.feature_dim}; "
                "pass the backbone's output width as feature_dim"
            )
        return y

    def branches(self, views: list[Tensor]) -> Branches:
        """One backbone forward over all views; the target branch as chosen by ``target``."""
        n = views[0].shape[0]
        x = torch.cat(list(views), dim=0)
        y = self._features(x)
        self.last_features = y[:n].detach()
        z = self.projector(y)
        p = self.predictor(z) if self.predictor is not None else None
        zm = None
        if self.target in MOMENTUM_TARGETS:
            assert self.momentum_backbone is not None and self.momentum_projector is not None
            with torch.no_grad():
                zm = self.momentum_projector(self.momentum_backbone(x))
        online = list(upcast(z).split(n))
        predicted = list(upcast(p).split(n)) if p is not None else online
        if self.target == "none":
            positive = negative = online
        elif self.target == "stopgrad":
            positive = negative = [t.detach() for t in online]
        else:
            assert zm is not None
            positive = list(upcast(zm).split(n))
            negative = positive if self.target == "momentum" else [t.detach() for t in online]
        return Branches(online=online, predicted=predicted, positive=positive, negative=negative)

    def training_step(self, views: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Loss (graph attached) and float logs for a list of M >= 2 augmented batches [N, 3, H, W]."""
        self._check_views(views)
        b = self.branches(views)
        with float32(views[0].device):
            loss, logs = self.objective(b, self.params, self.state)
            with torch.no_grad():
                pairs = ordered_pairs(len(b.online))
                pos_sim = torch.stack(
                    [(l2n(b.online[a].detach()) * l2n(b.positive[c].detach())).sum(1).mean() for a, c in pairs]
                ).mean()
        logs = {"loss": loss.detach(), **logs, "pos_sim": pos_sim}
        device = loss.device
        values = [torch.as_tensor(v).detach().to(device=device, dtype=torch.float32).reshape(()) for v in logs.values()]
        out = dict(zip(logs, torch.stack(values).tolist()))  # one host-device sync for all logs
        if self.target in MOMENTUM_TARGETS:
            out["momentum"] = self.last_momentum
        return loss, out

    def forward(self, views: list[Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Same as :meth:`training_step` (so DistributedDataParallel's hooks see a forward call)."""
        return self.training_step(views)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """``m = 1 - (1 - m0) (cos(pi step / total_steps) + 1) / 2`` (``m0`` when ``total_steps <= 0``)."""
        m0 = float(self.options["momentum"])
        if total_steps <= 0:
            return m0
        return 1.0 - (1.0 - m0) * (math.cos(math.pi * min(step, total_steps) / total_steps) + 1.0) / 2.0

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """After ``optimizer.step()``: EMA update of the momentum encoder, queue bookkeeping."""
        if self.momentum_backbone is not None and self.momentum_projector is not None:
            m = self.momentum_at(step, total_steps)
            for online, target in ((self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)):
                src = [p.detach() for p in online.parameters()]
                dst = [p.detach() for p in target.parameters()]
                if dst:
                    torch._foreach_mul_(dst, m)
                    torch._foreach_add_(dst, src, alpha=1.0 - m)
                for bs, bd in zip(online.buffers(), target.buffers()):
                    bd.copy_(bs)
            self.last_momentum = m
        if isinstance(self.state, con.FeatureQueue):
            self.state.flush()


def build(name: str, backbone: nn.Module, feature_dim: int, **options: Any) -> SiameseMethod:
    """Build a registered method around ``backbone`` (images -> [N, feature_dim] features).

    Unknown method or option, or a bad value -> one-line :class:`ConfigError`.
    """
    spec = _spec(name)
    if not isinstance(feature_dim, int) or isinstance(feature_dim, bool) or feature_dim < 1:
        raise ConfigError(f"feature_dim={feature_dim!r} is invalid: expected a positive integer")
    return SiameseMethod(spec, backbone, feature_dim, resolve_options(name, **options))


# --------------------------------------------------------------------------------------------
# Description


def describe() -> list[dict[str, str]]:
    """One row per method: its family and unified gradient ``c (-u2^m + lam sum_v s_v v)`` and its defaults."""
    rows = []
    for spec in REGISTRY.values():
        u = spec.unified
        defaults = default_options(spec.name)
        shown = {k: v for k, v in defaults.items() if k not in ("form", "target")}
        rows.append(
            {
                "name": spec.name,
                "family": u.family,
                "positive term": u.positive,
                "negative set": u.negatives,
                "negative weights": u.weights,
                "balance coefficient (lambda)": u.lam,
                "scale": u.scale,
                "targets": "original: " + "/".join(spec.targets["original"]) + "; gradient: " + "/".join(spec.targets["gradient"]),
                "defaults": ", ".join(f"{k}={v}" for k, v in shown.items()),
                "paper": spec.paper,
            }
        )
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """A plain-text table: one block per row, ``key : value`` lines aligned, blocks separated by rules."""
    if not rows:
        return ""
    width = max(len(k) for row in rows for k in row)
    rule = "-" * 78
    blocks = []
    for row in rows:
        blocks.append("\n".join(f"{k.ljust(width)} : {v}" for k, v in row.items()))
    return (rule + "\n") + ("\n" + rule + "\n").join(blocks) + "\n" + rule
