"""What the rest of siamgrad may use of a method, written down.

The trainer, the diagnostics, the evaluation and the experiment grids see a method only through
:class:`Method`; :class:`~siamgrad.methods.siamese.SiameseMethod` is the one implementation the
registry builds, and a hand-written module with the same members trains just as well.

A method's mutable state beyond its weights (MoCo's queue, UniGrad's moving-average ``F``,
DirectPred's ``F_hat`` and predictor) is a :class:`MethodState`: it *observes* each step's
branches before the objective runs and is told when the optimizer step is done, so the
objectives themselves stay pure functions of features and state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from torch import Tensor, nn

from siamgrad.core.gradient import ordered_pairs


@dataclass(frozen=True)
class MixedView:
    """An online view made by mixing every image with a partner of the same batch (CutMix / Mixup).

    ``ratio`` is ``r``, the share of each image's own pixels; ``partner(t)`` returns the rows of
    ``t`` ([n, D], this process's share) at every sample's partner (gathered over processes).
    """

    ratio: float
    partner: Callable[[Tensor], Tensor]


@dataclass
class Branches:
    """Per-view float32 features handed to an objective (lists of [n, D], one per view).

    ``online``: projector outputs of every online view (graph attached): the G global crops
    first, then the local crops, then the mixed copies of the global crops; ``predicted``:
    trained-predictor outputs (``online`` when the method has none); ``positive``: source of
    ``u2^m``; ``negative``: source of negatives / F -- both for the G global crops only (targets
    come from global crops). With ``target="none"`` positive and negative are the online
    features of the global crops themselves.

    ``pairs``: the (online view, target view) pairs the objective averages over; ``None`` means
    every ordered pair of distinct views (the M same-size views of a plain step). ``mixed``: the
    online views that are mixed images, by index; the objective of such a view ``a`` against
    target ``c`` is ``r L(u_c) + (1 - r) L(u_c[partner])`` (negatives unchanged).
    """

    online: list[Tensor]
    predicted: list[Tensor]
    positive: list[Tensor]
    negative: list[Tensor]
    pairs: list[tuple[int, int]] | None = None
    mixed: dict[int, MixedView] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pairs is None:
            self.pairs = ordered_pairs(len(self.online))

    @property
    def plain(self) -> bool:
        """Whether every online view is a global crop with its own target (no local crops, no mixing)."""
        return len(self.online) == len(self.positive) and not self.mixed


class MethodState(nn.Module):
    """State an objective reads, with the hooks that update it (all of it in buffers, for resume).

    * :meth:`observe` -- once per training step, before the objective, with that step's branches;
    * :meth:`on_step_end` -- after the optimizer step;
    * :meth:`diagnostics` -- the tensors diagnostics show (``F``, ``predictor``, ``queue``);
    * :meth:`pin` -- fix ``F`` / the queue for a one-off evaluation (the gradient decomposition).
    """

    def observe(self, branches: Branches) -> None:
        pass

    def on_step_end(self) -> None:
        pass

    def diagnostics(self) -> dict[str, Tensor]:
        return {}

    def pin(self, *, F: Tensor | None = None, queue: Tensor | None = None) -> MethodState:
        return self


@runtime_checkable
class Method(Protocol):
    """Everything the trainer, diagnostics, evaluation and experiments use of a method.

    Training (the trainer):

    * ``training_step(views, mix=None) -> (loss, logs)``: ``views`` is a list of augmented batches
      [N, C, H, W], G >= 2 global crops of one size first, then any local crops of a smaller size;
      ``mix``: optional CutMix / Mixup draws (:class:`siamgrad.augment.mixing.MixParams`), one per
      global crop to mix; ``loss`` carries the graph, ``logs`` maps names to floats (``loss`` among them);
    * ``on_step_end(step, total_steps)``: after ``optimizer.step()`` (momentum encoder, queue);
    * ``last_features``: the backbone features [N, feature_dim] of the first view of the last
      ``training_step``, detached (the online linear probe learns from them);
    * ``backbone``: the encoder being trained (evaluation, export); ``feature_dim``: its output width;
    * ``forward(views)`` is ``training_step(views)`` (so DistributedDataParallel sees a forward).

    Inspection (diagnostics, experiments):

    * ``name``, ``form``, ``target``, ``options`` (the resolved options);
    * ``branches(views, mix=None) -> Branches``: the features of one step without the objective;
    * ``predictor``: the trained predictor module, or None;
    * ``state_diagnostics() -> dict``: the state's tensors (see :meth:`MethodState.diagnostics`).
    """

    name: str
    form: str
    target: str
    options: dict[str, Any]
    backbone: nn.Module
    feature_dim: int
    predictor: nn.Module | None
    last_features: Tensor | None

    def training_step(self, views: list[Tensor], mix: Any = None) -> tuple[Tensor, dict[str, float]]: ...

    def on_step_end(self, step: int, total_steps: int) -> None: ...

    def branches(self, views: list[Tensor]) -> Branches: ...

    def state_diagnostics(self) -> dict[str, Tensor]: ...


def unwrap(model: nn.Module) -> nn.Module:
    """The method inside a wrapper such as DistributedDataParallel (``.module``), else ``model``."""
    return getattr(model, "module", model)


__all__ = ["Branches", "Method", "MethodState", "MixedView", "unwrap"]
