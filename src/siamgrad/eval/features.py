"""The encoder of a checkpoint, its frozen features, and the raw-pixel baseline's "features".

Every evaluation protocol reads the backbone's output on the evaluation transform
(:func:`siamgrad.augment.multiview.normalize_only`: the image, centre-cropped to the training
size when it differs, scaled to ``[0, 1]`` and normalized with the training set's mean/std),
in eval mode (batch-norm running statistics, no dropout).
"""

from __future__ import annotations

import torch
from torch import nn

from siamgrad.augment.multiview import normalize_only
from siamgrad.checkpoint import load_for_reading
from siamgrad.config import from_dict, uses_cifar_stem
from siamgrad.errors import CheckpointError
from siamgrad.models.backbones import build_backbone


def load_backbone(checkpoint: str, device: str = "cpu") -> tuple[nn.Module, dict]:
    """The trained (online) backbone of a checkpoint (or run folder) and the checkpoint's state dict.

    A damaged checkpoint falls back to ``NAME.prev.pt`` beside it with a one-line warning
    (:func:`siamgrad.checkpoint.load_for_reading`)."""
    state, _ = load_for_reading(checkpoint, map_location=device)
    try:
        cfg = from_dict(state["config"])
        backbone, _ = build_backbone(cfg.backbone, cifar_stem=uses_cifar_stem(cfg))
        weights = {k[len("backbone."):]: v for k, v in state["method"].items() if k.startswith("backbone.")}
        backbone.load_state_dict(weights)
    except (KeyError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:100] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint '{checkpoint}' lacks a usable backbone ({first}); "
                              "give a checkpoint written by siamgrad train") from None
    return backbone.to(device), state


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    size: int | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Backbone features (float32, on CPU) of uint8 ``images`` [N, 3, H, W], in eval mode."""
    was_training = backbone.training
    backbone.eval()
    device = torch.device(device)
    size = size or images.shape[-1]
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = normalize_only(images[i : i + batch_size].to(device), size, mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                f = backbone(x)
            out.append(f.float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(out)


def raw_pixel_features(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The raw-pixel kNN baseline: the encoder's own input (pixels in [0, 1] normalized with the
    per-channel ``mean``/``std``), flattened."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((images.float() / 255.0 - m) / s).flatten(1)
