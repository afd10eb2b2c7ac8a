"""Per-sample random parameters of a view (:class:`ViewParams`): crop boxes with torchvision's
``RandomResizedCrop`` rules (:func:`sample_crop_boxes`) and every other op's draws, from one
uniform tensor per view (:func:`sample_view`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from siamgrad.augment.recipes import ViewRecipe
from siamgrad.errors import DataError

__all__ = ["CROP_TRIES", "ViewParams", "sample_crop_boxes", "sample_view"]

#: Candidate boxes drawn per sample before the center-crop fallback (as torchvision).
CROP_TRIES = 10


@dataclass
class ViewParams:
    """Per-sample random parameters of one view (tensors of length ``B``).

    Crop box in source pixels: rows ``top .. top+height-1``, columns ``left .. left+width-1``
    of an ``src_height x src_width`` image. For a ragged batch (:class:`~siamgrad.augment.ragged.RaggedImages`)
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


def sample_view(
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
