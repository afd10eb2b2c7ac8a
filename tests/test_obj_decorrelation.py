"""Barlow Twins / VICReg (two- and multi-view) and their gradient forms against numpy closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siamgrad import methods
from siamgrad.core.gradient import l2n, surrogate_loss
from siamgrad.core.objectives import decorrelation as dec
from conftest import check_close, leaf64, normalize, through_normalization

SIZES = [(5, 3), (8, 6), (16, 4)]
BN_EPS = 1e-5


def _standardize(z: np.ndarray, eps: float = BN_EPS) -> np.ndarray:
    return (z - z.mean(0)) / np.sqrt(z.var(0) + eps)


def _through_standardization(z: np.ndarray, grad_h: np.ndarray, eps: float = BN_EPS) -> np.ndarray:
    """h = (z - mu)/s, s = sqrt(var + eps) per column (biased var):
    dL/dz = (dh - mean(dh)) / s - x * mean(dh * x) / s^3, x = z - mu."""
    x = z - z.mean(0)
    s = np.sqrt(z.var(0) + eps)
    return (grad_h - grad_h.mean(0)) / s - x * (grad_h * x).mean(0) / s**3


def _offdiag(c: np.ndarray) -> np.ndarray:
    return c - np.diag(np.diag(c))


# ------------------------------------------------------------------------------- Barlow Twins


def _barlow_numpy(z1, z2, lambd, l2=False):
    """L = sum_k (1 - C_kk)^2 + lambd sum_{k!=l} C_kl^2, C = H1^T H2 / N.
    dL/dC = G with G_kk = -2 (1 - C_kk), G_kl = 2 lambd C_kl; dL/dH1 = H2 G^T / N, dL/dH2 = H1 G / N."""
    a, b = (normalize(z1), normalize(z2)) if l2 else (z1, z2)
    n = a.shape[0]
    h1, h2 = _standardize(a), _standardize(b)
    c = h1.T @ h2 / n
    value = np.sum((1 - np.diag(c)) ** 2) + lambd * np.sum(_offdiag(c) ** 2)
    G = 2 * lambd * _offdiag(c) - 2 * np.diag(1 - np.diag(c))
    g1 = _through_standardization(a, h2 @ G.T / n)
    g2 = _through_standardization(b, h1 @ G / n)
    if l2:
        g1, g2 = through_normalization(z1, g1), through_normalization(z2, g2)
    return value, g1, g2


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("l2", [False, True])
def test_barlow_twins_gradient_matches_closed_form(n: int, d: int, l2: bool) -> None:
    rng = np.random.default_rng(n * 7 + d)
    z1, z2 = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.5 * rng.normal(size=(1, d))
    t1, t2 = leaf64(z1), leaf64(z2)
    loss = dec.barlow_twins_loss([t1, t2], lambd=0.3, l2=l2)
    loss.backward()
    value, g1, g2 = _barlow_numpy(z1, z2, 0.3, l2)
    assert loss.item() == pytest.approx(value, rel=1e-10)
    check_close(t1.grad, g1)
    check_close(t2.grad, g2)


def _hadamard_columns() -> np.ndarray:
    # 4 samples x 3 dims: zero-mean, unit (biased) variance, mutually orthogonal columns
    return np.array([[1, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]], dtype=np.float64)


def test_barlow_twins_hand_computed() -> None:
    z = torch.tensor(_hadamard_columns())
    d = 3
    k = 1 / (1 + BN_EPS)  # standardized columns have norm^2 / N = 1 / (1 + eps)
    # identical views: C = k I
    assert dec.barlow_twins_loss([z, z.clone()], 0.5).item() == pytest.approx(d * (1 - k) ** 2, rel=1e-9)
    # opposite views: C = -k I
    assert dec.barlow_twins_loss([z, -z], 0.5).item() == pytest.approx(d * (1 + k) ** 2, rel=1e-12)
    # second view = first with columns permuted (0,1,2) -> (1,2,0): C is a permutation matrix * k
    zp = z[:, [1, 2, 0]]
    assert dec.barlow_twins_loss([z, zp], 0.5).item() == pytest.approx(d + 0.5 * d * k**2, rel=1e-12)


def _barlow_multiview_numpy(zs, lambd, l2=False):
    """Joint standardization over the M*N rows; hbar = mean_a H_a; c_ak = (H_a^T hbar / N)_kk;
    L = (1/M) sum_a sum_k (1 - c_ak)^2 + lambd sum_{k!=l} Cbar_kl^2, Cbar = hbar^T hbar / N.
    dL/dH_b = (1/N) [dc_b * hbar + (1/M) sum_a dc_a * H_a] + (1/M) (4 lambd / N) hbar offdiag(Cbar),
    with dc_a = -(2/M) (1 - c_a) broadcast over rows."""
    m, n = len(zs), zs[0].shape[0]
    a = [normalize(z) for z in zs] if l2 else list(zs)
    joint = np.concatenate(a)
    H = np.split(_standardize(joint), m)
    hbar = sum(H) / m
    c = [np.sum(h * hbar, axis=0) / n for h in H]
    cbar = hbar.T @ hbar / n
    value = np.mean([np.sum((1 - ci) ** 2) for ci in c]) + lambd * np.sum(_offdiag(cbar) ** 2)
    dc = [-(2 / m) * (1 - ci) for ci in c]
    common = sum(dci * h for dci, h in zip(dc, H)) / (m * n) + (4 * lambd / n) * hbar @ _offdiag(cbar) / m
    grad_H = [dc[b] * hbar / n + common for b in range(m)]
    grads = np.split(_through_standardization(joint, np.concatenate(grad_H)), m)
    if l2:
        grads = [through_normalization(z, g) for z, g in zip(zs, grads)]
    return value, grads


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("m,l2", [(3, False), (4, True)])
def test_multiview_barlow_twins_gradient_matches_closed_form(n: int, d: int, m: int, l2: bool) -> None:
    rng = np.random.default_rng(m * 100 + n + d)
    zs = [rng.normal(size=(n, d)) + 0.3 * i for i in range(m)]
    ts = [leaf64(z) for z in zs]
    loss = dec.barlow_twins_loss(ts, lambd=0.2, l2=l2)
    loss.backward()
    value, grads = _barlow_multiview_numpy(zs, 0.2, l2)
    assert loss.item() == pytest.approx(value, rel=1e-10)
    for t, g in zip(ts, grads):
        check_close(t.grad, g)


def test_multiview_barlow_twins_hand_computed_identical_views() -> None:
    z = torch.tensor(_hadamard_columns())
    k = 1 / (1 + BN_EPS)
    # identical views: hbar = H, c_ak = k, Cbar = k I
    assert dec.barlow_twins_loss([z, z, z], 0.5).item() == pytest.approx(3 * (1 - k) ** 2, rel=1e-9)


# ------------------------------------------------------------------------------- VICReg


def _vicreg_numpy(zs, ws, wv, wc, gamma=1.0, eps=1e-4):
    """Each view against the leave-one-out mean of the others; variance averaged, covariance 2 x mean."""
    m = len(zs)
    n, d = zs[0].shape
    total = sum(zs)
    loo = [(total - z) / (m - 1) for z in zs]
    inv = np.mean([np.mean((z - l) ** 2) for z, l in zip(zs, loo)])
    r = [z - l for z, l in zip(zs, loo)]
    g_inv = [(2 / (m * n * d)) * (r[b] - sum(r[a] for a in range(m) if a != b) / (m - 1)) for b in range(m)]
    var, cov, g_var, g_cov = 0.0, 0.0, [], []
    for z in zs:
        x = z - z.mean(0)
        std = np.sqrt(z.var(0, ddof=1) + eps)
        active = (gamma - std) > 0
        var += np.mean(np.maximum(gamma - std, 0)) / m
        g_var.append(-(active / (m * d)) * x / ((n - 1) * std))
        C = x.T @ x / (n - 1)
        cov += 2 * np.sum(_offdiag(C) ** 2) / d / m
        g_cov.append((2 / (m * d)) * (4 / (n - 1)) * x @ _offdiag(C))
    value = ws * inv + wv * var + wc * cov
    grads = [ws * a + wv * b + wc * c for a, b, c in zip(g_inv, g_var, g_cov)]
    return value, (inv, var, cov), grads


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("m", [2, 3])
def test_vicreg_gradient_matches_closed_form(n: int, d: int, m: int) -> None:
    rng = np.random.default_rng(m * 31 + n * d)
    # mixed scales so that some variance hinges are active and some are not
    scales = np.linspace(0.3, 2.0, d)
    zs = [rng.normal(size=(n, d)) * scales for _ in range(m)]
    ts = [leaf64(z) for z in zs]
    loss = dec.vicreg_loss(ts, 25.0, 25.0, 1.0)
    loss.backward()
    value, terms, grads = _vicreg_numpy(zs, 25.0, 25.0, 1.0)
    assert loss.item() == pytest.approx(value, rel=1e-10)
    for t, g in zip(ts, grads):
        check_close(t.grad, g)


def test_vicreg_two_views_equals_paper_formula() -> None:
    # paper: s = MSE(z1, z2); v = mean relu(1 - std1)/2 + mean relu(1 - std2)/2; c = sum offdiag(C1)^2/d + same for z2
    rng = np.random.default_rng(4)
    z1, z2 = rng.normal(size=(10, 5)) * 0.5, rng.normal(size=(10, 5)) * 0.7
    s = np.mean((z1 - z2) ** 2)
    v = sum(np.mean(np.maximum(1 - np.sqrt(z.var(0, ddof=1) + 1e-4), 0)) / 2 for z in (z1, z2))
    c = sum(np.sum(_offdiag(np.cov(z.T)) ** 2) / 5 for z in (z1, z2))
    inv, var, cov = dec.vicreg_terms([torch.tensor(z1), torch.tensor(z2)])
    assert (inv.item(), var.item(), cov.item()) == pytest.approx((s, v, c), rel=1e-12)


def test_vicreg_hand_computed() -> None:
    z = torch.tensor(_hadamard_columns())  # unbiased variance 4/3 > 1: no variance penalty; orthogonal: no covariance
    inv, var, cov = dec.vicreg_terms([z, z + 0.5])
    assert inv.item() == pytest.approx(0.25) and var.item() == 0.0 and cov.item() == pytest.approx(0.0, abs=1e-15)
    # collapsed views: std = sqrt(1e-4) = 0.01 -> variance term 0.99
    flat = torch.zeros(4, 3, dtype=torch.float64)
    assert dec.vicreg_terms([flat, flat])[1].item() == pytest.approx(0.99)


# ------------------------------------------------------------------------------- gradient forms


@pytest.mark.parametrize("n,d", SIZES)
def test_barlow_twins_gradient_form(n: int, d: int) -> None:
    # g = 2 (-u2^m + lam sum_j (u2^m . v2_j / N) v1_j), v1 online of the anchor's view, v2 targets
    rng = np.random.default_rng(n + 3 * d)
    z, t, v = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(n, d))
    g = dec.barlow_twins_gradient(torch.tensor(z), torch.tensor(t), torch.tensor(v), lam=50.0)
    u, ut, uv = normalize(z), normalize(t), normalize(v)
    expected = 2 * (-ut + 50.0 * (ut @ uv.T / n) @ u)
    check_close(g, expected)
    tz = leaf64(z)
    surrogate_loss(l2n(tz), g).backward()
    check_close(tz.grad, through_normalization(z, expected / n))


@pytest.mark.parametrize("n,d", SIZES)
def test_vicreg_gradient_form(n: int, d: int) -> None:
    # g = 2 (-u2^m + lam C (u1 - mu)), C, mu: covariance (1/N) and mean of the online view
    rng = np.random.default_rng(2 * n + d)
    z, t = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    g = dec.vicreg_gradient(torch.tensor(z), torch.tensor(t), lam=50.0)
    u, ut = normalize(z), normalize(t)
    mu = u.mean(0)
    C = (u - mu).T @ (u - mu) / n
    expected = 2 * (-ut + 50.0 * (u - mu) @ C)
    check_close(g, expected)
    tz = leaf64(z)
    surrogate_loss(l2n(tz), g).backward()
    check_close(tz.grad, through_normalization(z, expected / n))


# ------------------------------------------------------------------------------- width-scaled lambda


def test_width_scaled_lambda_table_and_log_linear_interpolation() -> None:
    table = {128: 0.04, 256: 0.02, 512: 0.01, 1024: 0.002, 2048: 0.001, 8192: 0.0008}
    for d, lam in table.items():
        assert dec.width_scaled_lambda(d) == pytest.approx(lam, rel=1e-12)
    # halfway in log(d) between 256 and 512 -> geometric mean of the lambdas
    assert dec.width_scaled_lambda(round(math.sqrt(256 * 512))) == pytest.approx(math.sqrt(0.02 * 0.01), rel=1e-3)
    assert dec.width_scaled_lambda(4096) == pytest.approx(math.exp(0.5 * math.log(0.001) + 0.5 * math.log(0.0008)))
    assert dec.width_scaled_lambda(64) == 0.04 and dec.width_scaled_lambda(16384) == 0.0008


def test_width_scaled_option_sets_lambda_and_l2_normalization() -> None:
    from torch import nn

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(48, 16))
    bt = methods.build("barlow_twins", backbone, 16, proj_hidden_dim=32, proj_output_dim=256, width_scaled=True)
    assert bt.params["lambd_effective"] == pytest.approx(0.02)
    views = [torch.randn(8, 3, 4, 4) for _ in range(2)]
    loss, logs = bt.training_step(views)
    with torch.no_grad():
        b = bt.branches(views)
        on, off = dec.barlow_twins_terms(l2n(b.online[0]), l2n(b.online[1]))
    assert loss.item() == pytest.approx((on + 0.02 * off).item(), rel=1e-5)
    # l2 alone: the same normalization with the given lambd; neither: the features as they are
    torch.manual_seed(0)
    bt_l2 = methods.build("barlow_twins", backbone, 16, proj_hidden_dim=32, proj_output_dim=256, l2=True, lambd=0.3)
    loss_l2, _ = bt_l2.training_step(views)
    torch.manual_seed(0)
    bt_raw = methods.build("barlow_twins", backbone, 16, proj_hidden_dim=32, proj_output_dim=256, lambd=0.3)
    loss_raw, _ = bt_raw.training_step(views)
    with torch.no_grad():
        b = bt_l2.branches(views)
        on, off = dec.barlow_twins_terms(l2n(b.online[0]), l2n(b.online[1]))
        on_r, off_r = dec.barlow_twins_terms(b.online[0], b.online[1])
    assert bt_l2.params["lambd_effective"] == 0.3
    assert loss_l2.item() == pytest.approx((on + 0.3 * off).item(), rel=1e-5)
    assert loss_raw.item() == pytest.approx((on_r + 0.3 * off_r).item(), rel=1e-5)
    assert abs(loss_l2.item() - loss_raw.item()) > 1e-4
    vic = methods.build("vicreg", backbone, 16, proj_hidden_dim=32, proj_output_dim=512, width_scaled=True, cov_weight=2.0)
    assert vic.params["cov_weight_effective"] == pytest.approx(2.0 * 0.01 / 0.0008)
