"""A method as data: its objectives, target branches, heads, options and unified-gradient description."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor

from siamgrad.core.gradient import UnifiedGradient
from siamgrad.methods.options import Option
from siamgrad.methods.protocol import Branches, MethodState
from siamgrad.models.heads import HeadSpec

Logs = dict[str, Tensor]
Objective = Callable[[Branches, dict[str, Any], Any], tuple[Tensor, Logs]]


def no_state(options: dict, dim: int, form: str) -> MethodState | None:
    return None


@dataclass(frozen=True)
class MethodSpec:
    """Everything that makes a method: objectives, target branches, heads, options and its unified form."""

    name: str
    family: str
    paper: str
    options: dict[str, Option]
    targets: dict[str, tuple[str, ...]]
    projector: HeadSpec
    original: Objective
    gradient: Objective
    unified: UnifiedGradient
    predictor: HeadSpec | None = None
    make_state: Callable[[dict, int, str], MethodState | None] = no_state
    derived: Callable[[dict], dict] = field(default=lambda o: {})

    def objective(self, form: str) -> Objective:
        return self.original if form == "original" else self.gradient

    def evaluate(self, form: str, branches: Branches, params: dict[str, Any],
                 state: MethodState | None) -> tuple[Tensor, Logs]:
        """One step's loss in ``form``: the state observes the branches, then the objective reads it."""
        if state is not None:
            state.observe(branches)
        return self.objective(form)(branches, params, state)
