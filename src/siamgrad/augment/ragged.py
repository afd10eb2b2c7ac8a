"""Ragged batches: decoded images of different sizes, padded into one tensor with their sizes
alongside (:class:`RaggedImages`).

The augmentation follows the same rules per image as for a same-size batch: each crop box is
drawn from the image's own ``H x W`` (the same uniforms) and lies inside it, and the resampling
matrices give zero weight outside the box, so the padding is never read and one pair of batched
matmuls still crops every image straight to ``S x S``. A ragged batch of equal-size images gives
exactly the result of the ordinary batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from siamgrad.errors import DataError

__all__ = ["RaggedImages"]


@dataclass
class RaggedImages:
    """A batch of images of different sizes, stored padded in one tensor.

    ``data`` is ``uint8`` (or float) ``[B, C, H, W]`` with ``H``/``W`` at least the largest
    height/width; image ``i`` is ``data[i, :, :h_i, :w_i]`` and the rest of its plane is padding
    (zeros from :meth:`from_list`, never read: every crop box lies inside its image and the
    resampling weights are zero outside the box). ``sizes`` is ``int64 [B, 2]`` holding the rows
    ``(h_i, w_i)``; it stays on the CPU (the random boxes are drawn there) while ``data`` moves
    to the device. :class:`~siamgrad.augment.multiview.MultiViewAugment` crops every image straight to the output size in
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
