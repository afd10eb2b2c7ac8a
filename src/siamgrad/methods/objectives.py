"""The objective of every method over its branches: pure functions ``(branches, options, state) -> (loss, logs)``.

An objective reads its state (a queue, ``F``, the DirectPred predictor) and never changes it:
the state observed this step's branches before the objective runs (see
:class:`~siamgrad.methods.protocol.MethodState`). Original losses come from
:mod:`siamgrad.core.objectives`; gradient forms train ``g = c (-u2^m + lam sum_v s_v v)``
through the surrogate of :func:`siamgrad.core.gradient.gradient_form_loss`, averaged over the
ordered view pairs.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from siamgrad.core.gradient import gradient_form_loss, l2n, ordered_pairs
from siamgrad.core.objectives import asymmetric as asym
from siamgrad.core.objectives import contrastive as con
from siamgrad.core.objectives import decorrelation as dec
from siamgrad.core.objectives import unigrad as uni
from siamgrad.methods.protocol import Branches
from siamgrad.methods.states import CorrelationEMA, DirectPredictor, FeatureQueue


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


def simclr_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    tau = o["temperature"]
    loss = _pair_mean(
        [
            con.batch_contrastive_loss(b.online[a], b.positive[c], [b.negative[a], b.negative[c]], tau)
            for a, c in ordered_pairs(len(b.online))
        ]
    )
    return loss, {}


def simclr_gradient(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    tau, lam = o["temperature"], o["lam"]
    loss = _surrogate_over_pairs(
        b,
        lambda a, c: con.batch_contrastive_gradient(
            b.online[a], b.positive[c], [b.negative[a], b.negative[c]], tau, lam, with_value=True
        ),
    )
    return loss, {"lambda": torch.tensor(lam)}


def moco_original(b: Branches, o: dict, st: FeatureQueue) -> tuple[Tensor, Logs]:
    tau = o["temperature"]
    loss = _pair_mean(
        [con.queue_contrastive_loss(b.online[a], b.positive[c], st.queue, tau) for a, c in ordered_pairs(len(b.online))]
    )
    return loss, {}


def moco_gradient(b: Branches, o: dict, st: FeatureQueue) -> tuple[Tensor, Logs]:
    tau, lam = o["temperature"], o["lam"]
    loss = _surrogate_over_pairs(
        b, lambda a, c: con.queue_contrastive_gradient(b.online[a], b.positive[c], st.queue, tau, lam, with_value=True)
    )
    return loss, {"lambda": torch.tensor(lam)}


# -- asymmetric


def byol_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    pairs = ordered_pairs(len(b.online))
    return 2.0 * _pair_mean([asym.byol_loss(b.predicted[a], b.positive[c]) for a, c in pairs]), {}


def simsiam_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    pairs = ordered_pairs(len(b.online))
    return _pair_mean([asym.simsiam_loss(b.predicted[a], b.positive[c]) for a, c in pairs]), {}


def directpred_original(b: Branches, o: dict, st: DirectPredictor) -> tuple[Tensor, Logs]:
    predicted = [st(z) for z in b.online]
    pairs = ordered_pairs(len(b.online))
    return 2.0 * _pair_mean([asym.byol_loss(predicted[a], b.positive[c]) for a, c in pairs]), {}


def asymmetric_gradient(b: Branches, o: dict, st: CorrelationEMA) -> tuple[Tensor, Logs]:
    Wp, Ft = asym.precondition(st.F, o["eps"], o.get("clamp", 1e-4))
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


def barlow_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    l2 = o["l2"] or o["width_scaled"]
    if len(b.online) == 2:
        on, off = dec.barlow_twins_terms(b.online[0], b.online[1], l2=l2)
    else:
        on, off = dec.barlow_twins_multiview_terms(b.online, l2=l2)
    return on + o["lambd_effective"] * off, {"loss_on_diag": on.detach(), "loss_off_diag": off.detach()}


def barlow_gradient(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    lam = o["lam"]
    loss = _surrogate_over_pairs(
        b, lambda a, c: dec.barlow_twins_gradient(b.online[a], b.positive[c], b.negative[c], lam, with_value=True)
    )
    return loss, {"lambda": torch.tensor(lam)}


def vicreg_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    inv, var, cov = dec.vicreg_terms(b.online)
    loss = o["sim_weight"] * inv + o["var_weight"] * var + o["cov_weight_effective"] * cov
    return loss, {"loss_invariance": inv.detach(), "loss_variance": var.detach(), "loss_covariance": cov.detach()}


def vicreg_gradient(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    lam = o["lam"]
    loss = _surrogate_over_pairs(b, lambda a, c: dec.vicreg_gradient(b.online[a], b.positive[c], lam, with_value=True))
    return loss, {"lambda": torch.tensor(lam)}


# -- unigrad


def unigrad_original(b: Branches, o: dict, st: CorrelationEMA) -> tuple[Tensor, Logs]:
    F = st.F
    pairs = ordered_pairs(len(b.online))
    loss = _pair_mean([uni.unigrad_loss(b.online[a], b.positive[c], F, o["lam"]) for a, c in pairs])
    return loss, {"lambda": torch.tensor(o["lam"])}


def unigrad_gradient(b: Branches, o: dict, st: CorrelationEMA) -> tuple[Tensor, Logs]:
    F = st.F
    loss = _surrogate_over_pairs(
        b, lambda a, c: uni.unigrad_gradient(b.online[a], b.positive[c], F, o["lam"], with_value=True)
    )
    return loss, {"lambda": torch.tensor(o["lam"])}
