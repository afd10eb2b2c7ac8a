"""``siamgrad analyze gradients``: the gradient decomposition of every method on one batch of a
trained model's features."""

from __future__ import annotations

import torch

from siamgrad.augment.multiview import build_augment
from siamgrad.checkpoint import config_for_checkpoint, load_for_reading
from siamgrad.data.sets import load_data
from siamgrad.diagnostics.monitor import method_gradient_table
from siamgrad.errors import CheckpointError
from siamgrad.methods.from_config import build_method


def gradient_table_for_checkpoint(checkpoint: str, settings: list[str] | None = None,
                                  batch: int = 256) -> str:
    """Rebuild the checkpoint's method, draw one augmented batch of its training data, and tabulate
    the true gradient of every method's loss against its unified form on those features."""
    state, _ = load_for_reading(checkpoint)  # a damaged latest.pt: latest.prev.pt, with a warning
    # the model stays the checkpoint's: method=/backbone= settings are refused in one line
    cfg = config_for_checkpoint(state, settings, applies=("data", "augment", "seed"), command="analyze gradients")
    method = build_method(cfg)
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:120]
        raise CheckpointError(f"the checkpoint '{checkpoint}' does not fit the {cfg.method.get('name')} model its "
                              f"config describes ({first}); analyze a checkpoint written by siamgrad train") from None
    d = cfg.data
    # the run's training set in any format (a streamed one: its fixed in-memory sample)
    data = load_data(d, seed=cfg.seed, size=state.get("image_size"), eval_sets=False)
    images = data.train.images[: min(batch, len(data.train.images))]
    aug = build_augment(cfg.augment.preset, data.image_size, 2, mean=tuple(state["mean"]), std=tuple(state["std"]))
    views = aug(images, generator=torch.Generator().manual_seed(cfg.seed))
    head = (f"gradient decomposition on {len(images)} images of {d.name}, features of the "
            f"{cfg.method.get('name')} checkpoint at step {state.get('step')}\n")
    return head + method_gradient_table(method, views)
