"""Throughput of streamed JPEG training: siamgrad's path against the per-image PIL pipeline.

Both paths read the same JPEG files and run the same training step (backbone + SimCLR head,
two views, SGD) with the same batch size, worker count and threads; only the input pipeline
differs:

* ``siamgrad``: :class:`siamgrad.data.streaming.StreamBatches` (workers read the raw bytes; JPEGs decoded
  on the GPU in batches on CUDA, in the workers on CPU), then the batched on-device
  augmentation (:func:`siamgrad.augment.multiview.build_augment`, ``simclr`` preset) of the ragged batch;
* ``per-image PIL``: a DataLoader whose workers open each file with PIL and apply torchvision's
  ``RandomResizedCrop, RandomHorizontalFlip, ColorJitter (p 0.8), RandomGrayscale (0.2),
  GaussianBlur (p 0.5), ToTensor, Normalize`` twice per image (the usual peers' pipeline);

plus ``model alone``: the same step on views already on the device (the ceiling).
Reported: view-images/s (one image through the backbone = one view-image) after warm-up, the
median over ``--rounds`` rounds that alternate between the paths (so the load drift of a shared
machine falls on all of them alike), and ``ratio = siamgrad / per-image PIL``.

Default data: the CIFAR-10 subset (``../shared/data/cifar10-subset``) written out as JPEGs
upsampled to ``--px`` pixels in a temporary folder (or ``--src`` an existing image folder).

Measured on the 2-core development CPU, alone on it (1 worker, 2 main-process threads, fp32;
CIFAR subset JPEGs at 96 px): ResNet-18 (ImageNet stem), crop 96, batch 64 x 2 views: model
alone 76.0, siamgrad 71.0, per-image PIL 71.3 view-images/s, ratio=0.99; small backbone, crop 64,
batch 128 (``--backbone small --size 64 --batch 128``): 54.9 / 54.9 / 53.9, ratio=1.02. On a CPU
the model bounds both paths (each at 93-100% of the model alone); the streamed path is built for
the GPU (nvjpeg batches, augmentation on the device), where the per-image PIL pipeline has been
reported to feed ~1,300 of the 4,100 view-images/s a ResNet-50 can take. Not measured on a GPU.

    python benchmarks/bench_stream.py                         # CPU-sized defaults
    python benchmarks/bench_stream.py --device cuda --backbone resnet50 --px 256 --size 224 \\
        --batch 256 --workers 15 --images 20000 --steps 30      # the ImageNet-like GPU setting
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from siamgrad import methods  # noqa: E402
from siamgrad.augment.multiview import MultiViewAugment, build_augment  # noqa: E402
from siamgrad.augment.ops import blur_kernel_size  # noqa: E402
from siamgrad.models.backbones import build_backbone  # noqa: E402
from siamgrad.data.datasets import load_dataset  # noqa: E402
from siamgrad.data.sources import FolderSource  # noqa: E402
from siamgrad.data.streaming import StreamBatches  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_jpegs(dst: Path, n: int, px: int, cifar: Path) -> int:
    """The first ``n`` CIFAR subset training images, bilinear-upsampled to ``px``, as JPEG q90."""
    import torch.nn.functional as F
    from torchvision.io import encode_jpeg

    ds = load_dataset("cifar10", cifar, "train")
    n = min(n, len(ds))
    for c in ds.classes:
        (dst / c).mkdir(parents=True, exist_ok=True)
    for lo in range(0, n, 256):
        x = ds.images[lo : min(n, lo + 256)].float()
        if px != x.shape[-1]:
            x = F.interpolate(x, size=(px, px), mode="bilinear", align_corners=False, antialias=True)
        x = x.round().clamp(0, 255).to(torch.uint8)
        for k, img in enumerate(x):
            i = lo + k
            (dst / ds.classes[int(ds.labels[i])] / f"{i:06d}.jpg").write_bytes(encode_jpeg(img, quality=90).numpy().tobytes())
    return n


def synthetic_image(index: int, width: int, height: int) -> torch.Tensor:
    """A uint8 ``[3, height, width]`` image of smooth random color fields plus fine noise (so JPEG
    files have a photo-like size), drawn from a generator seeded by ``index``."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(index)
    coarse = torch.rand(1, 3, 6, 8, generator=g) * 255
    x = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0]
    x += torch.randn(3, height, width, generator=g) * 12
    return x.round().clamp(0, 255).to(torch.uint8)


def write_synthetic_jpegs(dst: Path, n: int, width: int = 500, height: int = 375, classes: int = 10,
                          threads: int | None = None) -> int:
    """``n`` synthetic ``width x height`` JPEGs (quality 90) in ``classes`` class folders of ``dst``;
    returns their total size in bytes. Written by ``threads`` threads (default: the CPUs)."""
    from torchvision.io import encode_jpeg

    for c in range(classes):
        (dst / f"class{c:02d}").mkdir(parents=True, exist_ok=True)

    def one(i: int) -> int:
        data = encode_jpeg(synthetic_image(i, width, height), quality=90).numpy().tobytes()
        (dst / f"class{i % classes:02d}" / f"{i:06d}.jpg").write_bytes(data)
        return len(data)

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # parallel over images instead
    try:
        with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
            return sum(pool.map(one, range(n)))
    finally:
        torch.set_num_threads(torch_threads)


class PILPairs(torch.utils.data.Dataset):
    """Two torchvision-augmented views per image, PIL decoding, per image in a worker.

    Item ``i`` is ``([view_1, view_2], 0)`` (the peer dataset's ``(views, label)`` layout)."""

    def __init__(self, files: list[Path], size: int):
        from torchvision import transforms as T

        k = blur_kernel_size(size)
        s = size / 224  # the blur sigma range of the ImageNet recipe, scaled as siamgrad does
        self.files = files
        self.t = T.Compose([
            T.RandomResizedCrop(size, scale=(0.2, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(k, sigma=(0.1 * s, 2.0 * s))], p=0.5),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            return [self.t(im), self.t(im)], 0


def _set_threads(_: int) -> None:
    torch.set_num_threads(1)


def pil_loader(files: list[Path], size: int, batch: int, workers: int, pin_memory: bool,
               seed: int = 0) -> torch.utils.data.DataLoader:
    """The per-image PIL pipeline: :class:`PILPairs` in a shuffled DataLoader with ``workers``
    persistent worker processes (one torch thread each)."""
    return torch.utils.data.DataLoader(PILPairs(files, size), batch_size=batch, shuffle=True, drop_last=True,
                                       num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                                       worker_init_fn=_set_threads, prefetch_factor=4 if workers else None,
                                       generator=torch.Generator().manual_seed(seed))


def pil_views(loader: torch.utils.data.DataLoader, device: torch.device) -> Iterator[tuple[list[torch.Tensor], None]]:
    """``(views on device, None)`` from ``loader`` forever, epoch after epoch."""
    while True:
        for views, _ in loader:
            yield [v.to(device, non_blocking=True) for v in views], None


def streamed_views(stream: StreamBatches, aug: MultiViewAugment) -> Iterator[tuple[list[torch.Tensor], object]]:
    """siamgrad's streamed path forever: batches of raw bytes read by workers, decoded (on a GPU:
    nvjpeg, batched), augmented as one ragged batch on the device; yields ``(views, labels)``."""
    s, epoch = 0, 0
    while True:
        for images, labels in stream.epoch(epoch):
            yield aug(images, generator=torch.Generator().manual_seed(s)), labels
            s += 1
        epoch += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", help="an image folder to read (default: CIFAR subset JPEGs written to a temp dir)")
    ap.add_argument("--cifar", default=str(REPO.parent / "shared" / "data" / "cifar10-subset"))
    ap.add_argument("--images", type=int, default=2048, help="images written from the CIFAR subset")
    ap.add_argument("--px", type=int, default=96, help="side of the written JPEGs")
    ap.add_argument("--size", type=int, default=None, help="output crop size (default: --px)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch", type=int, default=64, help="images per step (each gives 2 views)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--steps", type=int, default=6, help="timed steps per path (over all rounds)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    size = args.size or args.px
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    amp = torch.bfloat16 if gpu else None

    tmp = None
    if args.src:
        root = Path(args.src)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_stream_")
        root = Path(tmp.name)
        t = time.perf_counter()
        n = write_jpegs(root, args.images, args.px, Path(args.cifar))
        print(f"wrote {n} JPEGs of {args.px}x{args.px} to {root} in {time.perf_counter() - t:.1f}s", flush=True)
    source = FolderSource.scan(root)
    files = [source.where / f for f in source.files]
    needed = (args.warmup + args.steps) * args.batch
    if len(files) < needed:
        print(f"note: {len(files)} images < {needed} needed for one pass; the paths wrap into a second epoch")

    backbone, dim = build_backbone(args.backbone, cifar_stem=size <= 64)
    method = methods.build("simclr", backbone, dim, proj_hidden_dim=512, proj_output_dim=128).to(dev)
    if gpu:
        method = method.to(memory_format=torch.channels_last)
    if args.compile:
        method.backbone.compile()
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

    def step(views: list[torch.Tensor]) -> None:
        if gpu:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = method.training_step(views)
        loss.backward()
        opt.step()

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(dev)

    def run(it, n: int) -> float:
        """Seconds for ``n`` steps drawn from the iterator ``it``."""
        sync()
        t = time.perf_counter()
        for _ in range(n):
            step(next(it))
        sync()
        return time.perf_counter() - t

    print(f"device {dev}, backbone {args.backbone}, batch {args.batch} x 2 views, crop {size}px, "
          f"{args.workers} worker(s), {torch.get_num_threads()} main-process threads, {len(files)} files", flush=True)

    # the model alone: fixed views already on the device
    fixed = [torch.randn(args.batch, 3, size, size, device=dev) for _ in range(2)]

    # siamgrad: streamed bytes, batched decode, batched ragged augmentation on the device
    aug = build_augment("simclr", size, 2, mean=MEAN, std=STD)
    stream = StreamBatches(source, dev, args.batch, seed=0, workers=args.workers, max_side=512)
    # per-image PIL + torchvision transforms in DataLoader workers
    loader = pil_loader(files, size, args.batch, args.workers, pin_memory=gpu)

    def views_only(it):
        for views, _ in it:
            yield views

    # warm up every path, then time them in alternating rounds (a shared machine's load drifts:
    # alternating spreads it over the paths alike); each figure is the median over its rounds
    paths = {"model alone": iter(lambda: fixed, None), "siamgrad": views_only(streamed_views(stream, aug)),
             "per-image PIL": views_only(pil_views(loader, dev))}
    for it in paths.values():
        run(it, args.warmup)
    per_round = max(1, args.steps // args.rounds)
    rates: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.rounds):
        for name, it in paths.items():
            rates[name].append(per_round * args.batch * 2 / run(it, per_round))
    med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    for name, v in rates.items():
        print(f"{name:<16} {med[name]:10.1f} view-images/s   (rounds: {', '.join(f'{x:.1f}' for x in v)})")
    fast, slow, alone = med["siamgrad"], med["per-image PIL"], med["model alone"]
    print(f"ratio={fast / slow:.2f}  (siamgrad / per-image PIL; siamgrad at {100 * fast / alone:.0f}% of the "
          f"model alone, per-image PIL at {100 * slow / alone:.0f}%)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
