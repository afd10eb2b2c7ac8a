"""Seeing inside training: feature statistics, collapse, gradient decomposition, the training monitor.

* :mod:`.features`  -- spectra, effective rank, alignment/uniformity, per-dimension std, predictor
  alignment; :func:`feature_stats` / :func:`diag_record` bundle them (pure functions of tensors)
* :mod:`.collapse`  -- :class:`CollapseDetector`: complete and dimensional collapse that persists
* :mod:`.gradients` -- :func:`decompose`: a method's true gradient split into the unified form;
  :func:`grad_record`, :func:`gradient_table`
* :mod:`.monitor`   -- a live method through the :class:`~siamgrad.methods.protocol.Method` protocol:
  :func:`method_diagnostics`, :func:`method_gradient_table`, :class:`TrainingMonitor` (what the
  trainer calls)
* :mod:`.analyze`   -- ``siamgrad analyze gradients`` on a checkpoint

Records carry ``diag/*`` and ``grad/*`` keys; :mod:`siamgrad.report.html` reads them.
"""

from siamgrad.diagnostics.collapse import CollapseDetector
from siamgrad.diagnostics.features import (
    DIAG_PREFIX,
    alignment,
    correlation_spectrum,
    diag_record,
    effective_rank,
    feature_stats,
    matrix_spectrum,
    per_dim_std,
    predictor_alignment,
    uniformity,
)
from siamgrad.diagnostics.gradients import GRAD_KEYS, GRAD_PREFIX, decompose, grad_record, gradient_table
from siamgrad.diagnostics.monitor import TrainingMonitor, method_diagnostics, method_gradient_table

__all__ = [
    "correlation_spectrum",
    "matrix_spectrum",
    "effective_rank",
    "alignment",
    "uniformity",
    "per_dim_std",
    "predictor_alignment",
    "feature_stats",
    "diag_record",
    "CollapseDetector",
    "decompose",
    "grad_record",
    "gradient_table",
    "method_diagnostics",
    "method_gradient_table",
    "TrainingMonitor",
    "DIAG_PREFIX",
    "GRAD_PREFIX",
    "GRAD_KEYS",
]
