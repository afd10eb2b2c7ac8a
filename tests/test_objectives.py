"""Contrastive and UniGrad objectives against closed-form gradients written independently in numpy.

Every check runs in float64 with random inputs of several sizes; the reference gradient w.r.t.
the raw feature ``z`` is derived on paper: first w.r.t. the normalized ``u = z/||z||``, then through
the normalization, ``dL/dz = (I - u u^T) dL/du / ||z||``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siamgrad.core.gradient import l2n, surrogate_loss, unified_gradient
from siamgrad.methods.states import CorrelationEMA
from siamgrad.core.objectives import contrastive as con
from siamgrad.core.objectives import unigrad as uni
from conftest import check_close, leaf64, normalize, through_normalization

SIZES = [(4, 3), (7, 5), (16, 8)]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------- SimCLR NT-Xent


def _nt_xent_numpy(z1: np.ndarray, z2: np.ndarray, tau: float) -> tuple[float, np.ndarray, np.ndarray]:
    """NT-Xent value and gradients. With U = [u1; u2] (2N rows), S = U U^T / tau, self excluded,
    P = row-softmax, Q the positive indicator: L = mean_a (-S[a, pos a] + logsumexp_{b != a} S[a, b]),
    dL/dU = ((P - Q) U + (P - Q)^T U) / (2 N tau)."""
    n = z1.shape[0]
    z = np.concatenate([z1, z2])
    u = normalize(z)
    s = u @ u.T / tau
    np.fill_diagonal(s, -np.inf)
    p = _softmax(s)
    q = np.zeros_like(p)
    idx = np.arange(n)
    q[idx, idx + n] = 1
    q[idx + n, idx] = 1
    m = s.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(s - m).sum(axis=1, keepdims=True))).ravel()
    pos_logits = np.concatenate([s[idx, idx + n], s[idx + n, idx]])
    value = float(np.mean(-pos_logits + lse))
    grad_u = ((p - q) @ u + (p - q).T @ u) / (2 * n * tau)
    grad_z = through_normalization(z, grad_u)
    return value, grad_z[:n], grad_z[n:]


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_gradient_matches_closed_form(n: int, d: int, tau: float) -> None:
    rng = _rng(n * 100 + d)
    z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    t1, t2 = leaf64(z1), leaf64(z2)
    loss = con.nt_xent_loss(t1, t2, tau)
    loss.backward()
    value, g1, g2 = _nt_xent_numpy(z1, z2, tau)
    assert loss.item() == pytest.approx(value, rel=1e-10)
    check_close(t1.grad, g1)
    check_close(t2.grad, g2)


def test_nt_xent_hand_computed_identical_orthonormal_views() -> None:
    # Views identical, rows e1, e2: each anchor has positive similarity 1 and two negatives of 0,
    # so every anchor's loss is -1/tau + log(e^{1/tau} + 2).
    z = torch.eye(4, dtype=torch.float64)[:2]
    for tau in (1.0, 0.5):
        expected = -1 / tau + math.log(math.exp(1 / tau) + 2)
        assert con.nt_xent_loss(z, z.clone(), tau).item() == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------- MoCo InfoNCE


def _moco_numpy(q: np.ndarray, k: np.ndarray, queue: np.ndarray, tau: float):
    """Per anchor l = -q.k/tau + log(e^{q.k/tau} + sum_j e^{q.Q_j/tau}); dl/du_q = (1/tau)(-k + sum_v p_v v),
    dl/du_k = (1/tau)(p_k - 1) u_q; the loss is the mean over anchors."""
    n = q.shape[0]
    uq, uk = normalize(q), normalize(k)
    logits = np.concatenate([np.sum(uq * uk, axis=1, keepdims=True), uq @ queue.T], axis=1) / tau
    p = _softmax(logits)
    m = logits.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True))).ravel()
    value = float(np.mean(-logits[:, 0] + lse))
    gu_q = (-uk + p[:, :1] * uk + p[:, 1:] @ queue) / tau / n
    gu_k = (p[:, :1] - 1) * uq / tau / n
    return value, through_normalization(q, gu_q), through_normalization(k, gu_k), p


@pytest.mark.parametrize("n,d", SIZES)
def test_moco_infonce_gradient_matches_closed_form(n: int, d: int) -> None:
    rng = _rng(7 + n + d)
    q, k = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    queue = normalize(rng.normal(size=(11, d)))
    tq, tk = leaf64(q), leaf64(k)
    loss = con.queue_contrastive_loss(tq, tk, torch.tensor(queue), 0.2)
    loss.backward()
    value, gq, gk, _ = _moco_numpy(q, k, queue, 0.2)
    assert loss.item() == pytest.approx(value, rel=1e-10)
    check_close(tq.grad, gq)
    check_close(tk.grad, gk)


def test_batch_contrastive_with_detached_targets_matches_infonce_over_other_images() -> None:
    # Directional loss with a separate target branch: negatives are the targets of the *other*
    # images of both views; check against the numpy InfoNCE with that negative set.
    rng = _rng(3)
    n, d, tau = 6, 5, 0.3
    q, k, t1 = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(n, d))
    tq = leaf64(q)
    loss = con.batch_contrastive_loss(tq, torch.tensor(k), [torch.tensor(t1), torch.tensor(k)], tau)
    loss.backward()
    uq, uk, ut1 = normalize(q), normalize(k), normalize(t1)
    total = 0.0
    grad_u = np.zeros_like(q)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        bank = np.concatenate([uk[i : i + 1], ut1[others], uk[others]])
        logits = bank @ uq[i] / tau
        p = np.exp(logits - logits.max())
        p /= p.sum()
        total += -logits[0] + logits.max() + np.log(np.exp(logits - logits.max()).sum())
        grad_u[i] = (-uk[i] + p @ bank) / tau / n
    assert loss.item() == pytest.approx(total / n, rel=1e-10)
    check_close(tq.grad, through_normalization(q, grad_u))


# ------------------------------------------------------------------------------- gradient forms


def test_surrogate_loss_gradient_is_g_over_n() -> None:
    rng = _rng(11)
    z, g = rng.normal(size=(9, 4)), rng.normal(size=(9, 4))
    tz = leaf64(z)
    surrogate_loss(tz, torch.tensor(g)).backward()
    check_close(tz.grad, g / 9)
    # and through the l2-normalization: the tangent projection of g/N, divided by ||z||
    tz2 = leaf64(z)
    surrogate_loss(l2n(tz2), torch.tensor(g)).backward()
    check_close(tz2.grad, through_normalization(z, g / 9))


def test_unified_gradient_formula() -> None:
    rng = _rng(12)
    pos, neg = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    g = unified_gradient(torch.tensor(pos), torch.tensor(neg), 2.5, scale=0.5)
    np.testing.assert_allclose(g.numpy(), 0.5 * (-pos + 2.5 * neg), rtol=1e-14)


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("lam", [1.0, 0.7])
def test_simclr_gradient_form(n: int, d: int, lam: float) -> None:
    # g = (1/tau)(-u2^m + lam sum_{v in V} softmax(u1.v/tau) v), V = both views' targets (2N rows)
    rng = _rng(n + 5 * d)
    z, t1, t2 = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(n, d))
    tau = 0.2
    g = con.batch_contrastive_gradient(torch.tensor(z), torch.tensor(t2), [torch.tensor(t1), torch.tensor(t2)], tau, lam)
    u, bank = normalize(z), np.concatenate([normalize(t1), normalize(t2)])
    s = _softmax(u @ bank.T / tau)
    expected = (-normalize(t2) + lam * s @ bank) / tau
    check_close(g, expected)
    tz = leaf64(z)
    surrogate_loss(l2n(tz), g).backward()
    check_close(tz.grad, through_normalization(z, expected / n))


@pytest.mark.parametrize("n,d", SIZES)
def test_moco_gradient_form_equals_infonce_gradient_at_lam_one(n: int, d: int) -> None:
    rng = _rng(2 * n + d)
    q, k = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    queue = normalize(rng.normal(size=(13, d)))
    g = con.queue_contrastive_gradient(torch.tensor(q), torch.tensor(k), torch.tensor(queue), 0.2, 1.0)
    tq = leaf64(q)
    surrogate_loss(l2n(tq), g).backward()
    _, gq, _, p = _moco_numpy(q, k, queue, 0.2)
    check_close(tq.grad, gq)
    # and the stated formula with lam != 1
    g2 = con.queue_contrastive_gradient(torch.tensor(q), torch.tensor(k), torch.tensor(queue), 0.2, 3.0)
    uk = normalize(k)
    check_close(g2, (-uk + 3.0 * (p[:, :1] * uk + p[:, 1:] @ queue)) / 0.2)


# ------------------------------------------------------------------------------- UniGrad


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("lam", [100.0, 3.0])
def test_unigrad_loss_and_gradient_form_match_closed_form(n: int, d: int, lam: float) -> None:
    rng = _rng(n * d)
    z, t = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    v = normalize(rng.normal(size=(3 * n, d)))
    F = v.T @ v / v.shape[0]
    u, ut = normalize(z), normalize(t)
    value = np.mean(-np.sum(u * ut, axis=1) + 0.5 * lam * np.einsum("ij,jk,ik->i", u, F, u))
    expected_g = -ut + lam * u @ F
    expected = through_normalization(z, expected_g / n)

    tz = leaf64(z)
    loss = uni.unigrad_loss(tz, torch.tensor(t), torch.tensor(F), lam)
    loss.backward()
    assert loss.item() == pytest.approx(value, rel=1e-10)
    check_close(tz.grad, expected)

    g = uni.unigrad_gradient(torch.tensor(z), torch.tensor(t), torch.tensor(F), lam)
    check_close(g, expected_g)
    tz2 = leaf64(z)
    surrogate_loss(l2n(tz2), g).backward()
    check_close(tz2.grad, expected)


def test_unigrad_hand_computed_identical_orthonormal_views() -> None:
    # u = t = rows e1, e2 of R^4; F = E[v v^T] over the same rows = diag(1/2, 1/2, 0, 0):
    # loss = -1 + (lam/2) * 1/2 per sample.
    u = torch.eye(4, dtype=torch.float64)[:2]
    F = u.T @ u / 2
    assert uni.unigrad_loss(u, u, F, 10.0).item() == pytest.approx(-1 + 10.0 / 4, rel=1e-12)


def test_correlation_ema_matches_direct_recomputation() -> None:
    rng = _rng(21)
    ema = CorrelationEMA(4, rho=0.9).double()
    expected = None
    for _ in range(5):
        fb = rng.normal(size=(4, 4))
        fb = fb @ fb.T
        ema.update(torch.tensor(fb))
        expected = fb if expected is None else 0.9 * expected + 0.1 * fb
        np.testing.assert_allclose(ema.F.numpy(), expected, rtol=1e-12)
    assert int(ema.updates) == 5


@pytest.mark.parametrize("target", ["stopgrad", "momentum", "momentum_positive"])
def test_unigrad_method_F_matches_moving_average_recomputation(target: str) -> None:
    # F <- rho F + (1 - rho) (1/M) sum_a U_a^T U_a / N over the l2-normalized features of the
    # negative-source branch (target features; online ones for momentum_positive); first step F_batch.
    from torch import nn

    from siamgrad import methods

    torch.manual_seed(0)
    method = methods.build(
        "unigrad", nn.Sequential(nn.Flatten(), nn.Linear(48, 12)), 12,
        proj_hidden_dim=16, proj_output_dim=6, rho=0.8, target=target,
    ).double()
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    F_expected = None
    for step in range(4):
        views = [torch.randn(10, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3)]
        with torch.no_grad():
            b = method.branches(views)
            source = b.online if target == "momentum_positive" else b.positive
            us = [normalize(z.numpy()) for z in source]
            online = [normalize(z.numpy()) for z in b.online]
            positive = [normalize(z.numpy()) for z in b.positive]
        fb = sum(u.T @ u for u in us) / (3 * 10)
        F_expected = fb if F_expected is None else 0.8 * F_expected + 0.2 * fb
        loss, _ = method.training_step(views)
        np.testing.assert_allclose(method.state.F.numpy(), F_expected, rtol=1e-10, atol=1e-14)
        # the loss: mean over the 6 ordered view pairs of E[-cos(u_a, u_b^m) + (lam/2) u_a^T F u_a]
        pairs = [(a, c) for a in range(3) for c in range(3) if a != c]
        value = np.mean(
            [np.mean(-np.sum(online[a] * positive[c], 1) + 50.0 * np.einsum("ij,jk,ik->i", online[a], F_expected, online[a])) for a, c in pairs]
        )
        assert loss.item() == pytest.approx(value, rel=1e-10)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_step_end(step, 4)
    assert int(method.state.updates) == 4


def test_unigrad_original_and_gradient_forms_give_identical_parameter_gradients() -> None:
    from torch import nn

    from siamgrad import methods

    grads = {}
    for form in ("original", "gradient"):
        torch.manual_seed(0)
        method = methods.build(
            "unigrad", nn.Sequential(nn.Flatten(), nn.Linear(48, 12)), 12, proj_hidden_dim=16, proj_output_dim=6, form=form
        ).double()
        g = torch.Generator().manual_seed(2)
        views = [torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(2)]
        loss, _ = method.training_step(views)
        loss.backward()
        grads[form] = [p.grad.clone() for p in method.parameters() if p.grad is not None]
        grads[form + "_loss"] = loss.item()
    assert grads["original_loss"] == pytest.approx(grads["gradient_loss"], rel=1e-12)
    for a, b in zip(grads["original"], grads["gradient"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
