"""Decoding and resizing images: encoded bytes -> uint8 RGB ``[3, H, W]`` tensors.

One decoder for every path that reads image files (the in-memory image-folder loader, streamed
folders and shards, packing with ``--verify``): :func:`decode_image_bytes` on the CPU
(torchvision's decoders, Pillow for what they refuse), :func:`decode_jpegs_on_device` for a
batch of JPEGs on a CUDA device (nvjpeg). Grayscale, CMYK, palette and 16-bit images come out
as 8-bit RGB.

Resizing conventions: bilinear interpolation with antialiasing (``align_corners=False``)
computed in float32 on the 0..255 values, then rounded to the nearest integer (ties to even)
and clamped to 0..255 (:func:`resize_uint8`). :func:`cap_side` bounds the longer side of a
decoded image; :func:`resize_center_crop` makes the square images of an in-memory set.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGE_EXTENSIONS",
    "JPEG_MAGIC",
    "cap_side",
    "decode_image_bytes",
    "decode_jpegs_on_device",
    "one_line",
    "resize_center_crop",
    "resize_uint8",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
"""File suffixes (case-insensitive) read as images (image folders, shard members)."""

JPEG_MAGIC = b"\xff\xd8\xff"
"""The first bytes of every JPEG file (how a JPEG is told apart before decoding)."""

RESIZE_CHUNK = 512
"""Images per chunk of :func:`resize_uint8` (bounds its float32 working memory)."""


def one_line(message: object) -> str:
    """``message`` as text collapsed onto one line (for error and warning messages)."""
    return " ".join(str(message).split())


def resize_uint8(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 ``[N, C, H, W]`` to ``size``, rounded to uint8."""
    hw = (size, size) if isinstance(size, int) else size
    n = images.shape[0]
    out = torch.empty((n, images.shape[1], hw[0], hw[1]), dtype=torch.uint8)
    for start in range(0, n, RESIZE_CHUNK):
        x = images[start : start + RESIZE_CHUNK].to(torch.float32)
        y = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
        out[start : start + RESIZE_CHUNK] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[3, h, w]`` so its shorter side is ``size`` (aspect kept), then center-crop."""
    h, w = int(img.shape[1]), int(img.shape[2])
    if h <= w:
        new_h, new_w = size, max(size, round(w * size / h))
    else:
        new_h, new_w = max(size, round(h * size / w)), size
    if (new_h, new_w) != (h, w):
        img = resize_uint8(img.unsqueeze(0), (new_h, new_w))[0]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return img[:, top : top + size, left : left + size]


def cap_side(img: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """Scale ``[3, h, w]`` down so that ``max(h, w) <= max_side`` (aspect kept, antialiased).

    New size ``round(h f), round(w f)`` (at least 1) with ``f = max_side / max(h, w)``; bilinear
    with antialiasing in float32, rounded to uint8. Smaller images are returned as they are.
    """
    h, w = int(img.shape[-2]), int(img.shape[-1])
    if max_side is None or max(h, w) <= max_side:
        return img
    f = max_side / max(h, w)
    size = (max(1, round(h * f)), max(1, round(w * f)))
    y = F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return y[0].round_().clamp_(0, 255).to(torch.uint8)


def _to_uint8_rgb(img: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` (or ``[N, C, H, W]`` frames: the first) of any depth -> uint8 RGB."""
    if img.dim() == 4:
        img = img[0]
    if img.dtype != torch.uint8:
        top = 65535.0 if img.dtype in (torch.uint16, torch.int32) else 255.0
        img = (img.float() * (255.0 / top)).round_().clamp_(0, 255).to(torch.uint8)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    elif img.shape[0] == 4:
        img = img[:3]
    return img.contiguous()


def decode_image_bytes(data: bytes | torch.Tensor, max_side: int | None = None) -> torch.Tensor:
    """Decode an encoded image to uint8 RGB ``[3, H, W]`` on the CPU.

    torchvision's decoders first (JPEG, PNG, WebP, GIF, ...), Pillow for what they refuse (BMP,
    CMYK JPEG, ...); then :func:`cap_side` with ``max_side``. Raises ``ValueError`` naming the
    reason when neither can decode it.
    """
    buf = data if isinstance(data, torch.Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if buf.numel() == 0:
        raise ValueError("empty file")
    from torchvision.io import ImageReadMode, decode_image

    try:
        with warnings.catch_warnings():
            # torchvision >= 0.29 announces the move of its decoders to torchcodec on every call
            warnings.filterwarnings("ignore", message=".*image decoding", category=DeprecationWarning)
            img = decode_image(buf, mode=ImageReadMode.RGB)
    except Exception as first:  # noqa: BLE001 - any decoder failure: try Pillow
        try:
            from PIL import Image

            with Image.open(io.BytesIO(buf.numpy().tobytes())) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            img = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        except Exception as second:  # noqa: BLE001
            raise ValueError(_why_undecodable(buf, first, second)) from None
    return cap_side(_to_uint8_rgb(img), max_side)


def _why_undecodable(buf: torch.Tensor, first: BaseException, second: BaseException) -> str:
    """Why neither decoder read ``buf``, in words: not an image at all (neither recognised its
    format), else the first sentence of torchvision's reason without its source-file prefix."""
    from PIL import UnidentifiedImageError

    head = bytes(buf[:8].tolist())
    if isinstance(second, UnidentifiedImageError) and "Unsupported image file" in str(first):
        return f"not an image file: no known image format starts with the bytes {head!r}"
    text = one_line(first)
    # torchvision prefixes "function, /path/to/file.cpp:LINE, " to its messages
    text = re.sub(r"^[\w()]+, \S+:\d+, ", "", text)
    text = re.split(r"(?<=[a-z0-9)])\. ", text, maxsplit=1)[0].rstrip(".")
    return text or one_line(second) or type(first).__name__


def decode_jpegs_on_device(raw: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Batched nvjpeg decoding of JPEG byte tensors to uint8 RGB images on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*image decoding", category=DeprecationWarning)
        out = decode_jpeg(list(raw), mode=ImageReadMode.RGB, device=device)
    return list(out) if isinstance(out, (list, tuple)) else [out]
