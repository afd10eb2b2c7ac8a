"""Means over seeds with Student-t confidence intervals, and paired differences over the same seeds.

A run repeated with seeds ``0..K-1`` gives ``K`` values of a metric. :func:`mean_interval` is their
mean with the two-sided Student-t interval ``mean +- t_{K-1} * sd / sqrt(K)`` (``sd`` the sample
standard deviation, ``K - 1`` in the denominator). A contrast between two runs uses
:func:`paired_difference`: the per-seed differences ``a_i - b_i`` (the two runs share seed ``i``,
hence their initialization and augmentation draws), whose mean and interval are those of a
one-sample t interval on the differences. Pairing removes the seed-to-seed variation the two runs
share, so the interval of a difference is usually narrower than the two runs' intervals suggest.

The t quantile is computed here (no SciPy at run time): for an integer number of degrees of freedom
``n`` the probability ``P(|T| < t)`` has a closed form in ``theta = atan(t / sqrt(n))``
(Abramowitz & Stegun 26.7.3-4), inverted by bisection on ``theta``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from siamgrad.errors import ConfigError


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided confidence interval ``[low, high]`` over ``n`` values.

    With one value the interval is unbounded (``-inf, inf``): one seed says nothing of the spread.
    """

    mean: float
    low: float
    high: float
    n: int
    sd: float  # sample standard deviation (nan for n = 1)
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.2f} (1 seed)"
        return f"{self.mean:.2f} ± {self.half_width:.2f} (n={self.n})"


def t_two_sided_prob(t: float, df: int) -> float:
    """``P(|T| < t)`` for Student's t with ``df`` (a positive integer) degrees of freedom."""
    if df < 1 or int(df) != df:
        raise ConfigError(f"degrees of freedom must be a positive integer, got {df}")
    if t <= 0:
        return 0.0
    if math.isinf(t):
        return 1.0
    theta = math.atan(t / math.sqrt(df))
    return _prob_of_theta(theta, int(df))


def _prob_of_theta(theta: float, df: int) -> float:
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        # (2/pi) (theta + sin cos [1 + (2/3) cos^2 + (2*4)/(3*5) cos^4 + ...]), terms up to cos^(df-2)
        total, term = 0.0, c
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + s * total) if df > 1 else 2 * theta / math.pi
    # sin [1 + (1/2) cos^2 + (1*3)/(2*4) cos^4 + ...], terms up to cos^(df-2)
    total, term = 0.0, 1.0
    for k in range(1, df // 2 + 1):
        total += term
        term *= c * c * (2 * k - 1) / (2 * k)
    return s * total


def t_quantile(level: float, df: int) -> float:
    """The ``t`` with ``P(|T| < t) = level`` (e.g. 0.95 -> the 97.5% quantile), ``df`` integer >= 1."""
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must lie strictly between 0 and 1, got {level}")
    if df < 1 or int(df) != df:
        raise ConfigError(f"degrees of freedom must be a positive integer, got {df}")
    lo, hi = 0.0, math.pi / 2  # the probability rises monotonically with theta on [0, pi/2)
    for _ in range(200):
        mid = (lo + hi) / 2
        if _prob_of_theta(mid, int(df)) < level:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of ``values`` with its Student-t interval at ``level`` (unbounded for one value)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ConfigError("no values to average; train at least one seed of the run")
    if not all(math.isfinite(x) for x in xs):
        raise ConfigError(f"non-finite value among {xs}; leave failed runs out before averaging")
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return Interval(mean, -math.inf, math.inf, 1, math.nan, level)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(level, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd, level)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of the per-seed differences ``a[i] - b[i]`` with its Student-t interval.

    ``a[i]`` and ``b[i]`` must come from the same seed ``i``.
    """
    if len(a) != len(b):
        raise ConfigError(f"paired difference of {len(a)} and {len(b)} values; give both runs the same seeds")
    return mean_interval([x - y for x, y in zip(a, b)], level)


def seeds_for_margin(sd: float, margin: float, level: float = 0.95, most: int = 1000) -> int | None:
    """The fewest seeds ``n >= 2`` whose interval half-width ``t_{n-1} * sd / sqrt(n)`` is below
    ``margin``, if the seed-to-seed spread stays ``sd``; ``None`` above ``most`` (or for ``margin <= 0``)."""
    if not math.isfinite(sd) or sd < 0:
        raise ConfigError(f"a spread of {sd} cannot size a seed count; give the sd of at least 2 seeds")
    if margin <= 0:
        return None

    def fits(n: int) -> bool:
        return t_quantile(level, n - 1) * sd / math.sqrt(n) < margin

    if not fits(most):
        return None
    lo, hi = 2, most  # the half-width falls as n grows: bisect for the first n that fits
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo


def detectable_difference(sd: float, n: int, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest true mean difference a paired t-test over ``n`` seeds detects with ``power``.

    With the per-seed differences' spread ``sd``, a two-sided test at ``1 - level`` rejects "no
    difference" with probability ``power`` when the true difference is at least
    ``(t_{(1+level)/2, n-1} + t_{power, n-1}) * sd / sqrt(n)`` (the usual t approximation of the
    noncentral t). It is also about the smallest distance from a tolerance that ``n`` seeds can
    settle: a smaller effect stays "inconclusive" at this size.

    >>> round(detectable_difference(1.0, 5), 3)  # (2.776 + 0.941) / sqrt(5)
    1.662
    """
    if n < 2:
        raise ConfigError(f"a detectable difference needs at least 2 seeds, got {n}")
    if not 0 < power < 1:
        raise ConfigError(f"power must lie strictly between 0 and 1, got {power}")
    if not math.isfinite(sd) or sd < 0:
        raise ConfigError(f"a spread of {sd} cannot size a difference; give the sd of at least 2 seeds")
    # the one-sided quantile t_power is the two-sided one at level 2 * power - 1
    return (t_quantile(level, n - 1) + t_quantile(2 * power - 1, n - 1)) * sd / math.sqrt(n)


@dataclass(frozen=True)
class SpreadSplit:
    """A seed-to-seed spread of accuracy split into the evaluation set's part and the seeds' shared part.

    ``sd``: the sample standard deviation of the ``seeds`` accuracies (points). ``sd_per_image``:
    the part that comes from images flipping between right and wrong independently from seed to
    seed, which shrinks like ``1 / sqrt(images)`` on a larger evaluation set. ``sd_shared``: the
    rest, a seed making the model better or worse on many images at once, which more images do not
    remove (0 when the per-image part explains the whole spread).
    """

    seeds: int
    images: int
    sd: float
    sd_per_image: float
    sd_shared: float

    def images_for(self, target_sd: float) -> int | None:
        """Evaluation images at which the expected spread falls to ``target_sd`` points, if the
        per-image part shrinks as ``1 / images`` in variance; ``None`` if the shared part alone exceeds it."""
        room = target_sd ** 2 - self.sd_shared ** 2
        if room <= 0:
            return None
        return max(1, math.ceil(self.sd_per_image ** 2 * self.images / room))


def per_image_split(correct: Sequence[Sequence[bool]]) -> SpreadSplit:
    """Split the seed-to-seed spread of accuracy over ``correct[k][i]`` (seed ``k`` right on image ``i``).

    With ``c_ki`` in {0, 1} and accuracy ``a_k = 100 * mean_i c_ki``, the variance of ``a`` over seeds is
    ``(100 / n)^2 * sum_ij cov_k(c_i, c_j)``. The diagonal terms, ``(100 / n)^2 * sum_i var_k(c_i)``
    (both variances unbiased, ``K - 1`` in the denominator), are the per-image part: what the spread
    would be if images flipped independently. The off-diagonal terms are the shared part.
    """
    rows = [[1.0 if c else 0.0 for c in row] for row in correct]
    k = len(rows)
    if k < 2:
        raise ConfigError(f"a spread needs at least 2 seeds, got {k}")
    n = len(rows[0])
    if n == 0 or any(len(r) != n for r in rows):
        raise ConfigError("every seed must be scored on the same, non-empty set of images")
    var = mean_interval([100.0 * sum(r) / n for r in rows]).sd ** 2
    per_image = 0.0
    for i in range(n):
        q = sum(r[i] for r in rows) / k
        per_image += sum((r[i] - q) ** 2 for r in rows) / (k - 1)
    per_image *= (100.0 / n) ** 2
    return SpreadSplit(k, n, math.sqrt(var), math.sqrt(per_image), math.sqrt(max(var - per_image, 0.0)))
