"""Diagnostics against closed forms and independent numpy re-derivations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siamgrad import diagnostics as dg
from siamgrad.errors import SiamgradError


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _orthonormal(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """An [n, d] matrix with orthonormal columns (n >= d) from a QR of a Gaussian matrix."""
    q, r = np.linalg.qr(rng.standard_normal((n, d)))
    return q * np.sign(np.diag(r))


def _with_singular_values(s: np.ndarray, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    u = _orthonormal(n, len(s), rng)
    v = _orthonormal(d, len(s), rng)
    return (u * s) @ v.T


def _rankme_closed_form(s: np.ndarray, eps: float = 1e-7) -> float:
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def _sphere(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------
# spectrum and RankMe


def test_correlation_spectrum_matches_numpy_and_sums_to_one():
    z = torch.randn(40, 12, generator=torch.Generator().manual_seed(1))
    eig = dg.correlation_spectrum(z)
    u = z.double().numpy()
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    ref = np.sort(np.linalg.eigvalsh(u.T @ u / 40))[::-1]
    assert eig.shape == (12,)
    np.testing.assert_allclose(eig.numpy(), ref, rtol=1e-10, atol=1e-12)
    assert torch.all(eig[:-1] >= eig[1:])
    assert float(eig.sum()) == pytest.approx(1.0, abs=1e-12)


def test_correlation_spectrum_unnormalized_is_squared_singular_values_over_n():
    rng = _rng(2)
    s = np.array([5.0, 3.0, 1.0, 0.5])
    z = _with_singular_values(s, 30, 6, rng)
    eig = dg.correlation_spectrum(torch.from_numpy(z), normalize=False).numpy()
    np.testing.assert_allclose(eig, np.concatenate([s**2 / 30, [0.0, 0.0]]), atol=1e-10)


def test_effective_rank_known_singular_values():
    rng = _rng(3)
    s = np.array([10.0, 4.0, 2.0, 1.0, 0.25])
    z = _with_singular_values(s, 50, 20, rng)
    # min(N, D) = 20 singular values, 15 of them zero (each still contributes eps to RankMe's p)
    full = np.concatenate([s, np.zeros(15)])
    assert dg.effective_rank(torch.from_numpy(z)) == pytest.approx(_rankme_closed_form(full), rel=1e-9)
    # float32 input too (computation happens in float64)
    assert dg.effective_rank(torch.from_numpy(z).float()) == pytest.approx(_rankme_closed_form(full), rel=1e-4)


def test_effective_rank_orthonormal_rows_and_rank_one():
    rng = _rng(4)
    rows = _orthonormal(16, 7, rng).T  # 7 orthonormal rows in R^16: all singular values 1
    assert dg.effective_rank(torch.from_numpy(rows)) == pytest.approx(7.0, rel=1e-5)
    one = torch.ones(9, 5) * torch.tensor([1.0, 2.0, -1.0, 0.5, 3.0])
    assert dg.effective_rank(one) == pytest.approx(1.0, rel=1e-5)
    assert dg.effective_rank(torch.zeros(4, 3)) == 0.0


# --------------------------------------------------------------------------------------------
# alignment, uniformity, std


def test_alignment_closed_forms():
    u = _sphere(32, 8, 5)
    assert dg.alignment(u, u) == 0.0
    assert dg.alignment(u, -u) == pytest.approx(4.0)
    assert dg.alignment(u, -u, alpha=1) == pytest.approx(2.0)
    v = _sphere(32, 8, 6)
    ref = np.mean(np.linalg.norm(u.numpy() - v.numpy(), axis=1) ** 2)
    assert dg.alignment(u, v) == pytest.approx(ref, rel=1e-12)


def test_uniformity_matches_pairwise_numpy_and_extremes():
    u = _sphere(24, 5, 7)
    x = u.numpy()
    vals = [np.exp(-2 * np.sum((x[i] - x[j]) ** 2)) for i in range(24) for j in range(i + 1, 24)]
    assert dg.uniformity(u) == pytest.approx(np.log(np.mean(vals)), rel=1e-10)
    same = u[:1].repeat(10, 1)
    assert dg.uniformity(same) == pytest.approx(0.0, abs=1e-12)
    # two antipodal clusters: half the pairs at distance^2 4, half... exactly: 2 groups of 5
    anti = torch.cat([u[:1].repeat(5, 1), -u[:1].repeat(5, 1)])
    n_pairs, cross = 45, 25
    expected = math.log(((n_pairs - cross) * 1.0 + cross * math.exp(-8.0)) / n_pairs)
    assert dg.uniformity(anti) == pytest.approx(expected, rel=1e-10)


def test_per_dim_std_uniform_sphere_is_one_over_sqrt_d():
    d = 16
    std = dg.per_dim_std(_sphere(20000, d, 8) * 3.0)  # scale is removed by the normalization
    assert std.shape == (d,)
    assert float(std.mean()) == pytest.approx(1 / math.sqrt(d), rel=0.02)
    assert float(std.min()) > 0.9 / math.sqrt(d)


def test_per_dim_std_identical_features_is_zero():
    z = torch.tensor([[1.0, 2.0, 3.0]]).repeat(8, 1) * torch.linspace(1, 3, 8)[:, None]
    assert float(dg.per_dim_std(z).max()) < 1e-6  # float32 rounding of the input only


# --------------------------------------------------------------------------------------------
# predictor alignment


def _random_psd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.linspace(2.0, 0.05, d, dtype=torch.float64)  # distinct eigenvalues
    return (q * s) @ q.T


def test_predictor_alignment_polynomial_of_f_is_one():
    f = _random_psd(10, 9)
    eye = torch.eye(10, dtype=torch.float64)
    wp = f @ f + 0.5 * f + 0.1 * eye
    assert dg.predictor_alignment(wp, f) == pytest.approx(1.0, abs=1e-10)
    # DirectPred's predictor is a function of F: U diag(sqrt(s / s_max) + eps) U^T
    s, u = torch.linalg.eigh(f)
    wdp = (u * ((s / s.max()).sqrt() + 0.01)) @ u.T
    assert dg.predictor_alignment(wdp, f) == pytest.approx(1.0, abs=1e-10)
    # a negative eigen-direction scores -1 for that direction
    assert dg.predictor_alignment(-wp, f) == pytest.approx(-1.0, abs=1e-10)


def test_predictor_alignment_rotated_predictor_is_lower_and_matches_numpy():
    f = _random_psd(10, 10)
    g = torch.Generator().manual_seed(11)
    r, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    wp = r @ f @ r.T  # same eigenvalues, eigenvectors rotated away from F's
    got = dg.predictor_alignment(wp, f)
    s, phi = np.linalg.eigh(f.numpy())
    w = wp.numpy()
    cos = [phi[:, j] @ w @ phi[:, j] / np.linalg.norm(w @ phi[:, j]) for j in range(10)]
    assert got == pytest.approx(float(np.mean(cos)), rel=1e-9)
    assert got < 0.9
    # top-k restricts to the leading eigenvectors
    order = np.argsort(s)[::-1][:3]
    assert dg.predictor_alignment(wp, f, k=3) == pytest.approx(float(np.mean([cos[j] for j in order])), rel=1e-9)


def test_chance_alignment_scores_a_random_basis_and_separates_a_function_of_f():
    """The chance level re-derived in numpy over the same seeded orthonormal basis; a predictor that is a
    function of F scores 1 against F and less by chance, while the identity scores 1 against any basis."""
    from siamgrad.diagnostics.features import chance_alignment

    f = _random_psd(10, 13)
    wp = f @ f + 0.1 * torch.eye(10, dtype=torch.float64)
    got = chance_alignment(wp, f, seed=3)
    g = torch.Generator().manual_seed(3)
    q = np.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64).numpy())[0]  # k = 10: full rank
    w = wp.numpy()
    expect = np.mean([q[:, j] @ w @ q[:, j] / np.linalg.norm(w @ q[:, j]) for j in range(10)])
    assert got == pytest.approx(float(expect), rel=1e-9)  # a column's sign does not change its cosine
    assert dg.predictor_alignment(wp, f) == pytest.approx(1.0, abs=1e-10) and got < 0.95
    assert chance_alignment(torch.eye(10, dtype=torch.float64), f) == pytest.approx(1.0, abs=1e-12)


def test_predictor_alignment_ignores_null_space_by_default():
    # F of rank 3 in R^8; the predictor is a function of F on its range and arbitrary on the null space
    g = torch.Generator().manual_seed(12)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    f = (q[:, :3] * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ q[:, :3].T
    junk = torch.randn(5, 5, generator=g, dtype=torch.float64)
    wp = (q[:, :3] * torch.tensor([1.0, 0.8, 0.5], dtype=torch.float64)) @ q[:, :3].T + q[:, 3:] @ junk @ q[:, 3:].T
    assert dg.predictor_alignment(wp, f) == pytest.approx(1.0, abs=1e-10)


# --------------------------------------------------------------------------------------------
# feature_stats and collapse


def test_feature_stats_keys_and_values():
    z1 = torch.randn(64, 16, generator=torch.Generator().manual_seed(13))
    z2 = z1 + 0.1 * torch.randn(64, 16, generator=torch.Generator().manual_seed(14))
    st = dg.feature_stats(z1, z2, spectrum=True)
    u1 = z1.double() / z1.double().norm(dim=1, keepdim=True)
    u2 = z2.double() / z2.double().norm(dim=1, keepdim=True)
    u = torch.cat([u1, u2]).numpy()
    s = np.linalg.svd(u, compute_uv=False)
    assert st["width"] == 16 and st["n"] == 128
    assert st["eff_rank"] == pytest.approx(_rankme_closed_form(s), rel=1e-9)
    assert st["std_mean"] == pytest.approx(float(np.std(u, axis=0, ddof=1).mean()), rel=1e-9)
    assert st["std_ratio"] == pytest.approx(st["std_mean"] * 4.0)
    assert st["align"] == pytest.approx(float(np.mean(np.sum((u1 - u2).numpy() ** 2, axis=1))), rel=1e-9)
    eig = np.sort(np.linalg.eigvalsh(u.T @ u / 128))[::-1]
    np.testing.assert_allclose(st["spectrum"], eig, atol=1e-12)
    assert st["spec_top1_frac"] == pytest.approx(eig[0] / eig.sum(), rel=1e-9)
    cum = np.cumsum(eig) / eig.sum()
    assert st["spec_dims90"] == int(np.argmax(cum >= 0.9)) + 1
    rec = dg.diag_record(z1, z2, spectrum=False)
    assert "diag/eff_rank" in rec and "diag/spectrum" not in rec


def test_subspace_features_have_rank_k_and_spectrum_k():
    k, d = 3, 32
    g = torch.Generator().manual_seed(15)
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    z = torch.randn(200, k, generator=g, dtype=torch.float64) @ basis.T
    st = dg.feature_stats(z[:100], z[100:], spectrum=True)
    assert st["eff_rank"] <= k + 1e-3
    assert st["eff_rank"] > k - 1.0  # spread over the k directions
    assert max(st["spectrum"][k:]) < 1e-12


def test_collapse_detector_complete_collapse_after_patience():
    z = torch.tensor([[0.3, -1.0, 2.0, 0.5]]).repeat(32, 1)
    z = z + 1e-7 * torch.randn(32, 4, generator=torch.Generator().manual_seed(16))
    st = dg.feature_stats(z[:16], z[16:])
    det = dg.CollapseDetector(width=4, patience=3)
    assert det.check(st) is None
    assert det.check(st) is None
    msg = det.check({**st, "step": 30})
    assert msg is not None and msg.startswith("complete collapse at step 30") and "\n" not in msg
    assert det.events[-1][1] == "complete"


def test_collapse_detector_dimensional_collapse_and_reset():
    d, k = 64, 2
    g = torch.Generator().manual_seed(17)
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    low = torch.randn(128, k, generator=g) @ basis.T
    healthy = torch.randn(128, d, generator=g)
    st_low = {f"diag/{k_}": v for k_, v in dg.feature_stats(low[:64], low[64:]).items()}
    st_ok = dg.feature_stats(healthy[:64], healthy[64:])
    det = dg.CollapseDetector(width=d, dim_rank_frac=0.1, patience=2)
    assert det.check(st_low) is None
    assert det.check(st_ok) is None  # the streak is broken
    assert det.check(st_low) is None
    msg = det.check(st_low)
    assert msg is not None and msg.startswith("dimensional collapse")
    # healthy features are never flagged; missing keys are not collapse
    det2 = dg.CollapseDetector(width=d, patience=1)
    assert det2.check(st_ok) is None
    assert det2.check({}) is None


# --------------------------------------------------------------------------------------------
# gradient decomposition: closed forms and independent re-derivations
#
# Conventions checked here: gradients are N * dL/dz1 for the online features z1 of view 1; the
# methods average their loss over the 2 ordered view pairs, and with a stop-gradient target only
# the pair (1 -> 2) reaches z1, hence the factors 1/2 below.


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = _rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _tangent(u: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Row-wise (I - u u^T) g."""
    return g - np.sum(g * u, axis=1, keepdims=True) * u


def _np_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _views(n: int = 24, d: int = 8, seed: int = 20, noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    u1 = _unit_rows(n, d, seed)
    u2 = u1 + noise * _rng(seed + 1).standard_normal((n, d))
    return u1, u2 / np.linalg.norm(u2, axis=1, keepdims=True)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).float()


def test_unigrad_true_gradient_is_exactly_the_unified_form():
    u1, u2 = _views()
    lam = 7.5
    F = np.cov(_unit_rows(50, 8, 21).T, bias=True) + 0.05 * np.eye(8)
    d = dg.decompose("unigrad", _t(u1), _t(u2), F=_t(F), options={"lam": lam}, return_tensors=True)
    expected = 0.5 * _tangent(u1, -u2 + lam * u1 @ F)  # F symmetric
    np.testing.assert_allclose(d["tensors"]["true"].numpy(), expected, atol=2e-5)
    assert d["cos_unified"] == pytest.approx(1.0, abs=1e-6)
    assert d["lambda_eff"] == pytest.approx(lam, rel=1e-4)
    assert d["lambda"] == lam and d["scale_eff"] == pytest.approx(1.0, rel=1e-4)
    pos = np.linalg.norm(0.5 * _tangent(u1, -u2), axis=1).mean()
    neg = np.linalg.norm(0.5 * lam * _tangent(u1, u1 @ F), axis=1).mean()
    assert d["pos_norm"] == pytest.approx(pos, rel=1e-4)
    assert d["neg_norm"] == pytest.approx(neg, rel=1e-4)
    assert d["fit_residual"] < 1e-5


def test_raw_features_get_the_normalization_jacobian():
    u1, u2 = _views(seed=22)
    scale = np.linspace(0.5, 3.0, len(u1))[:, None]
    F = np.diag(np.linspace(0.02, 0.3, 8))
    d = dg.decompose("unigrad", _t(u1 * scale), _t(u2 * 2.0), F=_t(F), options={"lam": 3.0}, return_tensors=True)
    expected = 0.5 * _tangent(u1, -u2 + 3.0 * u1 @ F) / scale
    np.testing.assert_allclose(d["tensors"]["true"].numpy(), expected, atol=2e-5)
    assert d["lambda_eff"] == pytest.approx(3.0, rel=1e-4)
    # an isotropic F makes F u1 radial: no negative part reaches the network, lambda is not identifiable
    iso = dg.decompose("unigrad", _t(u1), _t(u2), F=_t(np.eye(8) / 8), options={"lam": 3.0})
    assert iso["neg_norm"] == 0.0 and math.isnan(iso["lambda_eff"])
    assert iso["cos_unified"] == pytest.approx(1.0, abs=1e-6)


def test_identical_views_have_no_positive_part():
    u1, _ = _views(seed=23)
    d = dg.decompose("unigrad", _t(u1), _t(u1))
    assert d["pos_norm"] == 0.0  # -u2 = -u1 is radial: nothing reaches the network
    assert math.isnan(d["lambda_eff"])
    assert d["cos_unified"] == pytest.approx(1.0, abs=1e-6)
    assert d["neg_norm"] == pytest.approx(d["true_norm"], rel=1e-4)


def _infonce_queue_grad(u1: np.ndarray, u2: np.ndarray, queue: np.ndarray, tau: float) -> np.ndarray:
    """d/du1 of -log softmax (positive first) over [u2, queue]: (1/tau)(-u2 + sum_v p_v v)."""
    logits = np.concatenate([np.sum(u1 * u2, 1, keepdims=True), u1 @ queue.T], axis=1) / tau
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return (-u2 + p[:, :1] * u2 + p[:, 1:] @ queue) / tau


def test_moco_infonce_is_exactly_its_unified_form():
    u1, u2 = _views(seed=24)
    queue = _unit_rows(40, 8, 25)
    d = dg.decompose("moco", _t(u1), _t(u2), target="momentum", queue=_t(queue), options={"temperature": 0.2},
                     return_tensors=True)
    expected = 0.5 * _tangent(u1, _infonce_queue_grad(u1, u2, queue, 0.2))
    np.testing.assert_allclose(d["tensors"]["true"].numpy(), expected, atol=1e-4)
    assert d["cos_unified"] == pytest.approx(1.0, abs=1e-6)
    assert d["lambda_eff"] == pytest.approx(1.0, rel=1e-4)


def test_infonce_high_temperature_limit_has_uniform_weights():
    # tau -> inf: softmax weights -> uniform, tau * g -> -u2 + mean_v v over {u2} + queue
    u1, u2 = _views(seed=26)
    queue = _unit_rows(30, 8, 27)
    tau = 1e4
    d = dg.decompose("moco", _t(u1), _t(u2), target="momentum", queue=_t(queue), options={"temperature": tau},
                     return_tensors=True)
    mean_v = (u2 + queue.sum(0)) / 31
    limit = 0.5 * _tangent(u1, -u2 + mean_v)
    np.testing.assert_allclose(tau * d["tensors"]["true"].double().numpy(), limit, atol=2e-3)


def test_simclr_true_gradient_matches_an_independent_nt_xent():
    u1, u2 = _views(n=12, seed=28)
    tau = 0.5
    d = dg.decompose("simclr", _t(u1), _t(u2), target="none", options={"temperature": tau}, return_tensors=True)
    assert d["target_true"] == "none" and d["target_unified"] == "stopgrad"
    # independent NT-Xent over 2N anchors, self-similarity masked, positive = the other view
    x1 = torch.from_numpy(u1).requires_grad_(True)
    x2 = torch.from_numpy(u2)
    z = torch.nn.functional.normalize(torch.cat([x1, x2]), dim=1)
    sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(24, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(12, 24), torch.arange(12)])
    torch.nn.functional.cross_entropy(sim, target).backward()
    np.testing.assert_allclose(d["tensors"]["true"].numpy(), 12 * x1.grad.numpy(), atol=2e-5)
    # the gradient form: (1/tau)(-u2 + lam sum_v softmax(u1.v/tau) v), bank = all 2N rows
    bank = np.concatenate([u1, u2])
    logits = u1 @ bank.T / tau
    s = np.exp(logits - logits.max(1, keepdims=True))
    s /= s.sum(1, keepdims=True)
    g_form = 0.5 * _tangent(u1, (-u2 + s @ bank) / tau)
    np.testing.assert_allclose(d["tensors"]["unified"].numpy(), g_form, atol=2e-5)
    assert d["cos_unified"] == pytest.approx(_np_cos(12 * x1.grad.numpy(), g_form), abs=1e-5)
    # least squares g_true ~ a P + b Q with P = the positive part, Q = the unit-lambda negative part
    P = 0.5 * _tangent(u1, -u2 / tau)
    Q = 0.5 * _tangent(u1, s @ bank / tau)
    (a, b), *_ = np.linalg.lstsq(np.stack([P.ravel(), Q.ravel()], 1), 12 * x1.grad.numpy().ravel(), rcond=None)
    assert d["scale_eff"] == pytest.approx(a, rel=1e-3) and d["lambda_eff"] == pytest.approx(b / a, rel=1e-3)
    assert d["pos_norm"] == pytest.approx(np.linalg.norm(a * P, axis=1).mean(), rel=1e-3)
    assert d["neg_norm"] == pytest.approx(np.linalg.norm(b * Q, axis=1).mean(), rel=1e-3)


def test_barlow_twins_true_gradient_matches_an_independent_loss():
    u1, u2 = _views(n=32, d=6, seed=29)
    lambd = 0.02
    d = dg.decompose("barlow_twins", _t(u1), _t(u2), options={"lambd": lambd, "lam": 5.0}, return_tensors=True)
    x1 = torch.from_numpy(u1).requires_grad_(True)
    x2 = torch.from_numpy(u2)

    def std(x):
        return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)

    c = std(x1).T @ std(x2) / 32
    off = c - torch.diag(torch.diagonal(c))
    ((1 - torch.diagonal(c)) ** 2).sum().add(lambd * (off**2).sum()).backward()
    np.testing.assert_allclose(d["tensors"]["true"].numpy(), 32 * x1.grad.numpy(), atol=1e-4)
    # gradient form: 2(-u2 + lam sum_j (u2 . v2_j / N) v1_j), halved by the pair mean
    g_form = 0.5 * _tangent(u1, 2 * (-u2 + 5.0 * (u2 @ u2.T / 32) @ u1))
    np.testing.assert_allclose(d["tensors"]["unified"].numpy(), g_form, atol=2e-5)
    assert d["cos_unified"] == pytest.approx(_np_cos(32 * x1.grad.numpy(), g_form), abs=1e-5)


def test_vicreg_true_gradient_matches_an_independent_loss():
    rng = _rng(30)
    z1 = rng.standard_normal((20, 5))
    z2 = z1 + 0.3 * rng.standard_normal((20, 5))
    d = dg.decompose("vicreg", _t(z1), _t(z2), return_tensors=True)
    x1 = torch.from_numpy(z1).requires_grad_(True)
    x2 = torch.from_numpy(z2)

    def var(x):
        return torch.relu(1 - torch.sqrt(x.var(0) + 1e-4)).mean()

    def cov(x):
        xc = x - x.mean(0)
        c = xc.T @ xc / (len(x) - 1)
        return ((c - torch.diag(torch.diagonal(c))) ** 2).sum() / x.shape[1]

    loss = 25 * torch.nn.functional.mse_loss(x1, x2) + 25 * (var(x1) + var(x2)) / 2 + (cov(x1) + cov(x2))
    loss.backward()
    np.testing.assert_allclose(d["tensors"]["true"].numpy(), 20 * x1.grad.numpy(), atol=1e-4)
    assert -1.0 <= d["cos_unified"] <= 1.0 and d["cos_fit"] >= d["cos_unified"] - 1e-9


@pytest.mark.parametrize("name", ["simsiam", "byol", "directpred"])
def test_asymmetric_linear_predictor_is_exact_without_eps(name):
    # with W_p = sqrt(F / s_max) (eps = 0), W_p^2 = F / s_max = F~, and the gradient of -cos(W_p u1, u2)
    # is exactly (1/||W_p u1||)(-W_p u2 + lambda_i F~ u1), lambda_i = (W_p u1 . u2) / (u1^T F~ u1)
    u1, u2 = _views(n=40, d=6, seed=31)
    d = dg.decompose(name, _t(u1), _t(u2), options={"eps": 0.0})
    assert d["cos_unified"] == pytest.approx(1.0, abs=1e-5)
    F = (u1.T @ u1 + u2.T @ u2) / 80
    s, U = np.linalg.eigh(F)
    wp = (U * np.sqrt(s / s.max())) @ U.T
    ft = F / s.max()
    lam_i = np.sum((u1 @ wp) * u2, 1) / np.sum((u1 @ ft) * u1, 1)
    assert d["lambda"] == pytest.approx(lam_i.mean(), rel=1e-4)
    # eps > 0 adds the cross term 2 eps sqrt(F~) that the unified form drops
    d_eps = dg.decompose(name, _t(u1), _t(u2), options={"eps": 0.3})
    assert d_eps["cos_unified"] < 1 - 1e-4


def test_gradient_table_lists_every_method_with_its_numbers():
    u1, u2 = _views(seed=32)
    from siamgrad import methods

    table = dg.gradient_table(_t(u1), _t(u2), options={"unigrad": {"lam": 12.0}, "moco": {"queue_size": 16}})
    lines = table.splitlines()
    for name in methods.available():
        assert sum(line.startswith(name + " ") for line in lines) == 1
    row = next(line for line in lines if line.startswith("unigrad ")).split()
    assert float(row[6]) == pytest.approx(12.0) and float(row[7]) == pytest.approx(12.0, rel=1e-3)
    assert float(row[8]) == pytest.approx(1.0, abs=1e-4)


def test_decompose_rejects_bad_input():
    from siamgrad.errors import ConfigError, SiamgradError

    x = torch.randn(8, 4)
    with pytest.raises(ConfigError, match="unknown method"):
        dg.decompose("nope", x, x)
    with pytest.raises(ConfigError, match="target"):
        dg.decompose("unigrad", x, x, target="sideways")
    with pytest.raises(SiamgradError, match="same shape"):
        dg.decompose("unigrad", x, torch.randn(8, 5))


# --------------------------------------------------------------------------------------------
# a live method


def _live(name: str, backbone: torch.nn.Module | None = None, **extra):
    from siamgrad import methods

    torch.manual_seed(0)
    opts = {"proj_hidden_dim": 32, "proj_output_dim": 16, **extra}
    if "pred_hidden_dim" in methods.default_options(name):
        opts["pred_hidden_dim"] = 16
    backbone = backbone or torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 16))
    return methods.build(name, backbone, 16, **opts)


def _train_steps(m, views, steps: int = 2) -> None:
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    for s in range(steps):
        loss, _ = m.training_step(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.on_step_end(s, 10)


def test_method_diagnostics_leaves_the_method_untouched_and_matches_decompose():
    g = torch.Generator().manual_seed(33)
    views = [torch.randn(12, 3, 4, 4, generator=g) for _ in range(2)]
    m = _live("unigrad", lam=20.0)
    _train_steps(m, views)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    last = m.last_features.clone()
    rec = m and dg.method_diagnostics(m, views)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(m.last_features, last)
    assert rec["diag/width"] == 16 and len(rec["diag/spectrum"]) == 16 and len(rec["diag/F_spectrum"]) == 16
    np.testing.assert_allclose(rec["diag/F_spectrum"], np.sort(np.linalg.eigvalsh(m.state.F.double().numpy()))[::-1],
                               atol=1e-6)
    assert rec["grad/cos_unified"] == pytest.approx(1.0, abs=1e-5)
    assert rec["grad/lambda_eff"] == pytest.approx(20.0, rel=1e-3)
    assert set(dg.GRAD_KEYS) <= {k[len("grad/"):] for k in rec if k.startswith("grad/")}


def test_method_diagnostics_directpred_predictor_alignment():
    g = torch.Generator().manual_seed(34)
    views = [torch.randn(12, 3, 4, 4, generator=g) for _ in range(2)]
    m = _live("directpred")
    _train_steps(m, views)
    rec = dg.method_diagnostics(m, views, gradients=False)
    assert rec["diag/pred_align"] == pytest.approx(1.0, abs=1e-6)  # W_p is a function of F_hat
    assert not any(k.startswith("grad/") for k in rec)


def test_method_diagnostics_trained_linear_predictor_alignment_against_numpy():
    g = torch.Generator().manual_seed(35)
    views = [torch.randn(12, 3, 4, 4, generator=g) for _ in range(2)]
    m = _live("byol", pred_layers=1)
    _train_steps(m, views)
    with torch.no_grad():  # the online features the diagnostic sees, to build F independently
        state = {k: v.clone() for k, v in m.state_dict().items()}
        b = m.branches(views)
        z = np.concatenate([b.online[0].double().numpy(), b.online[1].double().numpy()])
        m.load_state_dict(state)
    F = z.T @ z / len(z)
    w = m.predictor[0].weight.detach().double().numpy()
    s, phi = np.linalg.eigh(F)
    phi = phi[:, s > 1e-6 * s.max()]
    expected = np.mean(np.sum(phi * (w @ phi), axis=0) / np.linalg.norm(w @ phi, axis=0))
    rec = dg.method_diagnostics(m, views, gradients=False)
    assert rec["diag/pred_align"] == pytest.approx(expected, abs=1e-5)
    assert -1.0 <= expected < 0.99  # a trained W_p after two steps is not yet a function of F
    with torch.no_grad():  # W_p = F^2 shares F's eigenvectors: aligned
        m.predictor[0].weight.copy_(torch.from_numpy(F @ F).float())
    assert dg.method_diagnostics(m, views, gradients=False)["diag/pred_align"] == pytest.approx(1.0, abs=1e-4)
    assert "diag/pred_align" not in dg.method_diagnostics(_live("byol"), views, gradients=False)  # 2-layer MLP


class _Constant(torch.nn.Module):
    """A backbone whose features ignore the input: complete collapse by construction."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape[0], 16) + 0 * x.flatten(1)[:, :1]


def test_training_monitor_flags_collapse_of_a_constant_encoder():
    g = torch.Generator().manual_seed(35)
    views = [torch.randn(8, 3, 4, 4, generator=g) for _ in range(2)]
    m = _live("simsiam", backbone=_Constant())
    mon = dg.TrainingMonitor(patience=2, gradients=False)
    r1 = mon.record(m, views, step=10)
    r2 = mon.record(m, views, step=20)
    assert r1["step"] == 10 and "diag/collapse" not in r1
    assert r2["diag/collapse"].startswith("complete collapse at step 20")
    assert r2["diag/std_mean"] < 1e-4 and mon.collapse_messages == [r2["diag/collapse"]]


def test_method_gradient_table_on_a_live_model():
    g = torch.Generator().manual_seed(36)
    views = [torch.randn(12, 3, 4, 4, generator=g) for _ in range(2)]
    m = _live("barlow_twins")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    table = dg.method_gradient_table(m, views, methods=["unigrad", "moco"])
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    rows = [line.split() for line in table.splitlines() if line.startswith(("unigrad ", "moco "))]
    assert [r[0] for r in rows] == ["unigrad", "moco"]
    assert all(float(r[8]) == pytest.approx(1.0, abs=1e-4) for r in rows)  # both are exact on any features
    with pytest.raises(SiamgradError, match="methods.build"):
        dg.method_gradient_table(torch.nn.Linear(2, 2), views)
