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

Views: all M >= 2 views go through the backbone in one forward (``torch.cat`` then split); with
multi-crop, one forward per size group, targets from the G global crops only, each online view
paired with every other global crop (:func:`siamgrad.core.gradient.view_pairs`), and mixed views
trained on ratio-weighted targets (:mod:`siamgrad.methods.objectives`).
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

from typing import Any

from torch import nn

from siamgrad.core.gradient import UnifiedGradient
from siamgrad.core.objectives import decorrelation as dec
from siamgrad.errors import ConfigError
from siamgrad.methods import objectives as obj
from siamgrad.methods.options import (
    FORMS,
    TARGETS,
    VIEW_BN,
    Option,
    positive_float,
    positive_int,
    unit_interval,
)
from siamgrad.methods.protocol import MethodState
from siamgrad.methods.siamese import SiameseMethod
from siamgrad.methods.spec import MethodSpec
from siamgrad.methods.states import CorrelationEMA, DirectPredictor, FeatureQueue
from siamgrad.models.heads import HeadSpec

__all__ = [
    "REGISTRY",
    "available",
    "default_options",
    "resolve_options",
    "build",
    "describe",
    "format_table",
]


# --------------------------------------------------------------------------------------------
# Options shared by several methods


# predictor depth of the trained-predictor methods: 2 (the papers' MLP), 1 (a trained linear
# predictor, DirectPred's comparison) or 0 (no predictor: the collapse demonstration of SimSiam)
_PRED_LAYERS = Option(2, "int", "predictor layers: 2 = MLP, 1 = linear, 0 = none (identity)", low=0, high=3,
                      forms=("original",))


def _common(hidden: int, out: int, layers: int, momentum: float, projector: HeadSpec,
            predictor: HeadSpec | None = None, schedule: str = "cosine") -> dict[str, Option]:
    """Options of every method; the head flags default to the method's ``projector``/``predictor`` specs."""
    opts = {
        "form": Option("original", "choice", "original loss or unified-gradient form", FORMS),
        "target": Option("auto", "choice", "target branch (UniGrad Table 2)", TARGETS),
        "momentum": unit_interval(momentum, "base EMA coefficient m0 of the momentum encoder"),
        "momentum_schedule": Option(
            schedule, "choice", "EMA coefficient over training: cosine from m0 to 1, or constant m0",
            ("cosine", "constant"),
        ),
        "view_bn": Option(
            "per_view", "choice", "batch-norm statistics: each view's own (as separate forwards) or joint over all views",
            VIEW_BN,
        ),
        "proj_hidden_dim": positive_int(hidden, "projector hidden width"),
        "proj_output_dim": positive_int(out, "projector output width"),
        "proj_layers": positive_int(layers, "number of linear layers in the projector"),
        "proj_hidden_bn": Option(projector.hidden_bn, "bool", "batch norm after the projector's hidden layers"),
        "proj_hidden_bn_affine": Option(projector.hidden_bn_affine, "bool",
                                        "weight and bias in the projector's hidden batch norms"),
        "proj_last_bn": Option(projector.last_bn, "bool", "batch norm on the projector's output"),
        "proj_last_bias": Option(projector.last_bias, "bool",
                                 "bias of the projector's last linear layer (none when batch norm follows)"),
    }
    if predictor is not None:
        opts["pred_hidden_bn_affine"] = Option(predictor.hidden_bn_affine, "bool",
                                               "weight and bias in the predictor's hidden batch norms",
                                               forms=("original",))
        opts["pred_last_bias"] = Option(predictor.last_bias, "bool", "bias of the predictor's last linear layer",
                                        forms=("original",))
        opts["local_predictor"] = Option(False, "bool", "multi-crop: a predictor of its own for the local crops",
                                         forms=("original",))
    return opts


def _trained_predictor_gradient_options(rho: float, eps: float) -> dict[str, Option]:
    """BYOL/SimSiam: ``F`` (rho, eps) exists in their gradient form only; the original trains a predictor."""
    opts = _asym_gradient_options(rho, eps)
    return {**opts, "rho": opts["rho"].only_in("gradient"), "eps": opts["eps"].only_in("gradient")}


def _asym_gradient_options(rho: float, eps: float) -> dict[str, Option]:
    return {
        "lam": Option("auto", "float_or_auto", "gradient form: balance lambda ('auto' = DirectPred's per-sample value)",
                      low=0.0, forms=("gradient",)),
        "rho": unit_interval(rho, "EMA coefficient of the correlation matrix F"),
        "eps": Option(eps, "float", "eps added to the predictor eigenvalues", low=0.0),
        "positive_predictor": Option(
            "directpred", "choice", "gradient form: W_p or identity in the positive term", ("directpred", "identity"),
            forms=("gradient",),
        ),
    }


# --------------------------------------------------------------------------------------------
# State builders: (resolved options, projector output dim, form) -> module holding buffers or None


def _queue_state(o: dict, dim: int, form: str) -> MethodState:
    return FeatureQueue(o["queue_size"], dim)


def _asym_state(o: dict, dim: int, form: str) -> MethodState | None:
    return CorrelationEMA(dim, o["rho"]) if form == "gradient" else None


def _directpred_state(o: dict, dim: int, form: str) -> MethodState:
    if form == "gradient":
        return CorrelationEMA(dim, o["rho"])
    return DirectPredictor(dim, o["rho"], o["eps"], o["freq"], o["clamp"], trained=o["predictor_update"] == "sgd")


def _ema_state(o: dict, dim: int, form: str) -> MethodState:
    return CorrelationEMA(dim, o["rho"])


# --------------------------------------------------------------------------------------------
# Registry


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


# The heads of the official code (see docs/methods.md, "Differences from the reference implementations").
# SimCLR (google-research/simclr model_util.py): output batch norm with a scale, no shift, no bias.
_SIMCLR_PROJ = HeadSpec(hidden_bn=True, last_bn=True, last_bn_center=False, last_bias=False)
# MoCo v2 (facebookresearch/moco builder.py, mlp=True): Linear-ReLU-Linear with biases.
_MOCO_PROJ = HeadSpec(hidden_bn=False)
# BYOL (deepmind-research byol/utils/networks.py MLP): the output layer has no bias.
_BYOL_HEAD = HeadSpec(hidden_bn=True, last_bias=False)
# SimSiam (facebookresearch/simsiam builder.py): non-affine batch norm on the projector output.
_SIMSIAM_PROJ = HeadSpec(hidden_bn=True, last_bn=True, last_bn_affine=False)
_SIMSIAM_PRED = HeadSpec(hidden_bn=True)
# DirectPred (facebookresearch/luckmatters ssl/real-dataset models/mlp_head.py): non-affine hidden BN.
_DIRECTPRED_PROJ = HeadSpec(hidden_bn=True, hidden_bn_affine=False)
# Barlow Twins (facebookresearch/barlowtwins main.py): no biases.
_BARLOW_PROJ = HeadSpec(hidden_bn=True, hidden_bias=False, last_bias=False)
# VICReg (facebookresearch/vicreg main_vicreg.py Projector): no bias in the last layer.
_VICREG_PROJ = HeadSpec(hidden_bn=True, last_bias=False)
# UniGrad (fundamentalvision/UniGrad project/model.py _projection_mlp): hidden layers without bias.
_UNIGRAD_PROJ = HeadSpec(hidden_bn=True, hidden_bias=False)

REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            name="simclr",
            family="contrastive",
            paper="Chen et al. 2020 (arXiv 2002.05709)",
            options={
                **_common(2048, 128, 2, 0.996, _SIMCLR_PROJ),
                "temperature": positive_float(0.1, "InfoNCE temperature tau (0.1 ImageNet, 0.5 CIFAR-10)"),
                "lam": positive_float(1.0, "gradient form: balance lambda").only_in("gradient"),
            },
            targets={"original": ("none",) + _ALL_TARGETS, "gradient": _ALL_TARGETS},
            projector=_SIMCLR_PROJ,
            original=obj.simclr_original,
            gradient=obj.simclr_gradient,
            unified=UnifiedGradient(
                "contrastive", "-u2^m", "all 2N features of the batch (both views)", "softmax_v(u1.v/tau)", "1", "1/tau"
            ),
        ),
        MethodSpec(
            name="moco",
            family="contrastive",
            paper="He et al. 2020; Chen et al. 2020 (MoCo v2, arXiv 2003.04297)",
            options={
                **_common(2048, 128, 2, 0.99, _MOCO_PROJ, schedule="constant"),
                "temperature": positive_float(0.2, "InfoNCE temperature tau"),
                "queue_size": positive_int(65536, "number of negative keys in the queue"),
                "shuffle_bn": Option(True, "bool", "shuffle the key encoder's batch (MoCo's shuffled batch norm)"),
                "lam": positive_float(1.0, "gradient form: balance lambda").only_in("gradient"),
            },
            targets={"original": ("momentum", "stopgrad", "momentum_positive"), "gradient": ("momentum", "stopgrad", "momentum_positive")},
            projector=_MOCO_PROJ,
            original=obj.moco_original,
            gradient=obj.moco_gradient,
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
                **_common(4096, 256, 2, 0.996, _BYOL_HEAD, _BYOL_HEAD),
                "pred_hidden_dim": positive_int(4096, "predictor hidden width").only_in("original"),
                "pred_layers": _PRED_LAYERS,
                **_trained_predictor_gradient_options(0.99, 0.3),
            },
            targets={"original": ("momentum", "stopgrad"), "gradient": ("momentum", "stopgrad", "momentum_positive")},
            projector=_BYOL_HEAD,
            predictor=_BYOL_HEAD,
            original=obj.byol_original,
            gradient=obj.asymmetric_gradient,
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
                **_common(2048, 2048, 3, 0.996, _SIMSIAM_PROJ, _SIMSIAM_PRED),
                "pred_hidden_dim": positive_int(512, "predictor bottleneck width").only_in("original"),
                "pred_layers": _PRED_LAYERS,
                **_trained_predictor_gradient_options(0.99, 0.3),
            },
            targets={"original": ("stopgrad", "momentum"), "gradient": ("stopgrad", "momentum", "momentum_positive")},
            projector=_SIMSIAM_PROJ,
            predictor=_SIMSIAM_PRED,
            original=obj.simsiam_original,
            gradient=obj.asymmetric_gradient,
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
                **_common(4096, 256, 2, 0.996, _DIRECTPRED_PROJ, schedule="constant"),
                **_asym_gradient_options(0.3, 0.01),
                "freq": positive_int(1, "reset the predictor from F_hat every freq steps").only_in("original"),
                "predictor_update": Option(
                    "sgd", "choice", "between resets: train the predictor by SGD (the reference) or hold it fixed",
                    ("sgd", "fixed"), forms=("original",),
                ),
                "clamp": positive_float(1e-4, "lower clamp of the predictor eigenvalues"),
            },
            targets={"original": ("momentum", "stopgrad"), "gradient": ("momentum", "stopgrad", "momentum_positive")},
            projector=_DIRECTPRED_PROJ,
            original=obj.directpred_original,
            gradient=obj.asymmetric_gradient,
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
                **_common(8192, 8192, 3, 0.996, _BARLOW_PROJ),
                "lambd": positive_float(0.0051, "off-diagonal weight of the cross-correlation loss").only_in("original"),
                "width_scaled": Option(
                    False, "bool", "l2-normalize before standardizing and use lambda(d) of arXiv 2312.10725 (overrides lambd)",
                    forms=("original",),
                ),
                "l2": Option(False, "bool", "l2-normalize before standardizing, keeping lambd (width_scaled implies it)",
                             forms=("original",)),
                "lam": positive_float(50.0, "gradient form: balance lambda").only_in("gradient"),
            },
            targets={"original": ("none",), "gradient": _ALL_TARGETS},
            projector=_BARLOW_PROJ,
            original=obj.barlow_original,
            gradient=obj.barlow_gradient,
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
                **_common(8192, 8192, 3, 0.996, _VICREG_PROJ),
                "sim_weight": Option(25.0, "float", "invariance weight", low=0.0, forms=("original",)),
                "var_weight": Option(25.0, "float", "variance weight", low=0.0, forms=("original",)),
                "cov_weight": Option(1.0, "float", "covariance (off-diagonal) weight", low=0.0, forms=("original",)),
                "width_scaled": Option(
                    False, "bool", "scale cov_weight by lambda(d)/lambda(8192) of arXiv 2312.10725",
                    forms=("original",),
                ),
                "lam": positive_float(50.0, "gradient form: balance lambda").only_in("gradient"),
            },
            targets={"original": ("none",), "gradient": ("stopgrad", "momentum")},
            projector=_VICREG_PROJ,
            original=obj.vicreg_original,
            gradient=obj.vicreg_gradient,
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
                **_common(2048, 2048, 3, 0.996, _UNIGRAD_PROJ),
                "lam": positive_float(100.0, "balance lambda of the F u1 term"),
                "rho": unit_interval(0.99, "EMA coefficient of the correlation matrix F"),
            },
            targets={"original": ("momentum", "stopgrad", "momentum_positive"), "gradient": ("momentum", "stopgrad", "momentum_positive")},
            projector=_UNIGRAD_PROJ,
            original=obj.unigrad_original,
            gradient=obj.unigrad_gradient,
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


def build(name: str, backbone: nn.Module, feature_dim: int, **options: Any) -> SiameseMethod:
    """Build a registered method around ``backbone`` (images -> [N, feature_dim] features).

    Unknown method or option, or a bad value -> one-line :class:`ConfigError`.

    >>> import torch
    >>> from siamgrad.models.backbones import build_backbone
    >>> backbone, dim = build_backbone("tiny")
    >>> method = build("simclr", backbone, dim, temperature=0.2)
    >>> views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]  # two augmented batches
    >>> loss, logs = method.training_step(views)
    >>> loss.backward()
    >>> loss.ndim, "loss" in logs
    (0, True)
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
