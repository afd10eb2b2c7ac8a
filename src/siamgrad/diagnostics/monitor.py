r"""Diagnostics of a live method inside a training loop.

The method is seen only through the :class:`~siamgrad.methods.protocol.Method` protocol
(``branches``, ``state_diagnostics``, ``name``, ``target``, ``options``, ``predictor``):
:func:`method_diagnostics` computes the feature statistics of :mod:`siamgrad.diagnostics.features`
and the gradient decomposition of :mod:`siamgrad.diagnostics.gradients` on one batch and leaves the
method as it found it; :func:`method_gradient_table` tabulates every method's gradient form on
its features; :class:`TrainingMonitor` is what the trainer calls, with a
:class:`~siamgrad.diagnostics.collapse.CollapseDetector` on top. The record keys are ``diag/*``
and ``grad/*`` (read by :mod:`siamgrad.report.html`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor

from siamgrad.core.gradient import batch_correlation
from siamgrad.diagnostics.collapse import CollapseDetector
from siamgrad.diagnostics.features import DIAG_PREFIX, diag_record, predictor_alignment
from siamgrad.diagnostics.gradients import grad_record, gradient_table
from siamgrad.errors import SiamgradError
from siamgrad.methods.protocol import unwrap

__all__ = ["method_diagnostics", "method_gradient_table", "TrainingMonitor"]


@contextlib.contextmanager
def _left_untouched(m: torch.nn.Module) -> Iterator[None]:
    """Restore every batch-norm running statistic and ``last_features`` of ``m`` on exit."""
    saved = [(b, b.detach().clone()) for mod in m.modules()
             if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for b in mod.buffers()]
    last = getattr(m, "last_features", None)
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)
        if hasattr(m, "last_features"):
            m.last_features = last


def _unwrap(method: torch.nn.Module, views: Any, who: str) -> torch.nn.Module:
    m = unwrap(method)  # DistributedDataParallel and similar wrappers
    if not all(hasattr(m, k) for k in ("branches", "state_diagnostics", "name", "target", "options")):
        raise SiamgradError(f"{who} needs a method built by siamgrad.methods.build")
    if not isinstance(views, (list, tuple)) or len(views) < 2:
        raise SiamgradError(f"{who} needs a list of at least 2 view batches [N, C, H, W]")
    return m


def _linear_weight(predictor: torch.nn.Module | None) -> Tensor | None:
    """The weight of a predictor that is one square linear map (``pred_layers=1``), else None."""
    layers = list(predictor) if isinstance(predictor, torch.nn.Sequential) else [predictor]
    if len(layers) == 1 and isinstance(layers[0], torch.nn.Linear):
        w = layers[0].weight
        return w.detach() if w.shape[0] == w.shape[1] else None
    return None


def method_diagnostics(method: torch.nn.Module, views: list[Tensor], *, gradients: bool = True,
                       spectrum: bool = True) -> dict[str, Any]:
    r"""Feature statistics (``diag/*``) and gradient decomposition (``grad/*``) of a live method on a batch.

    ``method``: a :class:`siamgrad.methods.siamese.SiameseMethod` (or a wrapper with ``.module``, e.g.
    DistributedDataParallel); ``views``: the augmented batches of a training step (views 0 and 1
    are used). Runs one extra forward without gradients and leaves the method as it found it
    (batch-norm running statistics and ``last_features`` restored; F matrices, queues untouched).

    * ``diag/*``: :func:`diag_record` of the online projector outputs of the two views, with
      ``diag/F_spectrum`` (the method's moving-average ``F`` or DirectPred's ``F_hat``, once it has
      been updated) and ``diag/pred_align`` (DirectPred: its predictor vs ``F_hat``; a trained
      square linear predictor: its weight vs the batch's ``F`` of the online features);
    * ``grad/*``: :func:`grad_record` with the method's own target branch, options, ``F``, queue and
      (BYOL/SimSiam) trained predictor.

    Cost: a forward of two views plus a few objective evaluations on ``[N, D]`` features and an
    SVD of ``[2N, D]`` (float64, CPU); log it every few hundred steps. Under multi-process training
    call it on every process (the objectives gather) and write the record on rank 0.
    """
    m = _unwrap(method, views, "method_diagnostics")
    with _left_untouched(m):
        with torch.no_grad():
            b = m.branches(list(views[:2]))
            z1, z2o = b.online[0].detach().float(), b.online[1].detach().float()
            t1, t2 = b.positive[0].detach().float(), b.positive[1].detach().float()
        st = m.state_diagnostics()
        F, predictor_w, queue = st.get("F"), st.get("predictor"), st.get("queue")
        rec = diag_record(z1, z2o, spectrum=spectrum, predictor=predictor_w, correlation=F)
        trained = _linear_weight(m.predictor) if predictor_w is None else None
        if trained is not None:
            # a trained linear predictor (BYOL/SimSiam pred_layers=1) has no F of its own: compare it
            # with the batch's correlation of the online features, as DirectPred's analysis does
            rec[DIAG_PREFIX + "pred_align"] = predictor_alignment(trained, batch_correlation([z1, z2o]))
        if gradients:
            rec.update(grad_record(m.name, z1, t2, target=m.target, z1_target=t1, z2_online=z2o, F=F, queue=queue,
                                   predictor=m.predictor, options=m.options))
    return rec


def method_gradient_table(method: torch.nn.Module, views: list[Tensor], methods: Iterable[str] | None = None,
                          **kwargs: Any) -> str:
    """:func:`gradient_table` on the online projector outputs of a live method's views 0 and 1.

    Every method is evaluated with a stop-gradient target on the same features (its ``F`` / queue
    from the batch itself unless given in ``kwargs``), so the rows compare the gradient *forms*
    on this model's features. The method is left untouched (see :func:`method_diagnostics`).
    """
    m = _unwrap(method, views, "method_gradient_table")
    with _left_untouched(m), torch.no_grad():
        b = m.branches(list(views[:2]))
        z1, z2 = b.online[0].detach().float(), b.online[1].detach().float()
    return gradient_table(z1, z2, methods, **{"target": "stopgrad", **kwargs})


class TrainingMonitor:
    """What a training loop needs for diagnostics: one call per diagnostic step, one record back.

    ``monitor.record(method, views, step)`` returns ``{"step": step, "diag/...": ..., "grad/...": ...}``
    (see :func:`method_diagnostics`) and, when the :class:`CollapseDetector` (built on the first
    call with the projector width) fires, ``"diag/collapse": message``. ``collapse_messages`` keeps
    every message.
    """

    def __init__(self, *, gradients: bool = True, spectrum: bool = True, complete_std: float = 1e-4,
                 dim_rank_frac: float = 0.05, patience: int = 3) -> None:
        self.gradients, self.spectrum = gradients, spectrum
        self.detector_args = dict(complete_std=complete_std, dim_rank_frac=dim_rank_frac, patience=patience)
        self.detector: CollapseDetector | None = None
        self.collapse_messages: list[str] = []

    def record(self, method: torch.nn.Module, views: list[Tensor], step: int) -> dict[str, Any]:
        rec: dict[str, Any] = {"step": int(step)}
        rec.update(method_diagnostics(method, views, gradients=self.gradients, spectrum=self.spectrum))
        if self.detector is None:
            self.detector = CollapseDetector(int(rec[DIAG_PREFIX + "width"]), **self.detector_args)
        msg = self.detector.check(rec)
        if msg is not None:
            rec[DIAG_PREFIX + "collapse"] = msg
            self.collapse_messages.append(msg)
        return rec
