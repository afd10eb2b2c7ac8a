"""Batched, per-sample-random image augmentations on tensors, on the training device.

Self-supervised methods see every image through ``M`` random *views*. The usual recipe runs a
per-image PIL pipeline in DataLoader workers, which on small images leaves most of a GPU idle.
Here a whole ``uint8`` batch ``[B, 3, H, W]`` already on the device (CPU or CUDA) is augmented
at once: every random parameter is drawn per sample as a tensor, and every operation is a
batched tensor op, with no Python loop over samples.

Pipeline of one view (the SimCLR/BYOL order), on float32 values in ``[0, 1]``:

1. **Random resized crop + horizontal flip** (torchvision ``RandomResizedCrop`` semantics):
   per sample, 10 candidate boxes are drawn at once, area ``a = H W U(scale)``, aspect
   ``r = exp(U(log ratio))``, ``w = round(sqrt(a r))``, ``h = round(sqrt(a / r))``; the first
   candidate that fits (``0 < w <= W``, ``0 < h <= H``) is kept, at a uniform integer position;
   when none fits, the fallback is torchvision's center crop (the whole image, trimmed to the
   nearest allowed aspect ratio). The box is resampled to ``S x S`` with bilinear
   interpolation *with antialiasing* (the triangle filter widened by the downscale factor, as
   ``torch.nn.functional.interpolate(..., antialias=True)`` and torchvision's ``resized_crop``
   do), written as two per-sample resampling matrices: ``out = R_y X R_x^T`` where
   ``R_y`` is ``[S, H]`` and ``R_x`` is ``[S, W]`` and only the pixels inside the box carry
   weight. Two batched matmuls resample all boxes at once; the flip is folded into ``R_x``
   (its rows reversed) and the ``1/255`` scaling of ``uint8`` input into the weights.
   *Ragged batches* (:class:`RaggedImages`: decoded images of different sizes, padded into one
   tensor with their sizes alongside) follow the same rules per image: each box is drawn from
   the image's own ``H x W`` (the same uniforms as for a same-size batch) and lies inside it,
   and the resampling matrices give zero weight outside the box, so the padding is never read
   and one pair of batched matmuls still crops every image straight to ``S x S``. A ragged
   batch of equal-size images gives exactly the result of the ordinary batch.
2. **Color jitter** (probability ``jitter_p``), per-sample factors ``b ~ U[max(0, 1-B), 1+B]``,
   ``c``, ``s`` likewise, hue shift ``~ U[-hue, hue]``, applied in the fixed order brightness,
   contrast, saturation, hue, each followed by a clamp to ``[0, 1]``:
   brightness ``x -> b x``; contrast ``x -> c x + (1 - c) mean(gray(x))`` (one mean per image);
   saturation ``x -> s x + (1 - s) gray(x)`` (per pixel); hue: RGB -> HSV, ``h -> (h + shift)
   mod 1``, HSV -> RGB. This is the math of torchvision's ``adjust_*`` ops. torchvision draws a
   random order per image; a fixed order is used here (no host-side randomness, no device
   sync). Without the clamps brightness, contrast and saturation commute (they are linear and
   saturation keeps the gray level), so only the place of the hue shift and the clamping
   differ from a random order.
3. **Grayscale** (probability ``gray_p``): ``y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R 601-2
   luma, as PIL; torchvision's tensor op uses 0.2989 for the red weight), copied to 3 channels.
4. **Gaussian blur** (probability ``blur_p``): per-sample ``sigma ~ U(blur_sigma)``, kernel of
   odd size ``k = max(3, 2 floor(S / 20) + 1)`` (about 10% of the side: 23 at ``S = 224``),
   weights ``exp(-d^2 / (2 sigma^2))`` normalized to sum 1, reflect padding; separable: a row
   pass then a column pass, as ``k`` shifted weighted copies (CPU, short kernels) or depthwise
   convolutions grouped over the batch (long kernels on a GPU). ``blur_sigma`` is in pixels of a ``blur_sigma_ref_size``-pixel image
   (224 by default) and is scaled by ``S / blur_sigma_ref_size``, so the blur covers the same
   fraction of the image at every resolution and matches the ImageNet recipe at ``S = 224``;
   ``blur_sigma_ref_size=None`` takes ``blur_sigma`` in output pixels.
5. **Solarize** (probability ``solarize_p``): ``x -> 1 - x`` where ``x >= solarize_threshold``.
6. **Normalize**: ``(x - mean) / std`` per channel.

Samples not selected for an op keep their values exactly (identity factors, or ``lerp`` by
exactly 0). Random parameters are drawn from the ``torch.Generator`` passed to
:meth:`MultiViewAugment.forward` (on its device, then moved to the images' device), so a seed
fixes the output; :meth:`MultiViewAugment.sample_params` exposes them and
:meth:`MultiViewAugment.apply_params` applies given ones. On CPU each view is processed in
chunks of samples (:data:`CPU_CHUNK_VALUES`), with as many torch threads as the machine's load
leaves cores free (:func:`siamgrad.cpu.limit_threads`, never more than the caller's count: on
an oversubscribed machine one OpenMP thread beats two, which wait for each other at every op);
on CUDA in one piece. There the matmuls follow
torch's float32 matmul precision (TF32 if the user enabled it: errors near a quarter of a
``uint8`` level, harmless for augmentation).

Op by op, the results equal torchvision's functional ops (``resized_crop`` with antialiasing,
``horizontal_flip``, ``adjust_brightness/contrast/saturation/hue``, ``rgb_to_grayscale``,
``gaussian_blur``, ``solarize``, ``normalize``) to float rounding, apart from the luma weights
(0.299 here, 0.2989 there); the tests check this image by image.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from siamgrad.cpu import limit_threads
from siamgrad.errors import ConfigError, DataError

__all__ = [
    "LUMA_WEIGHTS",
    "PRESETS",
    "CROP_TRIES",
    "MultiViewAugment",
    "RaggedImages",
    "ViewParams",
    "ViewRecipe",
    "blur_kernel_size",
    "build_augment",
    "default_local_size",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "augment_view",
    "gaussian_blur",
    "normalize_only",
    "resized_crop",
    "rgb_to_gray",
    "sample_crop_boxes",
    "solarize",
]

#: ITU-R 601-2 luma weights for (R, G, B), used by grayscale, contrast and saturation.
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)

#: Candidate boxes drawn per sample before the center-crop fallback (as torchvision).
CROP_TRIES = 10

_PROB_FIELDS = ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p")


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"augment: {name} must be a pair of numbers (min, max), got {value!r}") from None
    return lo, hi


@dataclass(frozen=True)
class ViewRecipe:
    """One view's augmentation recipe (SimCLR/BYOL style); see the module docstring.

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


def blur_kernel_size(size: int) -> int:
    """Odd Gaussian kernel size for an ``size``-pixel side: ``max(3, 2 floor(size / 20) + 1)``."""
    return max(3, 2 * (size // 20) + 1)


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


# --------------------------------------------------------------------------------------------
# Ragged batches: images of different sizes
# --------------------------------------------------------------------------------------------


@dataclass
class RaggedImages:
    """A batch of images of different sizes, stored padded in one tensor.

    ``data`` is ``uint8`` (or float) ``[B, C, H, W]`` with ``H``/``W`` at least the largest
    height/width; image ``i`` is ``data[i, :, :h_i, :w_i]`` and the rest of its plane is padding
    (zeros from :meth:`from_list`, never read: every crop box lies inside its image and the
    resampling weights are zero outside the box). ``sizes`` is ``int64 [B, 2]`` holding the rows
    ``(h_i, w_i)``; it stays on the CPU (the random boxes are drawn there) while ``data`` moves
    to the device. :class:`MultiViewAugment` crops every image straight to the output size in
    one batched resampling per view.
    """

    data: torch.Tensor
    sizes: torch.Tensor

    def __post_init__(self) -> None:
        d, sz = self.data, self.sizes
        if not isinstance(d, torch.Tensor) or d.dim() != 4 or d.shape[1] not in (1, 3):
            shape = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise DataError(f"augment: ragged data must be a padded batch [B, 3, H, W], got {shape}")
        sz = torch.as_tensor(sz, dtype=torch.int64).cpu()
        if sz.shape != (d.shape[0], 2):
            raise DataError(f"augment: ragged sizes must be [B, 2] = [{d.shape[0]}, 2], got {tuple(sz.shape)}")
        if sz.numel() and (bool((sz < 1).any()) or int(sz[:, 0].max()) > d.shape[2] or int(sz[:, 1].max()) > d.shape[3]):
            raise DataError(
                f"augment: ragged sizes must lie in 1..{d.shape[2]} x 1..{d.shape[3]} (the padded size)"
            )
        self.sizes = sz

    @classmethod
    def from_list(cls, images: Sequence[torch.Tensor], device: torch.device | str | None = None) -> RaggedImages:
        """Pad ``[C, h_i, w_i]`` images (one dtype, one channel count) into one batch.

        The copies are plain slice assignments (no per-image compute), on ``device`` (default:
        the first image's device).
        """
        if len(images) == 0:
            raise DataError("augment: a ragged batch needs at least one image")
        first = images[0]
        if any(im.dim() != 3 or im.shape[0] != first.shape[0] or im.dtype != first.dtype for im in images):
            raise DataError("augment: ragged images must all be [C, h, w] tensors of one dtype and channel count")
        sizes = torch.tensor([[int(im.shape[1]), int(im.shape[2])] for im in images], dtype=torch.int64)
        dev = torch.device(device) if device is not None else first.device
        data = torch.zeros(
            (len(images), first.shape[0], int(sizes[:, 0].max()), int(sizes[:, 1].max())), dtype=first.dtype, device=dev
        )
        for i, im in enumerate(images):
            data[i, :, : im.shape[1], : im.shape[2]].copy_(im, non_blocking=True)
        return cls(data, sizes)

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def uniform(self) -> bool:
        """True when every image has the padded size (the batch is an ordinary tensor batch)."""
        return bool((self.sizes[:, 0] == self.data.shape[2]).all() and (self.sizes[:, 1] == self.data.shape[3]).all())

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` without its padding (a view)."""
        h, w = (int(v) for v in self.sizes[i])
        return self.data[i, :, :h, :w]

    def slice(self, start: int, stop: int) -> RaggedImages:
        """Images ``start .. stop - 1``, the padding trimmed to their largest size."""
        sz = self.sizes[start:stop]
        h, w = int(sz[:, 0].max()), int(sz[:, 1].max())
        return RaggedImages(self.data[start:stop, :, :h, :w], sz)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RaggedImages:
        return RaggedImages(self.data.to(device, non_blocking=non_blocking), self.sizes)

    def pin_memory(self) -> RaggedImages:
        return RaggedImages(self.data.pin_memory(), self.sizes)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass
class ViewParams:
    """Per-sample random parameters of one view (tensors of length ``B``).

    Crop box in source pixels: rows ``top .. top+height-1``, columns ``left .. left+width-1``
    of an ``src_height x src_width`` image. For a ragged batch (:class:`RaggedImages`)
    ``src_sizes`` holds every image's own ``(height, width)`` (``int64 [B, 2]``, kept on the
    CPU) and ``src_height x src_width`` is the padded size, the largest of them. Boolean masks say which samples get each op; the
    jitter factors are the drawn values (used only where ``jitter``), ``sigma`` the blur sigma
    in output pixels (used only where ``blur``).
    """

    src_height: int
    src_width: int
    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor
    src_sizes: torch.Tensor | None = None

    _TENSORS = (
        "top", "left", "height", "width", "flip", "jitter", "brightness", "contrast",
        "saturation", "hue", "gray", "blur", "sigma", "solarize",
    )  # fmt: skip

    @property
    def batch_size(self) -> int:
        return self.top.shape[0]

    @property
    def area_fraction(self) -> torch.Tensor:
        """Crop area over image area, ``h w / (H W)`` (each image's own ``H W`` when ragged)."""
        if self.src_sizes is not None:
            hw = self.src_sizes.to(self.height.device)
            return (self.height * self.width).double() / (hw[:, 0] * hw[:, 1]).double()
        return (self.height * self.width).double() / (self.src_height * self.src_width)

    @property
    def aspect_ratio(self) -> torch.Tensor:
        """Crop aspect ratio ``w / h``."""
        return self.width.double() / self.height.double()

    def to(self, device: torch.device | str) -> ViewParams:
        """The parameters on ``device`` (``src_sizes``, bookkeeping only, stays on the CPU)."""
        moved = {k: getattr(self, k).to(device) for k in self._TENSORS}
        return ViewParams(src_height=self.src_height, src_width=self.src_width, src_sizes=self.src_sizes, **moved)

    def slice(self, start: int, stop: int) -> ViewParams:
        """The parameters of samples ``start .. stop - 1``."""
        part = {k: getattr(self, k)[start:stop] for k in self._TENSORS}
        sizes = None if self.src_sizes is None else self.src_sizes[start:stop]
        return ViewParams(src_height=self.src_height, src_width=self.src_width, src_sizes=sizes, **part)


def _uniform(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * u


def sample_crop_boxes(
    u_area: torch.Tensor,
    u_ratio: torch.Tensor,
    u_top: torch.Tensor,
    u_left: torch.Tensor,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random-resized-crop boxes from uniform draws, vectorized over the batch.

    ``height``/``width`` are the images' size: ints for a batch of one size, or integer tensors
    ``[B]`` with every image's own size (a ragged batch); the rules below then hold per sample,
    with each image's own ``H`` and ``W``, and give the same boxes as the int form for images of
    that size.

    ``u_area``, ``u_ratio``: ``[B, T]`` uniforms for ``T`` candidate boxes; ``u_top``,
    ``u_left``: ``[B]`` uniforms for the position. Candidate ``t``: area
    ``a = H W (s0 + (s1 - s0) u)``, aspect ``r = exp(log r0 + (log r1 - log r0) u)``,
    ``w = round(sqrt(a r))``, ``h = round(sqrt(a / r))`` (half to even, as Python's round).
    The first candidate with ``0 < w <= W`` and ``0 < h <= H`` wins; without one, the fallback
    is a centered box: the whole image if ``W / H`` lies within ``ratio``, else trimmed to the
    nearest bound (``w = W, h = round(W / r0)`` or ``h = H, w = round(H r1)``). The position is
    uniform over the integer offsets: ``top = floor(u (H - h + 1))``.

    Returns ``(top, left, h, w)`` as int64 tensors ``[B]``.
    """
    b, dev = u_area.shape[0], u_area.device
    hi = torch.as_tensor(height, device=dev).to(torch.int64).expand(b)
    wi = torch.as_tensor(width, device=dev).to(torch.int64).expand(b)
    if (isinstance(height, torch.Tensor) or isinstance(width, torch.Tensor)) and (
        bool((hi < 1).any()) or bool((wi < 1).any())
    ):
        raise DataError("augment: every image of a ragged batch needs a height and width >= 1")
    area = (hi * wi).to(torch.float32)[:, None]  # exact below 2^24 pixels
    target = area * _uniform(u_area, scale[0], scale[1])
    aspect = torch.exp(_uniform(u_ratio, math.log(ratio[0]), math.log(ratio[1])))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= wi[:, None]) & (h > 0) & (h <= hi[:, None])
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # first valid candidate (or 0)
    found = valid.any(dim=1)
    # the fallback box per image, in float64 (as torchvision computes it in Python floats)
    hd, wd = hi.double(), wi.double()
    in_ratio = wd / hd
    narrow, wide = in_ratio < ratio[0], in_ratio > ratio[1]
    fw = torch.where(wide, torch.round(hd * ratio[1]), wd)
    fh = torch.where(narrow, torch.round(wd / ratio[0]), hd)
    fw = torch.where(narrow, wd, fw)
    fh = torch.where(wide, hd, fh)
    w = torch.where(found, w.gather(1, first).squeeze(1).double(), fw).long()
    h = torch.where(found, h.gather(1, first).squeeze(1).double(), fh).long()
    n_top = hi - h + 1
    n_left = wi - w + 1
    top = torch.minimum((u_top * n_top).floor().long(), n_top - 1)
    left = torch.minimum((u_left * n_left).floor().long(), n_left - 1)
    # the fallback box is centered, as torchvision's
    top = torch.where(found, top, (hi - h) // 2)
    left = torch.where(found, left, (wi - w) // 2)
    return top, left, h, w


def _sample_view(
    recipe: ViewRecipe, batch_size: int, height: int | torch.Tensor, width: int | torch.Tensor,
    generator: torch.Generator | None, device: torch.device,
) -> ViewParams:
    """Draw one view's parameters: one ``[B, 2T + 12]`` uniform tensor, sliced by column.

    ``height``/``width``: ints, or integer tensors ``[B]`` of per-image sizes (ragged batch).
    """
    t = CROP_TRIES
    u = torch.rand(batch_size, 2 * t + 12, generator=generator, device=device)
    top, left, h, w = sample_crop_boxes(
        u[:, :t], u[:, t : 2 * t], u[:, 2 * t], u[:, 2 * t + 1], height, width, recipe.scale, recipe.ratio
    )
    c = u[:, 2 * t + 2 :]

    def factor(col: torch.Tensor, amount: float) -> torch.Tensor:
        return _uniform(col, max(0.0, 1.0 - amount), 1.0 + amount)

    sig_lo, sig_hi = recipe.blur_sigma
    src_sizes = None
    if isinstance(height, torch.Tensor) or isinstance(width, torch.Tensor):
        src_sizes = torch.stack(
            [torch.as_tensor(height).to(torch.int64).expand(batch_size).cpu(),
             torch.as_tensor(width).to(torch.int64).expand(batch_size).cpu()], dim=1
        )
        height, width = int(src_sizes[:, 0].max()), int(src_sizes[:, 1].max())
    return ViewParams(
        src_height=height,
        src_width=width,
        src_sizes=src_sizes,
        top=top,
        left=left,
        height=h,
        width=w,
        flip=c[:, 0] < recipe.flip_p,
        jitter=c[:, 1] < recipe.jitter_p,
        brightness=factor(c[:, 2], recipe.brightness),
        contrast=factor(c[:, 3], recipe.contrast),
        saturation=factor(c[:, 4], recipe.saturation),
        hue=_uniform(c[:, 5], -recipe.hue, recipe.hue),
        gray=c[:, 6] < recipe.gray_p,
        blur=c[:, 7] < recipe.blur_p,
        sigma=_uniform(c[:, 8], sig_lo, sig_hi) * recipe.sigma_scale,
        solarize=c[:, 9] < recipe.solarize_p,
    )


# --------------------------------------------------------------------------------------------
# Batched ops on float32 [N, 3, S, S] in [0, 1]; per-sample values are tensors [N]
# --------------------------------------------------------------------------------------------


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def _select(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` where the per-sample ``mask`` is set, else ``old``, exactly (``lerp`` by 0 or 1)."""
    weight = mask.to(old.dtype).view(-1, *([1] * (old.dim() - 1)))
    return torch.lerp(old, new, weight)


def _resample_matrix(
    start: torch.Tensor,
    length: torch.Tensor,
    in_size: int,
    out_size: int,
    gain: float,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Antialiased bilinear resampling matrices ``[N, out_size, in_size]`` for 1-D crops.

    Output ``o`` of the crop ``[start, start + L)`` sits at crop coordinate
    ``c = (o + 1/2) L / S`` (``o -> S - 1 - o`` where ``flip``); input pixel ``x`` (crop
    coordinate ``x - start + 1/2`` at its center) gets weight
    ``tri((x - start + 1/2 - c) / max(L / S, 1))`` with ``tri(t) = max(0, 1 - |t|)``, zero
    outside the crop; rows are normalized to sum ``gain``. For ``L <= S`` this is plain
    bilinear interpolation (``align_corners=False``, edges clamped to the crop); for ``L > S``
    the triangle widens to average every covered pixel (antialiasing), as PyTorch's
    ``interpolate(..., antialias=True)``.
    """
    dev = start.device
    scale = length.float() / out_size  # [N]
    inv_support = 1.0 / scale.clamp(min=1.0)
    o = torch.arange(out_size, device=dev, dtype=torch.float32).expand(start.shape[0], out_size)
    if flip is not None:
        o = torch.where(flip[:, None], (out_size - 1) - o, o)
    center = (o + 0.5) * (scale * inv_support)[:, None]  # [N, S], in units of the support
    rel = torch.arange(in_size, device=dev, dtype=torch.float32) - start.float()[:, None]  # [N, in]
    pos = torch.where((rel >= 0) & (rel < length.float()[:, None]), (rel + 0.5) * inv_support[:, None], math.inf)
    w = (pos[:, None, :] - center[:, :, None]).abs_().neg_().add_(1.0).clamp_(min=0.0)
    return w.mul_(gain / w.sum(dim=2, keepdim=True))


def resized_crop(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    size: int,
    flip: torch.Tensor | None = None,
    gain: float = 1.0,
) -> torch.Tensor:
    """Crop per-sample boxes from ``x`` ``[N, C, H, W]``, resample to ``size x size``, flip.

    ``out = R_y X R_x^T`` with :func:`_resample_matrix` weights (two batched matmuls); a
    horizontal flip reverses the rows of ``R_x``; ``gain`` scales the values (``1/255``).
    """
    n, c, hh, ww = x.shape
    ry = _resample_matrix(top, height, hh, size, 1.0)  # [N, S, H]
    rx = _resample_matrix(left, width, ww, size, gain, flip)  # [N, S, W]
    # the cheaper of the two orders
    if hh * (ww + size) <= ww * (hh + size):
        t = torch.bmm(x.reshape(n, c * hh, ww), rx.transpose(1, 2))  # [N, C H, S]
        return torch.matmul(ry[:, None], t.view(n, c, hh, size))
    t = torch.matmul(ry[:, None], x)  # [N, C, S, W]
    return torch.bmm(t.view(n, c * size, ww), rx.transpose(1, 2)).view(n, c, size, size)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` (:data:`LUMA_WEIGHTS`) per pixel, ``[N, 1, H, W]``."""
    wr, wg, wb = LUMA_WEIGHTS
    r, g, b = x.unbind(1)
    return (r * wr).add_(g, alpha=wg).add_(b, alpha=wb).unsqueeze(1)


def _brightness_(y: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return y.mul_(_per_sample(factor)).clamp_(0.0, 1.0)


def _contrast_(y: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    wr, wg, wb = LUMA_WEIGHTS
    ch = y.mean(dim=(2, 3))  # [N, 3]; mean luma = luma of the channel means
    mean = _per_sample(ch[:, 0] * wr + ch[:, 1] * wg + ch[:, 2] * wb)
    f = _per_sample(factor)
    return y.mul_(f).add_(mean * (1.0 - f)).clamp_(0.0, 1.0)


def _saturation_(y: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_sample(factor)
    gray = rgb_to_gray(y).mul_(1.0 - f)
    return y.mul_(f).add_(gray).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(b x, 0, 1)`` with per-sample ``b`` ``[N]``."""
    return _brightness_(x.clone(), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(c x + (1 - c) m, 0, 1)``, ``m`` each image's mean luma, per-sample ``c``."""
    return _contrast_(x.clone(), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(s x + (1 - s) gray(x), 0, 1)`` per pixel, per-sample ``s``."""
    return _saturation_(x.clone(), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``shift`` (a fraction of a turn, per sample), keeping S and V.

    With ``M = max(R, G, B)``, ``m = min``, ``d = M - m``, the hue in sixths of a turn is
    ``h = (G - B) / d`` if ``M = R``, ``2 + (B - R) / d`` if ``M = G``, else ``4 + (R - G) / d``
    (the first match wins, as in torchvision's ``_rgb_to_hsv``). With
    ``h' = (h + 6 shift) mod 6``, HSV -> RGB (``V = M``, ``V S = d``) in closed form is
    ``R = m + d clamp(|h' - 3| - 1, 0, 1)``, ``G = m + d clamp(2 - |h' - 2|, 0, 1)``,
    ``B = m + d clamp(2 - |h' - 4|, 0, 1)`` -- the six-sector table of torchvision's
    ``_hsv_to_rgb`` without branches. Returns a new tensor.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    minc = torch.minimum(r, g)
    torch.minimum(minc, b, out=minc)
    delta = maxc - minc
    inv = delta.clamp(min=1e-30).reciprocal_()  # d = 0: every numerator below is 0 too
    not_r = torch.sign(maxc - r)  # 0 where R is the max, else 1 (maxc - r >= 0)
    not_g = torch.sign(maxc.sub_(g))  # maxc is not needed below
    h = (g - b).mul_(inv)
    h_g = (b - r).mul_(inv).add_(2.0)
    h_b = (r - g).mul_(inv).add_(4.0)
    h.lerp_(h_g.lerp_(h_b, not_g), not_r)  # lerp by exactly 0 or 1 selects
    h.add_(shift.reshape(-1, 1, 1), alpha=6.0)
    h.sub_(torch.floor(h * (1.0 / 6.0)).mul_(6.0))  # mod 6
    out = torch.empty_like(x)
    for c, (center, rising) in enumerate(((3.0, True), (2.0, False), (4.0, False))):
        t = (h - center).abs_()
        t = t.sub_(1.0) if rising else t.neg_().add_(2.0)
        torch.addcmul(minc, delta, t.clamp_(0.0, 1.0), out=out[:, c])
    return out


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Normalized 1-D Gaussian kernels ``[N, k]``: ``exp(-d^2 / (2 sigma^2))``, ``d = -k//2 .. k//2``."""
    d = torch.arange(kernel_size, device=sigma.device, dtype=torch.float32) - (kernel_size - 1) / 2
    return torch.softmax(-(d[None, :] ** 2) / (2.0 * sigma.float()[:, None] ** 2), dim=1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int, method: str = "auto") -> torch.Tensor:
    """Separable Gaussian blur with per-sample ``sigma`` and reflect padding. Returns a new tensor.

    The image is reflect-padded by ``k // 2`` on every side, then filtered along rows and then
    columns with each sample's kernel (:func:`gaussian_kernels`); this equals torchvision's
    ``gaussian_blur`` (reflect pad + 2-D convolution with the outer product of the kernels).
    ``method="taps"`` sums ``k`` shifted, weighted copies per direction (fastest for small
    kernels, and on CPU); ``"conv"`` runs depthwise convolutions grouped over ``N x C`` channels
    (fewer passes over memory for long kernels on a GPU); ``"auto"`` picks taps on CPU or for
    ``k <= 7``, else conv.
    """
    n, c, hh, ww = x.shape
    pad = kernel_size // 2
    if pad >= min(hh, ww):
        raise DataError(f"augment: a {kernel_size}-tap blur needs images larger than {hh}x{ww}; use a larger size")
    if method == "auto":
        method = "taps" if x.device.type == "cpu" or kernel_size <= 7 else "conv"
    g = gaussian_kernels(sigma, kernel_size)  # [N, k]
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # [N, C, H + 2p, W + 2p]
    if method == "conv":
        g = g.repeat_interleave(c, dim=0)  # [N C, k]
        xp = xp.view(1, n * c, hh + 2 * pad, ww + 2 * pad)
        y = F.conv2d(xp, g.view(n * c, 1, 1, kernel_size), groups=n * c)
        y = F.conv2d(y, g.view(n * c, 1, kernel_size, 1), groups=n * c)
        return y.view(n, c, hh, ww)
    if method != "taps":
        raise ConfigError(f"augment: unknown blur method {method!r}; use 'auto', 'taps' or 'conv'")
    taps = [g[:, j].view(n, 1, 1, 1) for j in range(kernel_size)]
    rows = xp[..., 0:ww] * taps[0]
    for j in range(1, kernel_size):
        rows.addcmul_(xp[..., j : j + ww], taps[j])
    out = rows[..., 0:hh, :] * taps[0]
    for j in range(1, kernel_size):
        out.addcmul_(rows[..., j : j + hh, :], taps[j])
    return out


def solarize(x: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """``1 - x`` where ``x >= threshold``, in the samples selected by ``mask``. Returns a new tensor."""
    return torch.where((x >= threshold) & _per_sample(mask), 1.0 - x, x)


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


def augment_view(x: torch.Tensor, p: ViewParams, recipe: ViewRecipe, gain: float = 1.0) -> torch.Tensor:
    """One view before normalization, float32 ``[N, 3, S, S]`` in ``[0, 1]``.

    ``x``: float ``[N, 3, H, W]`` holding values in ``[0, 1/gain]``; ``p``: its parameters;
    ``recipe``: its output size, and which ops can be skipped (probability or magnitude 0).
    Samples not selected for an op keep their values exactly (identity factors, or a
    ``lerp`` by exactly 0).
    """
    r = recipe
    y = resized_crop(x, p.top, p.left, p.height, p.width, r.size, p.flip if r.flip_p > 0 else None, gain)
    if r.jitter_p > 0:
        one = torch.ones_like(p.brightness)
        if r.brightness > 0:
            y = _brightness_(y, torch.where(p.jitter, p.brightness, one))
        if r.contrast > 0:
            y = _contrast_(y, torch.where(p.jitter, p.contrast, one))
        if r.saturation > 0:
            y = _saturation_(y, torch.where(p.jitter, p.saturation, one))
        if r.hue > 0:
            y = y.lerp_(adjust_hue(y, p.hue), _per_sample(p.jitter).to(y.dtype))
    if r.gray_p > 0:
        y = y.lerp_(rgb_to_gray(y).expand_as(y), _per_sample(p.gray).to(y.dtype))
    if r.blur_p > 0:
        y = y.lerp_(gaussian_blur(y, p.sigma, blur_kernel_size(r.size)), _per_sample(p.blur).to(y.dtype))
    if r.solarize_p > 0:
        y = solarize(y, p.solarize, r.solarize_threshold)
    return y


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------

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
        params = [_sample_view(r, batch_size, height, width, generator, gen_device) for r in self.view_recipes]
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
