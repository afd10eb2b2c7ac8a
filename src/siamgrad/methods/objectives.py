"""The objective of every method over its branches: pure functions ``(branches, options, state) -> (loss, logs)``.

An objective reads its state (a queue, ``F``, the DirectPred predictor) and never changes it:
the state observed this step's branches before the objective runs (see
:class:`~siamgrad.methods.protocol.MethodState`). Original losses come from
:mod:`siamgrad.core.objectives`; gradient forms train ``g = c (-u2^m + lam sum_v s_v v)``
through the surrogate of :func:`siamgrad.core.gradient.gradient_form_loss`, averaged over the
ordered view pairs.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import torch
from torch import Tensor

from siamgrad.core.gradient import gradient_form_loss, l2n
from siamgrad.core.objectives import asymmetric as asym
from siamgrad.core.objectives import contrastive as con
from siamgrad.core.objectives import decorrelation as dec
from siamgrad.core.objectives import unigrad as uni
from siamgrad.methods.protocol import Branches
from siamgrad.methods.states import CorrelationEMA, DirectPredictor, FeatureQueue


Logs = dict[str, Tensor]
Objective = Callable[[Branches, dict[str, Any], Any], tuple[Tensor, Logs]]
T = TypeVar("T", Tensor, tuple)


def _pair_mean(values: list[Tensor]) -> Tensor:
    return torch.stack(values).mean()


def _blend(r: float, x: T, y: T) -> T:
    """``r x + (1 - r) y``, element by element for tuples."""
    if isinstance(x, tuple):
        return tuple(_blend(r, a, b) for a, b in zip(x, y))  # type: ignore[return-value]
    return r * x + (1.0 - r) * y


def _against(b: Branches, a: int, c: int, fn: Callable[[Tensor], T]) -> T:
    """``fn(positive_c)`` for the pair (a, c); for a mixed online view ``a`` the ratio-weighted blend
    ``r fn(t_c) + (1 - r) fn(t_c[partner])`` (the negatives ``fn`` reads stay those of the batch)."""
    pos = b.positive[c]
    mixed = b.mixed.get(a)
    if mixed is None:
        return fn(pos)
    return _blend(mixed.ratio, fn(pos), fn(mixed.partner(pos)))


def _pairs(b: Branches) -> list[tuple[int, int]]:
    assert b.pairs is not None
    return b.pairs


def _own_negative(b: Branches, a: int) -> Tensor:
    """Negative source of online view ``a``'s own view: its target-branch features for a global crop;
    for a local or mixed view its online features (detached unless the target branch is the online one)."""
    if a < len(b.negative):
        return b.negative[a]
    same_branch = b.negative[0] is b.online[0]
    return b.online[a] if same_branch else b.online[a].detach()


def _surrogate_over_pairs(b: Branches, grad: Callable[[int, int, Tensor], tuple[Tensor, Tensor]]) -> Tensor:
    """Mean over the pairs (a, c) of the surrogate ``mean_i <g_ac,i, l2n(online_a)_i>``.

    ``grad(a, c, positive)`` returns ``(g, potential)``; the loss value is the mean potential (see
    :func:`siamgrad.core.gradient.gradient_form_loss`), its gradient ``g / N`` per pair. For a mixed
    view, ``g`` and the potential are blended with its ratio (:func:`_against`).
    """
    terms = []
    for a, c in _pairs(b):
        g, value = _against(b, a, c, lambda pos: grad(a, c, pos))
        terms.append(gradient_form_loss(l2n(b.online[a]), g, value))
    return _pair_mean(terms)


def _loss_over_pairs(b: Branches, loss: Callable[[int, int, Tensor], Tensor]) -> Tensor:
    """Mean over the pairs (a, c) of ``loss(a, c, positive)`` (blended for mixed views)."""
    return _pair_mean([_against(b, a, c, lambda pos: loss(a, c, pos)) for a, c in _pairs(b)])


# -- contrastive


def simclr_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    tau = o["temperature"]
    loss = _loss_over_pairs(
        b, lambda a, c, pos: con.batch_contrastive_loss(b.online[a], pos, [_own_negative(b, a), b.negative[c]], tau)
    )
    return loss, {}


def simclr_gradient(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    tau, lam = o["temperature"], o["lam"]
    loss = _surrogate_over_pairs(
        b,
        lambda a, c, pos: con.batch_contrastive_gradient(
            b.online[a], pos, [_own_negative(b, a), b.negative[c]], tau, lam, with_value=True
        ),
    )
    return loss, {"lambda": torch.tensor(lam)}


def moco_original(b: Branches, o: dict, st: FeatureQueue) -> tuple[Tensor, Logs]:
    tau = o["temperature"]
    loss = _loss_over_pairs(b, lambda a, c, pos: con.queue_contrastive_loss(b.online[a], pos, st.queue, tau))
    return loss, {}


def moco_gradient(b: Branches, o: dict, st: FeatureQueue) -> tuple[Tensor, Logs]:
    tau, lam = o["temperature"], o["lam"]
    loss = _surrogate_over_pairs(
        b, lambda a, c, pos: con.queue_contrastive_gradient(b.online[a], pos, st.queue, tau, lam, with_value=True)
    )
    return loss, {"lambda": torch.tensor(lam)}


# -- asymmetric


def byol_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    return 2.0 * _loss_over_pairs(b, lambda a, c, pos: asym.byol_loss(b.predicted[a], pos)), {}


def simsiam_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    return _loss_over_pairs(b, lambda a, c, pos: asym.simsiam_loss(b.predicted[a], pos)), {}


def directpred_original(b: Branches, o: dict, st: DirectPredictor) -> tuple[Tensor, Logs]:
    predicted = [st(z) for z in b.online]
    return 2.0 * _loss_over_pairs(b, lambda a, c, pos: asym.byol_loss(predicted[a], pos)), {}


def asymmetric_gradient(b: Branches, o: dict, st: CorrelationEMA) -> tuple[Tensor, Logs]:
    Wp, Ft = asym.precondition(st.F, o["eps"], o.get("clamp", 1e-4))
    lam = None if o["lam"] == "auto" else o["lam"]
    identity = o["positive_predictor"] == "identity"
    lams: list[Tensor] = []

    def grad(a: int, c: int, pos: Tensor) -> tuple[Tensor, Tensor]:
        g, lam_i, value = asym.asymmetric_gradient(b.online[a], pos, Wp, Ft, lam, identity, with_value=True)
        lams.append(lam_i.mean())
        return g, value

    loss = _surrogate_over_pairs(b, grad)
    return loss, {"lambda": torch.stack(lams).mean()}


# -- decorrelation


def barlow_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    """Two views: Barlow Twins; M >= 3 same-size views: its multi-view form; with local crops or
    mixing: the two-view loss averaged over the view pairs (blended for mixed views)."""
    l2 = o["l2"] or o["width_scaled"]
    if not b.plain:
        on, off = _pair_terms(b, lambda a, c, pos: dec.barlow_twins_terms(b.online[a], pos, l2=l2))
    elif len(b.online) == 2:
        on, off = dec.barlow_twins_terms(b.online[0], b.online[1], l2=l2)
    else:
        on, off = dec.barlow_twins_multiview_terms(b.online, l2=l2)
    return on + o["lambd_effective"] * off, {"loss_on_diag": on.detach(), "loss_off_diag": off.detach()}


def _pair_terms(b: Branches, terms: Callable[[int, int, Tensor], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """Each term's mean over the pairs (blended for mixed views)."""
    values = [_against(b, a, c, lambda pos: terms(a, c, pos)) for a, c in _pairs(b)]
    return tuple(torch.stack(column).mean() for column in zip(*values))


def barlow_gradient(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    lam = o["lam"]
    loss = _surrogate_over_pairs(
        b, lambda a, c, pos: dec.barlow_twins_gradient(b.online[a], pos, b.negative[c], lam, with_value=True)
    )
    return loss, {"lambda": torch.tensor(lam)}


def vicreg_original(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    """VICReg over M same-size views; with local crops or mixing the invariance term is the mean over
    the view pairs (blended for mixed views), variance and covariance over every online view."""
    if b.plain:
        inv, var, cov = dec.vicreg_terms(b.online)
    else:
        (inv,) = _pair_terms(b, lambda a, c, pos: (dec.vicreg_invariance(b.online[a], pos),))
        var, cov = dec.vicreg_variance_covariance(b.online)
    loss = o["sim_weight"] * inv + o["var_weight"] * var + o["cov_weight_effective"] * cov
    return loss, {"loss_invariance": inv.detach(), "loss_variance": var.detach(), "loss_covariance": cov.detach()}


def vicreg_gradient(b: Branches, o: dict, st: Any) -> tuple[Tensor, Logs]:
    lam = o["lam"]
    loss = _surrogate_over_pairs(b, lambda a, c, pos: dec.vicreg_gradient(b.online[a], pos, lam, with_value=True))
    return loss, {"lambda": torch.tensor(lam)}


# -- unigrad


def unigrad_original(b: Branches, o: dict, st: CorrelationEMA) -> tuple[Tensor, Logs]:
    F = st.F
    loss = _loss_over_pairs(b, lambda a, c, pos: uni.unigrad_loss(b.online[a], pos, F, o["lam"]))
    return loss, {"lambda": torch.tensor(o["lam"])}


def unigrad_gradient(b: Branches, o: dict, st: CorrelationEMA) -> tuple[Tensor, Logs]:
    F = st.F
    loss = _surrogate_over_pairs(
        b, lambda a, c, pos: uni.unigrad_gradient(b.online[a], pos, F, o["lam"], with_value=True)
    )
    return loss, {"lambda": torch.tensor(o["lam"])}
