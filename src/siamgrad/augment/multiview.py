"""Batched, per-sample-random image augmentations on tensors, on the training device.

Self-supervised methods see every image through ``M`` random *views*. The usual recipe runs a
per-image PIL pipeline in DataLoader workers, which on small images leaves most of a GPU idle.
Here a whole ``uint8`` batch ``[B, 3, H, W]`` already on the device (CPU or CUDA), or a
:class:`~siamgrad.augment.ragged.RaggedImages` batch of differently sized images, is augmented
at once: every random parameter is drawn per sample as a tensor
(:mod:`siamgrad.augment.sampling`), and every operation is a batched tensor op
(:mod:`siamgrad.augment.ops`, which gives the pipeline step by step), with no Python loop over
samples. A view's recipe and the named presets are in :mod:`siamgrad.augment.recipes`.

Random parameters are drawn from the ``torch.Generator`` passed to
:meth:`MultiViewAugment.forward` (on its device, then moved to the images' device), so a seed
fixes the output; :meth:`MultiViewAugment.sample_params` exposes them and
:meth:`MultiViewAugment.apply_params` applies given ones. On CPU each view is processed in
chunks of samples (:data:`CPU_CHUNK_VALUES`), with as many torch threads as the machine's load
leaves cores free (:func:`siamgrad.cpu.limit_threads`, never more than the caller's count: on
an oversubscribed machine one OpenMP thread beats two, which wait for each other at every op);
on CUDA in one piece. There the matmuls follow
torch's float32 matmul precision (TF32 if the user enabled it: errors near a quarter of a
``uint8`` level, harmless for augmentation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

from siamgrad.augment.ops import augment_view, resized_crop
from siamgrad.augment.ragged import RaggedImages
from siamgrad.augment.recipes import PRESETS, ViewRecipe
from siamgrad.augment.sampling import ViewParams, sample_view
from siamgrad.cpu import limit_threads
from siamgrad.errors import ConfigError, DataError

__all__ = ["MultiViewAugment", "build_augment", "default_local_size", "normalize_only"]


def _check_images(images: torch.Tensor) -> float:
    """Check a ``[B, C, H, W]`` batch (C = 3, or 1 for gray); return the gain to ``[0, 1]``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"augment: expected an image batch [B, 3, H, W] (or [B, 1, H, W]), got {shape}")
    if min(images.shape[2:]) < 1:
        raise DataError(f"augment: empty images of shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return 1.0 / 255.0
    if images.is_floating_point():
        return 1.0
    raise DataError(f"augment: images must be uint8 (0..255) or float (0..1), got {images.dtype}")


def _as_float(images: torch.Tensor) -> torch.Tensor:
    x = images.float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _stats(values: Sequence[float] | torch.Tensor, name: str) -> tuple[float, float, float]:
    vals = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ConfigError(f"augment: {name} must be 3 finite numbers (one per channel), got {values!r}")
    if name == "std" and min(vals) <= 0:
        raise ConfigError(f"augment: std must be > 0 per channel, got {vals}")
    return vals[0], vals[1], vals[2]


def _normalize(
    x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], out: torch.Tensor | None = None
) -> torch.Tensor:
    """``(x - mean) / std`` per channel (into ``out`` when given)."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    sd = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return torch.sub(x, m, out=out).div_(sd)


#: On CPU, samples are processed in chunks of about this many values per image tensor (128
#: images of 3x32x32), so each op's working set stays small (cache-resident, and fewer fresh
#: pages from the allocator). Every op is per-sample, so chunking changes no result.
CPU_CHUNK_VALUES = 3 * 32 * 32 * 128


def _check_local(recipes: list[ViewRecipe], local_recipes: list[ViewRecipe], local_views: int) -> None:
    """One-line errors for local crops that are not smaller than the global ones, or missing recipes."""
    if isinstance(local_views, bool) or not isinstance(local_views, int) or local_views < 0:
        raise ConfigError(f"augment: local_views must be an integer >= 0, got {local_views!r}")
    if local_views and not local_recipes:
        raise ConfigError("augment: local_views > 0 needs local_recipes (the local crops' size and scale)")
    smallest = min(r.size for r in recipes)
    for r in local_recipes if local_views else []:
        if r.size >= smallest:
            raise ConfigError(f"augment: local crops of {r.size} px are not smaller than the global crops "
                              f"({smallest} px); give a smaller local size")


class MultiViewAugment(torch.nn.Module):
    """``M`` randomly augmented, normalized views of an image batch.

    View ``v`` uses ``recipes[v % len(recipes)]``. ``forward(images, generator)`` returns a
    list of ``n_views`` float32 tensors ``[B, 3, S_v, S_v]`` on the images' device; it is
    ``apply_params(images, sample_params(B, H, W, generator))``, so the parameters the
    statistics tests inspect are the ones the images went through. ``n_views = 1`` needs
    ``allow_single_view=True`` (Siamese training needs two views).

    Multi-crop: ``local_views = L`` local crops follow the ``n_views`` global ones, local view
    ``l`` with ``local_recipes[l % len(local_recipes)]`` (a smaller size and crop scale); the
    list then holds ``n_views + L`` tensors, the globals first. Their parameters are drawn after
    the globals', so adding local crops leaves the global views of a seed unchanged.
    """

    def __init__(
        self,
        recipes: Sequence[ViewRecipe],
        n_views: int = 2,
        mean: Sequence[float] | torch.Tensor = (0.5, 0.5, 0.5),
        std: Sequence[float] | torch.Tensor = (0.5, 0.5, 0.5),
        allow_single_view: bool = False,
        local_recipes: Sequence[ViewRecipe] = (),
        local_views: int = 0,
    ) -> None:
        super().__init__()
        recipes, local_recipes = list(recipes), list(local_recipes)
        if not recipes or not all(isinstance(r, ViewRecipe) for r in recipes + local_recipes):
            raise ConfigError("augment: recipes must be a non-empty list of ViewRecipe")
        lowest = 1 if allow_single_view else 2
        if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < lowest:
            raise ConfigError(
                f"augment: n_views must be an integer >= {lowest} (Siamese methods compare views), got {n_views!r}"
            )
        _check_local(recipes, local_recipes, local_views)
        self.recipes = recipes
        self.n_views = n_views
        self.local_views = local_views
        self.view_recipes = [recipes[v % len(recipes)] for v in range(n_views)]
        self.view_recipes += [local_recipes[v % len(local_recipes)] for v in range(local_views)]
        self.mean = _stats(mean, "mean")
        self.std = _stats(std, "std")
        self.chunk_size: int | None = None  # samples per chunk; None: automatic
        # CPU threads: "auto" as many as the load leaves free (at most torch's count), an int at
        # most that many, None torch's count as it is
        self.threads: int | str | None = "auto"

    def extra_repr(self) -> str:
        local = f", local_views={self.local_views}" if self.local_views else ""
        return f"n_views={self.n_views}{local}, recipes={self.recipes}, mean={self.mean}, std={self.std}"

    @property
    def total_views(self) -> int:
        """Global plus local views: the length of the list :meth:`forward` returns."""
        return len(self.view_recipes)

    def sample_params(
        self,
        batch_size: int,
        height: int | torch.Tensor,
        width: int | torch.Tensor,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> list[ViewParams]:
        """Every view's per-sample parameters for a batch of ``height x width`` images.

        ``height``/``width``: ints, or integer tensors ``[batch_size]`` with each image's own
        size (a ragged batch; the parameters then carry ``src_sizes``). The uniform draws do not
        depend on the sizes, so one generator state gives the same flips, colors and crop
        shapes (up to the fit inside each image) whatever the sizes. Drawn on ``generator``'s
        device (the default CPU generator when ``None``), then moved to ``device`` when given.
        """
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != (batch_size,):
                raise DataError(f"augment: per-image {name}s must be a tensor [{batch_size}], got {tuple(v.shape)}")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        params = [sample_view(r, batch_size, height, width, generator, gen_device) for r in self.view_recipes]
        if device is not None and torch.device(device) != gen_device:
            params = [p.to(device) for p in params]
        return params

    def _chunk(self, size: int, src_values: int, device: torch.device) -> int | None:
        if self.chunk_size is not None:
            return self.chunk_size
        if device.type != "cpu":
            return None
        return max(1, CPU_CHUNK_VALUES // max(3 * size * size, src_values))

    @torch.no_grad()
    def apply_params(self, images: torch.Tensor | RaggedImages, params: Sequence[ViewParams]) -> list[torch.Tensor]:
        """Augment ``images`` with given parameters (one :class:`ViewParams` per view).

        ``images``: a ``[B, C, H, W]`` batch, or a :class:`RaggedImages` batch whose parameters
        were drawn for its ``sizes``.
        """
        data = images.data if isinstance(images, RaggedImages) else images
        if not isinstance(data, torch.Tensor) or data.device.type != "cpu" or self.threads is None:
            return self._apply(images, params)
        if self.threads != "auto" and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                       or self.threads < 1):
            raise ConfigError(f"augment: threads must be 'auto', a positive integer or None, got {self.threads!r}")
        with limit_threads(None if self.threads == "auto" else self.threads):
            return self._apply(images, params)

    def _apply(self, images: torch.Tensor | RaggedImages, params: Sequence[ViewParams]) -> list[torch.Tensor]:
        ragged = isinstance(images, RaggedImages)
        data = images.data if ragged else images
        gain = _check_images(data)
        if len(params) != self.total_views:
            raise ConfigError(f"augment: got parameters for {len(params)} views, expected {self.total_views}")
        b, _, h, w = data.shape
        dev = data.device
        views = []
        for recipe, p in zip(self.view_recipes, params):
            p = p.to(dev)
            if ragged:
                fits = p.src_sizes is not None and p.batch_size == b and torch.equal(p.src_sizes, images.sizes)
                what = f"{b} images of their own sizes"
            else:
                fits = p.batch_size == b and (
                    (p.src_height, p.src_width) == (h, w) if p.src_sizes is None
                    else bool((p.src_sizes == torch.tensor([h, w])).all())
                )
                what = f"{b} of {h}x{w}"
            if not fits:
                raise DataError(
                    f"augment: parameters drawn for {p.batch_size} images of {p.src_height}x{p.src_width}"
                    f"{' (per-image sizes)' if p.src_sizes is not None else ''}, got {what}; "
                    "call sample_params with the batch's sizes"
                )
            chunk = self._chunk(recipe.size, 3 * h * w, dev)
            if chunk is None or chunk >= b:
                views.append(_normalize(augment_view(_as_float(data), p, recipe, gain), self.mean, self.std))
                continue
            out = torch.empty(b, 3, recipe.size, recipe.size, device=dev)
            for s in range(0, b, chunk):
                # a ragged chunk is trimmed to its own largest image (less padding to resample)
                part = images.slice(s, s + chunk).data if ragged else data[s : s + chunk]
                y = augment_view(_as_float(part), p.slice(s, s + chunk), recipe, gain)
                _normalize(y, self.mean, self.std, out=out[s : s + chunk])
            views.append(out)
        return views

    def forward(
        self,
        images: torch.Tensor | RaggedImages,
        generator: torch.Generator | None = None,
        share: tuple[int, int] | None = None,
    ) -> list[torch.Tensor]:
        """``n_views`` augmented, normalized float32 views ``[B, 3, S, S]`` of ``images``.

        ``images``: a ``[B, C, H, W]`` batch or a :class:`RaggedImages` batch of differently
        sized images (each cropped from its own extent). ``share=(rank, world)``: ``images`` are
        rank ``rank``'s ``B`` samples of a global batch of ``world * B``; the parameters are
        drawn for the whole global batch and rows ``rank B .. (rank + 1) B - 1`` are applied, so
        every sample is augmented as it would be in one process.
        """
        rank, world = share if share is not None else (0, 1)
        if not (isinstance(world, int) and isinstance(rank, int) and world >= 1 and 0 <= rank < world):
            raise ConfigError(f"augment: share must be (rank, world) with 0 <= rank < world, got {share!r}")
        if isinstance(images, RaggedImages):
            b = len(images)
            sizes = images.sizes.repeat(world, 1)  # the other ranks' rows: any valid size will do
            params = self.sample_params(b * world, sizes[:, 0], sizes[:, 1], generator, images.device)
        else:
            _check_images(images)
            b, _, h, w = images.shape
            params = self.sample_params(b * world, h, w, generator, images.device)
        if world > 1:
            params = [p.slice(rank * b, (rank + 1) * b) for p in params]
        return self.apply_params(images, params)


def build_augment(
    preset: str,
    size: int,
    n_views: int = 2,
    mean: Sequence[float] | torch.Tensor = (0.5, 0.5, 0.5),
    std: Sequence[float] | torch.Tensor = (0.5, 0.5, 0.5),
    local_views: int = 0,
    local_size: int | None = None,
    local_scale: tuple[float, float] = (0.05, 0.14),
    **overrides: Any,
) -> MultiViewAugment:
    """The named preset's recipes at output side ``size``, with ``overrides`` on every view.

    ``overrides`` set :class:`ViewRecipe` fields (e.g. ``scale=(0.08, 1.0), blur_p=0.0``).
    Unknown preset or field names raise a one-line :class:`ConfigError` listing the valid ones.
    ``local_views`` local crops use the same recipes at ``local_size`` (default
    :func:`default_local_size`) with the crop scale ``local_scale``.

    >>> images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    >>> views = build_augment("cifar", size=24, n_views=2, local_views=2, local_size=12)(images)
    >>> [tuple(v.shape) for v in views]
    [(4, 3, 24, 24), (4, 3, 24, 24), (4, 3, 12, 12), (4, 3, 12, 12)]
    """
    if preset not in PRESETS:
        raise ConfigError(f"augment: unknown preset {preset!r}; valid presets: {', '.join(sorted(PRESETS))}")
    fields = [f.name for f in dataclasses.fields(ViewRecipe) if f.name != "size"]
    unknown = sorted(k for k in overrides if k not in fields)
    if unknown:
        raise ConfigError(f"augment: unknown option(s) {', '.join(unknown)}; valid options: {', '.join(fields)}")
    recipes = [dataclasses.replace(r, size=size, **overrides) for r in PRESETS[preset]]
    local = local_size if local_size is not None else default_local_size(size)
    local_recipes = [dataclasses.replace(r, size=local, scale=local_scale) for r in recipes] if local_views else []
    return MultiViewAugment(recipes, n_views=n_views, mean=mean, std=std, local_recipes=local_recipes,
                            local_views=local_views)


def default_local_size(size: int) -> int:
    """Local crop side for global crops of ``size``: ``round(size * 96 / 224)`` (DINO's and UniGrad's
    96 px beside 224 px), at least 2."""
    return max(2, round(size * 96 / 224))


@torch.no_grad()
def normalize_only(
    images: torch.Tensor,
    size: int,
    mean: Sequence[float] | torch.Tensor = (0.5, 0.5, 0.5),
    std: Sequence[float] | torch.Tensor = (0.5, 0.5, 0.5),
) -> torch.Tensor:
    """Evaluation transform: float32 ``[B, 3, size, size]``, ``(x / 255 - mean) / std``.

    Images already ``size x size`` are not resampled; others have their centered square
    (torchvision's center-crop offsets) resampled to ``size`` with antialiased bilinear
    interpolation (the same resampler as the training crops).
    """
    m, s = _stats(mean, "mean"), _stats(std, "std")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"augment: size must be a positive integer, got {size!r}")
    gain = _check_images(images)
    x = _as_float(images)
    b, _, h, w = x.shape
    if (h, w) == (size, size):
        y = x * gain
    else:
        side = min(h, w)
        full = torch.full((b,), side, dtype=torch.long, device=x.device)
        top = torch.full_like(full, int(round((h - side) / 2)))
        left = torch.full_like(full, int(round((w - side) / 2)))
        y = resized_crop(x, top, left, full, full, size, gain=gain)
    return _normalize(y, m, s)
