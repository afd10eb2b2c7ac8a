"""Optimizers (SGD, LARS, AdamW) and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from siamgrad.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    For a parameter ``w`` with gradient ``g`` (weight decay added first), the update uses
    ``g * eta * ||w|| / ||g||`` (``trust``; 1 where either norm is 0), then momentum
    ``mu <- momentum * mu + g`` (``mu`` starts at 0) and ``w <- w - lr * mu``. Parameter groups with
    ``lars_exclude=True`` (biases and normalization weights, by convention) skip both the
    weight decay and the trust ratio. ``eta`` defaults to 0.001, the trust coefficient of the
    official Barlow Twins, VICReg and BYOL code (see docs/methods.md).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def _split_decay(model: nn.Module) -> tuple[list, list]:
    """(weights, biases-and-norm-parameters): parameters of at most one dimension form the second
    group (the references' rule, ``p.ndim == 1``): under LARS it gets neither weight decay nor the
    trust ratio, under AdamW no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def build_optimizer(model: nn.Module, cfg: OptimConfig, batch_size: int) -> torch.optim.Optimizer:
    lr = scaled_lr(cfg, batch_size)
    if cfg.name == "sgd":
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "lars":
        decay, no_decay = _split_decay(model)
        groups = [{"params": decay}, {"params": no_decay, "lars_exclude": True, "weight_decay": 0.0}]
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.lars_eta)
    decay, no_decay = _split_decay(model)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def scaled_lr(cfg: OptimConfig, batch_size: int) -> float:
    return cfg.lr * batch_size / 256 if cfg.lr_scaling == "linear" else cfg.lr


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warmup from ~0 to 1 over ``warmup_steps``, then cosine decay to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor
