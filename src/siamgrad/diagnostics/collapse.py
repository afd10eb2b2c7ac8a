r"""Collapse detection: :class:`CollapseDetector` watches :func:`~siamgrad.diagnostics.features.feature_stats`
records for complete collapse (all features nearly the same vector) and dimensional collapse
(features spanning few directions) that persist over several checks."""

from __future__ import annotations

import math
from typing import Any, Mapping

from siamgrad.diagnostics.features import DIAG_PREFIX
from siamgrad.errors import SiamgradError

__all__ = ["CollapseDetector"]


class CollapseDetector:
    r"""Flags complete or dimensional collapse that persists over ``patience`` consecutive checks.

    * complete collapse: ``std_mean < complete_std`` -- the per-dimension std of normalized
      features is ~0, i.e. all features are (nearly) the same vector;
    * dimensional collapse: ``eff_rank < dim_rank_frac * width`` -- the features span only a few
      directions of the ``width``-dimensional space.

    :meth:`check` takes a :func:`feature_stats` dict (keys with or without the ``diag/`` prefix;
    a missing statistic counts as "not collapsed"), and returns a one-line explanation while the
    condition has held for at least ``patience`` checks in a row, else ``None``. Complete collapse
    is reported in preference to dimensional collapse. Every report is also kept in ``events``.
    """

    def __init__(self, width: int, complete_std: float = 1e-4, dim_rank_frac: float = 0.05, patience: int = 3) -> None:
        if width < 1 or patience < 1:
            raise SiamgradError("width and patience must be >= 1")
        self.width = int(width)
        self.complete_std = float(complete_std)
        self.dim_rank_frac = float(dim_rank_frac)
        self.patience = int(patience)
        self.complete_count = 0
        self.dim_count = 0
        self.events: list[tuple[int | None, str, str]] = []  # (step, kind, message)

    @staticmethod
    def _get(stats: Mapping[str, Any], key: str) -> float | None:
        for k in (key, DIAG_PREFIX + key):
            v = stats.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                return float(v)
        return None

    def check(self, stats: Mapping[str, Any]) -> str | None:
        std = self._get(stats, "std_mean")
        rank = self._get(stats, "eff_rank")
        step = stats.get("step")
        complete = std is not None and std < self.complete_std
        dim = rank is not None and rank < self.dim_rank_frac * self.width
        self.complete_count = self.complete_count + 1 if complete else 0
        self.dim_count = self.dim_count + 1 if dim else 0
        where = f" at step {step}" if step is not None else ""
        if self.complete_count >= self.patience:
            msg = (f"complete collapse{where}: per-dimension std of normalized features {std:.2e} < "
                   f"{self.complete_std:.0e} for {self.complete_count} checks (all features nearly identical)")
            self.events.append((step, "complete", msg))
            return msg
        if self.dim_count >= self.patience:
            msg = (f"dimensional collapse{where}: effective rank {rank:.1f} < {self.dim_rank_frac:g} x width "
                   f"{self.width} for {self.dim_count} checks (features span few directions)")
            self.events.append((step, "dimensional", msg))
            return msg
        return None
