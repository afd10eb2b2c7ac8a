"""Write a CIFAR-10 folder (e.g. the shared subset) as an image folder of JPEG files.

    python benchmarks/make_jpeg_folder.py DST [--cifar ../shared/data/cifar10-subset] [--px 64]

Writes ``DST/train/<class>/<index>.jpg`` and ``DST/test/<class>/<index>.jpg`` (bilinear,
antialiased upsampling to ``--px`` pixels, JPEG quality 90): the layout ``data=imagefolder``
reads and ``siamgrad data pack`` packs, for checking the streamed paths end to end on real files:

    siamgrad train preset=cifar10_cpu data=imagefolder data.root=DST data.stream=true data.image_size=32
    siamgrad data pack DST DST-shards && siamgrad train preset=cifar10_cpu data=shards data.root=DST-shards ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.io import encode_jpeg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from siamgrad.data.datasets import load_dataset  # noqa: E402


def write_split(src: str, split: str, dst: Path, px: int, quality: int = 90) -> int:
    ds = load_dataset("cifar10", src, split)
    for c in ds.classes:
        (dst / split / c).mkdir(parents=True, exist_ok=True)
    for lo in range(0, len(ds), 256):
        x = ds.images[lo : lo + 256].float()
        if px != x.shape[-1]:
            x = F.interpolate(x, size=(px, px), mode="bilinear", align_corners=False, antialias=True)
        x = x.round().clamp(0, 255).to(torch.uint8)
        for k, img in enumerate(x):
            i = lo + k
            name = dst / split / ds.classes[int(ds.labels[i])] / f"{i:06d}.jpg"
            name.write_bytes(encode_jpeg(img, quality=quality).numpy().tobytes())
    return len(ds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dst")
    ap.add_argument("--cifar", default=str(REPO.parent / "shared" / "data" / "cifar10-subset"))
    ap.add_argument("--px", type=int, default=64)
    args = ap.parse_args(argv)
    dst = Path(args.dst)
    if dst.exists() and any(dst.iterdir()):
        print(f"error: {dst} is not empty; choose a new folder", file=sys.stderr)
        return 2
    counts = {s: write_split(args.cifar, s, dst, args.px) for s in ("train", "test")}
    print(f"wrote {counts['train']} train and {counts['test']} test JPEGs at {args.px} px under {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
