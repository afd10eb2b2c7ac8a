"""The online linear probe: a classifier trained on detached backbone features during pretraining.

It never sends a gradient into the encoder; its test accuracy is a cheap progress signal beside
kNN. With several processes it learns from the gathered global batch, the same on every rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from siamgrad import distributed as D


class OnlineProbe:
    def __init__(self, dim: int, num_classes: int, lr: float, device: torch.device):
        self.linear = nn.Linear(dim, num_classes).to(device)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=lr, momentum=0.9)
        self.device = device

    def step(self, features: Tensor, labels: Tensor, world: int = 1) -> dict[str, float]:
        """One SGD step on ``features`` (detached here) and their labels; the step's logs."""
        feats = features.detach().to(self.linear.weight.dtype)
        if world > 1:
            feats, labels = D.all_gather(feats), D.all_gather(labels)
        logits = self.linear(feats)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"probe_loss": float(loss.detach()),
                "probe_batch_acc": 100.0 * float((logits.argmax(1) == labels).float().mean())}

    @torch.no_grad()
    def accuracy(self, features: Tensor, labels: Tensor) -> float:
        """Top-1 (%) on ``features`` with ``labels`` (on the CPU)."""
        logits = self.linear(features.to(self.device))
        return 100.0 * (logits.argmax(1).cpu() == labels).float().mean().item()

    def state_dict(self) -> dict:
        """The classifier's weights (as a module's)."""
        return self.linear.state_dict()

    def checkpoint_entries(self) -> dict:
        """What a checkpoint holds of the probe: weights and optimizer state."""
        return {"probe": self.linear.state_dict(), "probe_optimizer": self.optimizer.state_dict()}

    def load_checkpoint_entries(self, state: dict) -> None:
        self.linear.load_state_dict(state["probe"])
        self.optimizer.load_state_dict(state["probe_optimizer"])
