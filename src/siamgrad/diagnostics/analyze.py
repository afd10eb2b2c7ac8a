"""``siamgrad analyze gradients``: the gradient decomposition of every method on one batch of a
trained model's features."""

from __future__ import annotations

import torch

from siamgrad.augment.multiview import build_augment
from siamgrad.checkpoint import load_checkpoint
from siamgrad.config import build_config
from siamgrad.data.datasets import load_dataset
from siamgrad.diagnostics.monitor import method_gradient_table
from siamgrad.methods.build import build_method


def gradient_table_for_checkpoint(checkpoint: str, settings: list[str] | None = None,
                                  batch: int = 256) -> str:
    """Rebuild the checkpoint's method, draw one augmented batch of its training data, and tabulate
    the true gradient of every method's loss against its unified form on those features."""
    state = load_checkpoint(checkpoint)
    cfg = build_config(settings, base=state["config"])
    method = build_method(cfg)
    method.load_state_dict(state["method"])
    d = cfg.data
    ds = load_dataset(d.name, d.root, d.train_split, image_size=d.image_size)
    images = ds.images[: min(batch, len(ds))]
    aug = build_augment(cfg.augment.preset, int(state.get("image_size") or ds.image_size), 2,
                        mean=tuple(state["mean"]), std=tuple(state["std"]))
    views = aug(images, generator=torch.Generator().manual_seed(cfg.seed))
    head = (f"gradient decomposition on {len(images)} images of {d.name}, features of the "
            f"{cfg.method.get('name')} checkpoint at step {state.get('step')}\n")
    return head + method_gradient_table(method, views)
