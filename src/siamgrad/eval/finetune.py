"""Fine-tuning: the whole encoder and a linear head trained on the labels, then top-1.

A short standard supervised schedule on the labeled training images: SGD (momentum 0.9,
Nesterov), cosine learning-rate decay to zero over ``epochs`` (no warm-up), weight decay on all
weights, cross-entropy. Augmentation: the pretraining preset's random resized crop and flip
(:mod:`siamgrad.augment.multiview`, one view per image, drawn per step from a generator seeded
by ``(seed, step)``), without colour jitter, grayscale, blur or solarize, as supervised
fine-tuning recipes do. The batch order of epoch ``e`` is a permutation seeded by
``(seed, e)``. Evaluation: the evaluation transform (no augmentation), eval mode, top-1 on the
evaluation split. The encoder passed in is copied, never changed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from siamgrad.augment.multiview import MultiViewAugment, normalize_only

from siamgrad.augment.recipes import PRESETS
from siamgrad.data.in_memory import ImageDataset
from siamgrad.data.seeding import epoch_generator, step_generator

_NO_COLOR = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)


@dataclasses.dataclass
class FinetuneSettings:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    seed: int = 0


def finetune_augment(preset: str, size: int, mean, std, scale: tuple[float, float] | None = None) -> MultiViewAugment:
    """One view per image: ``preset``'s crop (``scale`` overriding its range) and flip, no colour ops."""
    recipe = dataclasses.replace(PRESETS[preset][0], size=size, **_NO_COLOR,
                                 **({"scale": tuple(scale)} if scale is not None else {}))
    return MultiViewAugment([recipe], n_views=1, mean=mean, std=std, allow_single_view=True)


@torch.no_grad()
def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std, size: int, *,
         device: torch.device, batch_size: int = 512, autocast_dtype: torch.dtype | None = None) -> float:
    """Top-1 (%) of ``model`` (eval mode) on uint8 ``images`` with the evaluation transform."""
    was = model.training
    model.eval()
    correct = 0
    try:
        for i in range(0, len(images), batch_size):
            x = normalize_only(images[i : i + batch_size].to(device), size, mean, std)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                pred = model(x).argmax(1).cpu()
            correct += int((pred == labels[i : i + batch_size]).sum())
    finally:
        model.train(was)
    return 100.0 * correct / max(1, len(images))


def finetune(
    backbone: nn.Module,
    feature_dim: int,
    train: ImageDataset,
    test: ImageDataset,
    augment: MultiViewAugment,
    *,
    mean,
    std,
    size: int,
    settings: FinetuneSettings = FinetuneSettings(),
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict:
    """Fine-tune a copy of ``backbone`` with a linear head; ``{"test_top1", "train_top1", "steps", ...}``.

    ``train_top1`` is the running accuracy on the augmented batches of the last epoch.
    """
    device = torch.device(device)
    s = settings
    torch.manual_seed(s.seed)  # the head's initialization
    model = nn.Sequential(copy.deepcopy(backbone), nn.Linear(feature_dim, len(train.classes))).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # biases and norm scales
    opt = torch.optim.SGD([{"params": decay, "weight_decay": s.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=s.lr, momentum=s.momentum, nesterov=True)
    n = len(train)
    steps_per_epoch = n // s.batch_size + (1 if n % s.batch_size >= 2 else 0)  # no batch of 1 (batch norm)
    total = s.epochs * steps_per_epoch
    labels = train.labels
    step, t0 = 0, time.monotonic()
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    train_acc = 0.0
    for epoch in range(s.epochs):
        order = torch.randperm(n, generator=epoch_generator(s.seed, epoch))
        correct = seen = 0
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * s.batch_size : (b + 1) * s.batch_size]
            (x,) = augment(train.images[idx].to(device), generator=step_generator(s.seed, step))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx].to(device)
            for group in opt.param_groups:
                group["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
        train_acc = 100.0 * correct / max(1, seen)
        say(f"finetune epoch {epoch + 1}/{s.epochs}: loss {loss_sum / max(1, seen):.4f}, "
            f"train top-1 {train_acc:.2f}% (augmented), {time.monotonic() - t0:.0f}s")
    test_acc = top1(model, test.images, test.labels, mean, std, size, device=device, autocast_dtype=autocast_dtype)
    return {"test_top1": test_acc, "train_top1": train_acc, "steps": step, **dataclasses.asdict(s)}
