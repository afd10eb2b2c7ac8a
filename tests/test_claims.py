"""Seeds, intervals and the claims registry: the t-interval and paired-difference arithmetic against
SciPy (or a hand-worked example), verdicts from their numbers, resumable grids with seeds."""

import csv
import json
import math
from pathlib import Path

import pytest

from siamgrad.errors import ConfigError
from siamgrad.experiments import runner as reproduce
from siamgrad.experiments import stats

TINY = ["backbone=tiny", "batch_size=128", "epochs=1", "method.proj_hidden_dim=32", "method.proj_output_dim=16",
        "eval.knn_k=20", "diag.enabled=false", "diag.report=false", "threads=2"]


# ------------------------------------------------------------------ intervals


def test_t_interval_by_hand():
    """Values 1, 2, 3, 4, 5: mean 3, sd sqrt(2.5), t_{4, 0.975} = 2.776445 (printed tables),
    half-width 2.776445 * sqrt(2.5) / sqrt(5) = 1.963243."""
    iv = stats.mean_interval([1, 2, 3, 4, 5])
    assert iv.mean == 3 and iv.n == 5 and iv.sd == pytest.approx(math.sqrt(2.5))
    assert iv.half_width == pytest.approx(2.776445 * math.sqrt(0.5), abs=1e-5)
    assert (iv.low, iv.high) == pytest.approx((3 - 1.963243, 3 + 1.963243), abs=1e-5)
    # t tables: df 1 12.706, 2 4.303, 9 2.262, 30 2.042; the 90% quantile at df 2 is 2.920
    for df, q in ((1, 12.706), (2, 4.303), (9, 2.262), (30, 2.042)):
        assert stats.t_quantile(0.95, df) == pytest.approx(q, abs=1e-3)
    assert stats.t_quantile(0.90, 2) == pytest.approx(2.920, abs=1e-3)
    one = stats.mean_interval([41.0])
    assert one.mean == 41 and one.low == -math.inf and one.high == math.inf


def test_t_interval_and_paired_difference_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    import numpy as np

    rng = np.random.default_rng(3)
    for n in (2, 3, 4, 7, 12, 40):
        for level in (0.9, 0.95, 0.99):
            a = rng.normal(38, 1.5, n)
            b = a - 0.7 + rng.normal(0, 0.4, n)  # shares a's seed-to-seed variation
            iv = stats.mean_interval(a, level)
            lo, hi = scipy_stats.t.interval(level, n - 1, loc=a.mean(), scale=scipy_stats.sem(a))
            assert (iv.low, iv.high) == pytest.approx((lo, hi), rel=1e-9)
            d = stats.paired_difference(a, b, level)
            d_lo, d_hi = scipy_stats.t.interval(level, n - 1, loc=(a - b).mean(), scale=scipy_stats.sem(a - b))
            assert d.mean == pytest.approx((a - b).mean()) and (d.low, d.high) == pytest.approx((d_lo, d_hi), rel=1e-9)
            # the paired test's p-value: 0 lies outside the interval exactly when p < 1 - level
            p = scipy_stats.ttest_rel(a, b).pvalue
            assert (d.low > 0 or d.high < 0) == (p < 1 - level)
    for df in (1, 2, 3, 5, 8, 31):
        for t in (0.1, 1.0, 2.5, 9.0):
            assert stats.t_two_sided_prob(t, df) == pytest.approx(2 * scipy_stats.t.cdf(t, df) - 1, abs=1e-12)


def test_paired_difference_is_narrower_than_the_unpaired_intervals_suggest():
    """Seeds move both runs alike: the difference is constant, its interval a point."""
    a, b = [36.0, 38.0, 40.0], [35.0, 37.0, 39.0]
    d = stats.paired_difference(a, b)
    assert d.mean == pytest.approx(1.0) and d.half_width == pytest.approx(0.0, abs=1e-12)
    assert stats.mean_interval(a).half_width > 4
    with pytest.raises(ConfigError, match="same seeds"):
        stats.paired_difference([1, 2], [1, 2, 3])
    with pytest.raises(ConfigError, match="no values"):
        stats.mean_interval([])
