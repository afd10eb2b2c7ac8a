"""Diagnostics against closed forms and independent numpy re-derivations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siamgrad import diagnostics as dg


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
