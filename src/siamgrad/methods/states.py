"""Method state: what a method keeps between steps besides its weights, and the hooks that update it.

* :class:`CorrelationEMA` -- UniGrad's moving average ``F`` of the target features' correlation
  (also the ``F`` of the asymmetric methods' gradient forms);
* :class:`FeatureQueue` -- MoCo's queue of negative keys;
* :class:`DirectPredictor` -- DirectPred's ``F_hat`` and the linear predictor set from it.

Each is a :class:`~siamgrad.methods.protocol.MethodState`: it observes a step's branches before
the objective reads it, and everything it holds is a buffer, so a checkpoint resumes it exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from siamgrad import distributed as D
from siamgrad.core.gradient import batch_correlation, l2n
from siamgrad.core.objectives.asymmetric import directpred_weight
from siamgrad.methods.protocol import Branches, MethodState

__all__ = ["CorrelationEMA", "FeatureQueue", "DirectPredictor"]


class CorrelationEMA(MethodState):
    """Moving average of a correlation matrix: ``F <- rho F + (1 - rho) F_batch``; first update sets ``F = F_batch``.

    ``F`` and the update counter are buffers, so ``state_dict()`` round-trips them. As a method's
    state it observes the l2-normalized negative-source features of every view.
    """

    def __init__(self, dim: int, rho: float) -> None:
        super().__init__()
        self.rho = float(rho)
        self.register_buffer("F", torch.zeros(dim, dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.pinned = False

    @torch.no_grad()
    def update(self, f_batch: Tensor) -> Tensor:
        """Fold ``f_batch`` ([D, D]) into the average and return the new ``F`` (unchanged when pinned)."""
        if self.pinned:
            return self.F
        f_batch = f_batch.detach().to(self.F.dtype)
        # torch.where instead of a python branch: no host-device sync on the update counter.
        averaged = self.rho * self.F + (1.0 - self.rho) * f_batch
        self.F.copy_(torch.where(self.updates == 0, f_batch, averaged))
        self.updates += 1
        return self.F

    def observe(self, branches: Branches) -> None:
        self.update(batch_correlation([l2n(v.detach()) for v in branches.negative]))

    def diagnostics(self) -> dict[str, Tensor]:
        return {"F": self.F} if int(self.updates) > 0 else {}

    def pin(self, *, F: Tensor | None = None, queue: Tensor | None = None) -> CorrelationEMA:
        """Hold ``F`` fixed (when given, in its own dtype): updates leave it unchanged."""
        if F is not None:
            self.F = F.detach().clone()
            self.updates.fill_(1)
            self.pinned = True
        return self



class FeatureQueue(MethodState):
    """MoCo's queue of negative keys: a ring buffer [K, D] of l2-normalized features plus a pointer.

    As a method's state it stashes the first view's negative-source features. Keys of a step are
    :meth:`stash`-ed (gathered over processes) while the loss is computed and
    written by :meth:`flush` after the optimizer step, so the queue a loss used is never modified
    before its backward. Initialized with random unit vectors (as MoCo). Both the queue and the
    pointer are buffers (exact resume).
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("queue", l2n(torch.randn(size, dim)))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self._pending: Tensor | None = None

    @torch.no_grad()
    def stash(self, keys: Tensor) -> None:
        """Remember this step's keys ([n, D], normalized here and gathered over processes)."""
        self._pending = D.all_gather(l2n(keys.detach().float()))

    @torch.no_grad()
    def flush(self) -> None:
        """Enqueue the stashed keys (if any)."""
        if self._pending is not None:
            self.enqueue(self._pending)
            self._pending = None

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` at ``ptr, ptr+1, ...`` (mod K) and advance ``ptr`` by their number (mod K)."""
        size = self.queue.shape[0]
        keys = keys.detach().to(self.queue.dtype)[-size:]
        idx = (self.ptr + torch.arange(keys.shape[0], device=self.queue.device)) % size
        self.queue[idx] = keys
        self.ptr.copy_((self.ptr + keys.shape[0]) % size)

    def observe(self, branches: Branches) -> None:
        self.stash(branches.negative[0])

    def on_step_end(self) -> None:
        self.flush()

    def diagnostics(self) -> dict[str, Tensor]:
        return {"queue": self.queue}

    def pin(self, *, F: Tensor | None = None, queue: Tensor | None = None) -> FeatureQueue:
        """Use ``queue`` (normalized here) as the queue; nothing observed is ever enqueued."""
        if queue is not None:
            self.queue = l2n(queue.detach()).clone()
        return self



class DirectPredictor(MethodState):
    """The DirectPred linear predictor ``p = W_p f``, set from ``F_hat`` every ``freq`` steps.

    ``F_hat <- rho F_hat + (1 - rho) F_batch`` observes the online projector outputs of all global
    views each step, before the objective. Two ways to use it between resets:

    * ``trained=True`` (the reference, facebookresearch/luckmatters ``ssl/real-dataset/byol_trainer.py``,
      ``predictor_reg=corr``): ``W_p`` is a parameter (bias-free linear layer, default
      initialization) trained by the optimizer with the rest of the model; after the optimizer step
      of every step ``k`` with ``k % freq == 0`` it is overwritten with ``directpred_weight(F_hat)``,
      ``F_hat`` including step ``k``'s batch. So step ``k`` predicts with the weight reset after step
      ``k - 1`` (``freq=1``) or trained since the last reset (``freq > 1``). Step 0 predicts with
      ``directpred_weight`` of its own batch's ``F_hat`` (the reference: a random initialization,
      reset after step 0 all the same).
    * ``trained=False`` (the fixed form): ``W_p`` is a buffer, reset from ``F_hat`` (this step's batch
      included) before the objective at every ``k % freq == 0`` and held fixed in between.

    State (``F_hat``, its update count, ``W_p``, the step count) is in buffers and parameters.
    """

    def __init__(self, dim: int, rho: float = 0.3, eps: float = 0.01, freq: int = 1, clamp: float = 1e-4,
                 trained: bool = False) -> None:
        super().__init__()
        self.eps, self.freq, self.clamp, self.trained = float(eps), int(freq), float(clamp), bool(trained)
        self.ema = CorrelationEMA(dim, rho)
        if self.trained:
            self.weight = torch.nn.Parameter(torch.eye(dim))  # set from F_hat at the first step
        else:
            self.register_buffer("weight", torch.eye(dim))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def F_hat(self) -> Tensor:
        return self.ema.F

    def _reset_due(self) -> bool:
        return self.freq == 1 or int(self.steps) % self.freq == 0

    @torch.no_grad()
    def update(self, features: list[Tensor]) -> None:
        """``F_hat <- rho F_hat + (1 - rho) F_batch``; the fixed form resets ``W_p`` every ``freq`` steps,
        the trained form at its first step only (then after optimizer steps, :meth:`on_step_end`)."""
        F = self.ema.update(batch_correlation(features))
        if not self.trained:
            if self._reset_due():
                self.weight.copy_(directpred_weight(F, self.eps, self.clamp))
            self.steps += 1
        elif int(self.steps) == 0:  # the trained form's first step
            self.weight.copy_(directpred_weight(F, self.eps, self.clamp).to(self.weight.dtype))

    @torch.no_grad()
    def on_step_end(self) -> None:
        """Trained form: after the optimizer step, reset ``W_p`` from ``F_hat`` every ``freq`` steps."""
        if self.trained:
            if self._reset_due():
                self.weight.copy_(directpred_weight(self.F_hat, self.eps, self.clamp).to(self.weight.dtype))
            self.steps += 1

    def forward(self, f: Tensor) -> Tensor:
        return f @ self.weight.T.to(f.dtype)

    def observe(self, branches: Branches) -> None:
        # the global crops' outputs (all views of a plain step): local crops and mixed images stay out of F_hat
        self.update([z.detach() for z in branches.online[: len(branches.positive)]])

    def diagnostics(self) -> dict[str, Tensor]:
        return {"F": self.F_hat, "predictor": self.weight.detach()} if int(self.ema.updates) > 0 else {}

    def pin(self, *, F: Tensor | None = None, queue: Tensor | None = None) -> DirectPredictor:
        """Hold ``F_hat`` fixed (when given); the predictor is set from it (the trained form at once)."""
        self.ema.pin(F=F)
        if F is not None and self.trained:
            with torch.no_grad():
                self.weight.copy_(directpred_weight(self.F_hat, self.eps, self.clamp).to(self.weight.dtype))
        return self
