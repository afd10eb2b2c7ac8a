"""View recipes: one view's augmentation settings (:class:`ViewRecipe`) and the named presets
(:data:`PRESETS`) that views cycle through."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from siamgrad.errors import ConfigError

__all__ = ["PRESETS", "ViewRecipe"]

_PROB_FIELDS = ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p")


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"augment: {name} must be a pair of numbers (min, max), got {value!r}") from None
    return lo, hi


@dataclass(frozen=True)
class ViewRecipe:
    """One view's augmentation recipe (SimCLR/BYOL style); :mod:`siamgrad.augment.ops` gives each op.

    Probabilities are per sample. ``brightness``/``contrast``/``saturation`` ``= B`` draw a
    factor in ``[max(0, 1 - B), 1 + B]``; ``hue = h`` draws a shift in ``[-h, h]`` (``h <= 0.5``).
    ``blur_sigma`` is in pixels of a ``blur_sigma_ref_size``-pixel image (``None``: output
    pixels). ``solarize_threshold`` is in ``[0, 1]`` units. Lists are accepted for the pairs.
    """

    size: int = 32
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_sigma_ref_size: int | None = 224
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self) -> None:
        for name in ("scale", "ratio", "blur_sigma"):
            object.__setattr__(self, name, _pair(getattr(self, name), name))
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 2:
            raise ConfigError(f"augment: size must be an integer >= 2, got {self.size!r}")
        lo, hi = self.scale
        if not (0.0 < lo <= hi <= 1.0):
            raise ConfigError(
                f"augment: scale must satisfy 0 < min <= max <= 1, got {self.scale}; e.g. scale=(0.08, 1.0)"
            )
        lo, hi = self.ratio
        if not (0.0 < lo <= hi < math.inf):
            raise ConfigError(f"augment: ratio must satisfy 0 < min <= max, got {self.ratio}; e.g. ratio=(0.75, 1.333)")
        for name in _PROB_FIELDS:
            p = getattr(self, name)
            if not (0.0 <= p <= 1.0):
                raise ConfigError(f"augment: {name} is a probability in [0, 1], got {p}")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not (0.0 <= v < math.inf):
                raise ConfigError(f"augment: {name} must be >= 0 (factor range [max(0, 1-v), 1+v]), got {v}")
        if not (0.0 <= self.hue <= 0.5):
            raise ConfigError(f"augment: hue must be in [0, 0.5], got {self.hue}")
        lo, hi = self.blur_sigma
        if not (0.0 < lo <= hi < math.inf):
            raise ConfigError(f"augment: blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        ref = self.blur_sigma_ref_size
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, int) or ref < 1):
            raise ConfigError(f"augment: blur_sigma_ref_size must be a positive integer or None, got {ref!r}")
        if not (0.0 <= self.solarize_threshold <= 1.0):
            raise ConfigError(f"augment: solarize_threshold must be in [0, 1], got {self.solarize_threshold}")

    @property
    def sigma_scale(self) -> float:
        """Factor from ``blur_sigma`` units to output pixels: ``S / blur_sigma_ref_size`` (or 1)."""
        return 1.0 if self.blur_sigma_ref_size is None else self.size / self.blur_sigma_ref_size


def _recipe(**kw: Any) -> ViewRecipe:
    return ViewRecipe(**kw)


_NO_COLOR = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)

#: Named recipes; a preset lists the recipes that views cycle through.
PRESETS: dict[str, list[ViewRecipe]] = {
    # SimCLR / UniGrad reference pretraining (UniGrad, arXiv 2112.05141): crop 0.2-1, jitter
    # 0.4/0.4/0.4/0.1 p 0.8, gray 0.2, blur p 0.5, flip.
    "simclr": [_recipe()],
    # BYOL: asymmetric views; view 1 always blurred, view 2 rarely blurred and sometimes solarized.
    "byol": [
        _recipe(scale=(0.08, 1.0), saturation=0.2, hue=0.1, blur_p=1.0, solarize_p=0.0),
        _recipe(scale=(0.08, 1.0), saturation=0.2, hue=0.1, blur_p=0.1, solarize_p=0.2),
    ],
    # CIFAR recipe: no blur, no solarize.
    "cifar": [_recipe(scale=(0.08, 1.0), blur_p=0.0)],
    # arXiv 2312.10725 (small projectors, many views): no hue jitter, no blur.
    "cifar_small_proj": [_recipe(scale=(0.08, 1.0), hue=0.0, blur_p=0.0)],
    # Small gray images (digits): mild crop, no flip (digits are not mirror symmetric), no color.
    "digits": [
        _recipe(scale=(0.4, 1.0), flip_p=0.0, saturation=0.0, hue=0.0, gray_p=0.0, blur_p=0.0)
    ],
    # Resize only (the full image for square inputs), no randomness.
    "none": [_recipe(scale=(1.0, 1.0), flip_p=0.0, **_NO_COLOR)],
}
