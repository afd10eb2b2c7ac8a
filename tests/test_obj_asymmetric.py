"""BYOL / SimSiam / DirectPred objectives against closed forms written independently in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from siamgrad import methods
from siamgrad.methods.states import DirectPredictor
from siamgrad.core.gradient import l2n, surrogate_loss
from siamgrad.core.objectives import asymmetric as asym
from conftest import check_close, leaf64, normalize, through_normalization

SIZES = [(4, 3), (7, 5), (16, 8)]


def _psd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(rank or 2 * d, d))
    return a.T @ a / a.shape[0]


# ------------------------------------------------------------------------------- cosine losses


@pytest.mark.parametrize("n,d", SIZES)
def test_byol_and_simsiam_loss_gradients(n: int, d: int) -> None:
    # l = mean_i (2 - 2 cos(p_i, z_i)): dl/du_p = -2 zhat / N, through the normalization of p;
    # z is detached (stop-gradient) and gets no gradient.
    rng = np.random.default_rng(n + d)
    p, z = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    cos = np.sum(normalize(p) * normalize(z), axis=1)
    tp, tz = leaf64(p), leaf64(z)
    loss = asym.byol_loss(tp, tz)
    loss.backward()
    assert loss.item() == pytest.approx(np.mean(2 - 2 * cos), rel=1e-12)
    check_close(tp.grad, through_normalization(p, -2 * normalize(z) / n))
    assert tz.grad is None

    tp2 = leaf64(p)
    loss2 = asym.simsiam_loss(tp2, leaf64(z))
    loss2.backward()
    assert loss2.item() == pytest.approx(-np.mean(cos), rel=1e-12)
    check_close(tp2.grad, through_normalization(p, -normalize(z) / n))


def test_cosine_losses_hand_computed() -> None:
    e = torch.eye(3, dtype=torch.float64)
    # identical directions: BYOL 0, SimSiam -1; orthogonal: 2 and 0; opposite: 4 and 1
    assert asym.byol_loss(e, 3 * e).item() == pytest.approx(0.0, abs=1e-15)
    assert asym.simsiam_loss(e, 3 * e).item() == pytest.approx(-1.0)
    assert asym.byol_loss(e, e[[1, 2, 0]]).item() == pytest.approx(2.0)
    assert asym.simsiam_loss(e, e[[1, 2, 0]]).item() == pytest.approx(0.0, abs=1e-15)
    assert asym.byol_loss(e, -e).item() == pytest.approx(4.0)


# ------------------------------------------------------------------------------- DirectPred predictor


def _predictor_numpy(F: np.ndarray, eps: float, clamp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s, U = np.linalg.eigh(F)
    p = np.maximum(np.sqrt(np.maximum(s, 0) / s.max()) + eps, clamp)
    return U @ np.diag(p) @ U.T, U, p


@pytest.mark.parametrize("d", [3, 6, 10])
def test_directpred_predictor_eigen_structure(d: int) -> None:
    rng = np.random.default_rng(d)
    F = _psd(rng, d)
    W = asym.directpred_weight(torch.tensor(F), eps=0.01).numpy()
    expected, U, p = _predictor_numpy(F, 0.01, 1e-4)
    np.testing.assert_allclose(W, W.T, rtol=0, atol=1e-14)  # symmetric
    np.testing.assert_allclose(W, expected, rtol=1e-10, atol=1e-12)
    # eigenvectors of W are those of F, eigenvalues sqrt(s / s_max) + eps
    np.testing.assert_allclose(W @ U, U * p, rtol=1e-10, atol=1e-12)
    s = np.linalg.eigvalsh(F)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(W)), np.sort(np.sqrt(s / s.max()) + 0.01), rtol=1e-10)
    assert np.max(np.linalg.eigvalsh(W)) == pytest.approx(1.01)


def test_directpred_predictor_clamps_and_ignores_negative_eigenvalues() -> None:
    # F with eigenvalues (4, 1, 0, -0.5): p = (1, 0.5, 0, 0) + eps, clamped at 1e-4 when eps = 0
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    F = Q @ np.diag([4.0, 1.0, 0.0, -0.5]) @ Q.T
    W = asym.directpred_weight(torch.tensor(F), eps=0.0, clamp=1e-4).numpy()
    np.testing.assert_allclose(W @ Q, Q * np.array([1.0, 0.5, 1e-4, 1e-4]), atol=1e-12)
    W2 = asym.directpred_weight(torch.tensor(F), eps=0.01, clamp=1e-4).numpy()
    np.testing.assert_allclose(W2 @ Q, Q * np.array([1.01, 0.51, 0.01, 0.01]), atol=1e-12)


def test_directpred_predictor_f_hat_ema_and_reset_frequency() -> None:
    rng = np.random.default_rng(5)
    pred = DirectPredictor(5, rho=0.3, eps=0.01, freq=2).double()
    F_expected = None
    W_expected = np.eye(5)
    for step in range(5):
        views = [rng.normal(size=(8, 5)) for _ in range(2)]
        fb = sum(v.T @ v for v in views) / (2 * 8)  # both views, no centering
        F_expected = fb if F_expected is None else 0.3 * F_expected + 0.7 * fb
        pred.update([torch.tensor(v) for v in views])
        if step % 2 == 0:
            W_expected = _predictor_numpy(F_expected, 0.01, 1e-4)[0]
        np.testing.assert_allclose(pred.F_hat.numpy(), F_expected, rtol=1e-12)
        np.testing.assert_allclose(pred.weight.numpy(), W_expected, rtol=1e-9, atol=1e-12)
    f = rng.normal(size=(3, 5))
    np.testing.assert_allclose(pred(torch.tensor(f)).numpy(), f @ W_expected.T, rtol=1e-12)


def test_directpred_method_f_hat_over_online_projector_outputs() -> None:
    # Within the method, F_hat must be the EMA of E[f f^T] over the online projector outputs of
    # both views (raw, uncentered), first step = batch F; the loss uses W_p f as the prediction.
    torch.manual_seed(0)
    method = methods.build(
        "directpred", nn.Sequential(nn.Flatten(), nn.Linear(48, 12)), 12, proj_hidden_dim=16, proj_output_dim=6,
        predictor_update="fixed",  # W_p from this step's F_hat (the trained form: tests/test_fidelity.py)
    ).double()
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(3)
    F_expected = None
    for step in range(4):
        views = [torch.randn(10, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(2)]
        with torch.no_grad():
            b = method.branches(views)
            online = [z.numpy() for z in b.online]
            target = [z.numpy() for z in b.positive]
        fb = sum(z.T @ z for z in online) / (2 * 10)
        F_expected = fb if F_expected is None else 0.3 * F_expected + 0.7 * fb
        loss, _ = method.training_step(views)
        np.testing.assert_allclose(method.state.F_hat.numpy(), F_expected, rtol=1e-10, atol=1e-13)
        W = _predictor_numpy(F_expected, 0.01, 1e-4)[0]
        pred = [z @ W.T for z in online]
        cos = [np.sum(normalize(p) * normalize(t), axis=1) for p, t in zip(pred, target[::-1])]
        assert loss.item() == pytest.approx(np.mean(2 - 2 * cos[0]) + np.mean(2 - 2 * cos[1]), rel=1e-10)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_step_end(step, 4)


# ------------------------------------------------------------------------------- gradient form


def _asym_gradient_numpy(z, t, F, eps, lam, identity):
    s, U = np.linalg.eigh(F)
    smax = s.max()
    Wp = U @ np.diag(np.maximum(np.sqrt(np.maximum(s, 0) / smax) + eps, 1e-4)) @ U.T
    Ft = F / smax + eps**2 * np.eye(F.shape[0])
    u, ut = normalize(z), normalize(t)
    wu = u @ Wp.T
    norm = np.linalg.norm(wu, axis=1, keepdims=True)
    pos = ut if identity else ut @ Wp.T
    ftu = u @ Ft.T
    if lam is None:
        lam_i = np.sum(wu * ut, axis=1, keepdims=True) / np.sum(u * ftu, axis=1, keepdims=True)
    else:
        lam_i = np.full((z.shape[0], 1), lam)
    return (-pos + lam_i * ftu) / norm, lam_i


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("lam,identity", [(None, False), (None, True), (2.0, False)])
def test_asymmetric_gradient_form_matches_formula(n: int, d: int, lam, identity: bool) -> None:
    rng = np.random.default_rng(10 * n + d)
    z, t = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    F = _psd(rng, d)
    Wp, Ft = asym.precondition(torch.tensor(F), eps=0.3)
    g, lam_i = asym.asymmetric_gradient(torch.tensor(z), torch.tensor(t), Wp, Ft, lam, identity)
    expected, lam_expected = _asym_gradient_numpy(z, t, F, 0.3, lam, identity)
    check_close(g, expected)
    check_close(lam_i, lam_expected)
    tz = leaf64(z)
    surrogate_loss(l2n(tz), g).backward()
    check_close(tz.grad, through_normalization(z, expected / n))


def test_asymmetric_gradient_form_is_exact_directpred_gradient_without_eps() -> None:
    # With eps = 0 and a full-rank F, F~ = F / s_max = W_p^2, so the adaptive form is the exact
    # gradient of -cos(W_p u1, u2^m) w.r.t. u1: autograd of that loss must agree.
    rng = np.random.default_rng(99)
    n, d = 9, 6
    z, t = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    F = _psd(rng, d)
    Wp, Ft = asym.precondition(torch.tensor(F), eps=0.0)
    g, _ = asym.asymmetric_gradient(torch.tensor(z), torch.tensor(t), Wp, Ft, None, False)
    u = leaf64(normalize(z))
    loss = -(l2n(u @ Wp.T) * l2n(torch.tensor(t))).sum()
    loss.backward()
    check_close(g, u.grad.numpy(), rtol=1e-7)


@pytest.mark.parametrize("n,d", SIZES)
def test_directpred_loss_gradient_through_the_set_predictor(n: int, d: int) -> None:
    # l = mean_i (2 - 2 cos(W f_i, z_i)), W fixed (set from F_hat, not trained):
    # dl/df = W^T [(I - p p^T) (-2 zhat / N) / ||W f||] with p = W f / ||W f||.
    rng = np.random.default_rng(5 * n + d)
    f, z = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    W = asym.directpred_weight(torch.tensor(_psd(rng, d)), eps=0.01)
    tf = leaf64(f)
    loss = asym.byol_loss(tf @ W.T, leaf64(z))
    loss.backward()
    Wn = W.numpy()
    expected = through_normalization(f @ Wn.T, -2 * normalize(z) / n) @ Wn
    check_close(tf.grad, expected)
