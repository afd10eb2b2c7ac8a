"""The batched ops of one view, on float32 ``[N, 3, S, S]`` values in ``[0, 1]``, per-sample
parameters as tensors ``[N]``; :func:`augment_view` applies them in the SimCLR/BYOL order:

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
6. **Normalize**: ``(x - mean) / std`` per channel, by
   :class:`~siamgrad.augment.multiview.MultiViewAugment` after :func:`augment_view`.

Samples not selected for an op keep their values exactly (identity factors, or ``lerp`` by
exactly 0).

Op by op, the results equal torchvision's functional ops (``resized_crop`` with antialiasing,
``horizontal_flip``, ``adjust_brightness/contrast/saturation/hue``, ``rgb_to_grayscale``,
``gaussian_blur``, ``solarize``, ``normalize``) to float rounding, apart from the luma weights
(0.299 here, 0.2989 there); the tests check this image by image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from siamgrad.augment.recipes import ViewRecipe
from siamgrad.augment.sampling import ViewParams
from siamgrad.errors import ConfigError, DataError

__all__ = [
    "LUMA_WEIGHTS",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "augment_view",
    "blur_kernel_size",
    "gaussian_blur",
    "gaussian_kernels",
    "resized_crop",
    "rgb_to_gray",
    "solarize",
]

#: ITU-R 601-2 luma weights for (R, G, B), used by grayscale, contrast and saturation.
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)


def blur_kernel_size(size: int) -> int:
    """Odd Gaussian kernel size for an ``size``-pixel side: ``max(3, 2 floor(size / 20) + 1)``."""
    return max(3, 2 * (size // 20) + 1)


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


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
