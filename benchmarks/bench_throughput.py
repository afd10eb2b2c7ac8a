"""Training throughput: siamgrad's batched pipeline vs the per-image PIL pipeline most peers use.

    python benchmarks/bench_throughput.py            # a few minutes on 2 CPU cores
    python benchmarks/bench_throughput.py --quick    # about a minute

Unit: view-images per second, one view-image being one augmented image through the backbone
(a step on a batch of B images with M views moves B * M view-images).

The two pipelines, fed from the same in-memory uint8 images (the CIFAR-10 subset by default):

* **siamgrad**: the uint8 batch is indexed in memory, augmented as a whole by
  :func:`siamgrad.augment.multiview.build_augment` (per-sample random parameters, batched tensor ops), then
  ``method.training_step(views)`` -> ``backward`` -> ``optimizer.step`` -> ``on_step_end``, the
  calls of :class:`siamgrad.train.loop.Trainer`.
* **peer** (the lightly / solo-learn recipe): a ``torch.utils.data.Dataset`` of PIL images (made
  once from the same uint8 arrays) whose ``__getitem__`` draws M views, each through torchvision's
  classic per-image transforms ``RandomResizedCrop -> RandomHorizontalFlip -> RandomApply(ColorJitter)
  -> RandomGrayscale [-> RandomApply(GaussianBlur)] [-> RandomSolarize] -> ToTensor -> Normalize``
  with the same recipe (scale, ratio, probabilities, jitter strengths) as siamgrad's views, in a
  ``DataLoader`` with ``--workers`` worker processes and the default collate; the training step
  is the same function on the same model.

Both sides use the same backbone, method, batch, views, dtype (autocast) and memory format, and the
same number of CPU threads in the training process (``--threads``); the peer's workers run beside
it on the same cores, as they do in a real run. The two sides are measured interleaved
(A, B, A, B, ...): each trial warms up then times several iterations; the figures are the medians
over the rounds, so a burst of load from other jobs hits both sides alike.

Printed: augmentation alone (siamgrad vs peer), the whole step with the small CPU backbone, what
bf16 autocast and channels_last add to siamgrad's step, and the whole step with a CIFAR-stem
ResNet-18 in fp32; the last three lines are ``aug_ratio=``, ``ratio=`` and ``resnet18_ratio=``
(siamgrad / peer, higher is better for siamgrad).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from siamgrad.augment.multiview import ViewRecipe, blur_kernel_size, build_augment
from siamgrad.models.backbones import build_backbone
from siamgrad.data.datasets import ImageDataset, channel_stats, load_dataset
from siamgrad.methods.registry import build as build_method

DEFAULT_ROOT = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset")
# the CPU preset's recipe: the CIFAR views with the UniGrad crop range 0.2-1 (configs/cifar10_cpu.yaml)
PRESET, SCALE = "cifar", (0.2, 1.0)
# the CPU preset's method: UniGrad with a 512-128 projector and a momentum encoder
METHOD, METHOD_OPTS = "unigrad", dict(proj_hidden_dim=512, proj_output_dim=128, lam=5.0, momentum=0.99)


# --------------------------------------------------------------------------------------------
# data


def load_images(root: str | None, n: int | None = None) -> ImageDataset:
    """The CIFAR-10 training images under ``root`` (uint8 in memory); random uint8 images when absent."""
    if root and Path(root).is_dir():
        ds = load_dataset("cifar10", root, "train")
    else:
        print(f"note: no CIFAR-10 data at {root!r}; using random 32x32 uint8 images", file=sys.stderr)
        g = torch.Generator().manual_seed(0)
        count = n or 5000
        ds = ImageDataset(torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=g),
                          torch.randint(0, 10, (count,), generator=g), [str(i) for i in range(10)], "cifar10")
    if n is not None and n < len(ds):
        ds = ds.subset(torch.arange(n))
    return ds


# --------------------------------------------------------------------------------------------
# the peer pipeline: PIL images, torchvision per-image transforms, DataLoader workers


def peer_transform(recipe: ViewRecipe, mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
    """torchvision's classic per-image transform for one view, with ``recipe``'s parameters.

    The blur kernel is siamgrad's (about 10% of the side) and sigma is scaled the same way
    (``blur_sigma`` is given for a ``blur_sigma_ref_size``-pixel image).
    """
    import torchvision.transforms as T

    ops: list = [
        T.RandomResizedCrop(recipe.size, scale=tuple(recipe.scale), ratio=tuple(recipe.ratio), antialias=True),
        T.RandomHorizontalFlip(p=recipe.flip_p),
    ]
    if recipe.jitter_p > 0:
        ops.append(T.RandomApply([T.ColorJitter(recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)],
                                 p=recipe.jitter_p))
    if recipe.gray_p > 0:
        ops.append(T.RandomGrayscale(p=recipe.gray_p))
    if recipe.blur_p > 0:
        lo, hi = recipe.blur_sigma
        scale = recipe.sigma_scale
        ops.append(T.RandomApply([T.GaussianBlur(blur_kernel_size(recipe.size), sigma=(lo * scale, hi * scale))],
                                 p=recipe.blur_p))
    if recipe.solarize_p > 0:
        ops.append(T.RandomSolarize(threshold=round(255 * recipe.solarize_threshold), p=recipe.solarize_p))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


class PeerDataset(torch.utils.data.Dataset):
    """PIL images made once from uint8 ``[N, 3, H, W]``; item ``i`` is ``([view_1 .. view_M], label)``."""

    def __init__(self, dataset: ImageDataset, transforms: list[Callable]):
        from PIL import Image

        arrays = dataset.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.images = [Image.fromarray(a) for a in arrays]
        self.labels = dataset.labels.tolist() if dataset.labels is not None else [0] * len(arrays)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        return [t(img) for t in self.transforms], self.labels[i]


def peer_dataset(dataset: ImageDataset, n_views: int, preset: str = PRESET,
                 scale: tuple[float, float] = SCALE) -> PeerDataset:
    """The peer's dataset with the same recipe as ``build_augment(preset, ..., scale=scale)``."""
    mean, std = channel_stats(dataset)
    recipes = build_augment(preset, dataset.image_size, n_views, mean=mean, std=std, scale=scale).view_recipes
    return PeerDataset(dataset, [peer_transform(r, mean, std) for r in recipes])


def peer_loader(ds: PeerDataset, batch: int, workers: int, seed: int = 0,
                num_batches: int | None = None) -> torch.utils.data.DataLoader:
    """The peer's DataLoader: a shuffled epoch, or ``num_batches`` batches of images drawn with
    replacement (as siamgrad's benchmark batches are) when given."""
    g = torch.Generator().manual_seed(seed)
    if num_batches is None:
        return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                           generator=g)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=batch * num_batches, generator=g)
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True)


# --------------------------------------------------------------------------------------------
# the siamgrad pipeline and the shared training step


class BatchedViews:
    """siamgrad's side: random batches of the in-memory uint8 images, augmented as a whole."""

    def __init__(self, dataset: ImageDataset, n_views: int, batch: int, seed: int = 0,
                 preset: str = PRESET, scale: tuple[float, float] = SCALE):
        self.images = dataset.images
        self.labels = dataset.labels
        mean, std = channel_stats(dataset)
        self.augment = build_augment(preset, dataset.image_size, n_views, mean=mean, std=std, scale=scale)
        self.batch = batch
        self.g = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor | None]]:
        while True:
            idx = torch.randint(0, len(self.images), (self.batch,), generator=self.g)
            labels = self.labels[idx] if self.labels is not None else None
            yield self.augment(self.images[idx], generator=self.g), labels


@dataclass
class Model:
    """A method around a backbone, its optimizer and the step settings (dtype, memory format)."""

    method: nn.Module
    optimizer: torch.optim.Optimizer
    amp: torch.dtype | None
    channels_last: bool
    steps: int = 0

    def step(self, views: list[torch.Tensor]) -> float:
        """One training step: the calls of ``Trainer.train_step`` (no probe, constant lr)."""
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss, _ = self.method.training_step(views)
        loss.backward()
        self.optimizer.step()
        self.method.on_step_end(self.steps, 10_000)
        self.steps += 1
        return float(loss.detach())


def make_model(backbone: str, precision: str, channels_last: bool, seed: int = 0) -> Model:
    torch.manual_seed(seed)
    net, dim = build_backbone(backbone, cifar_stem=True)
    method = build_method(METHOD, net, dim, **METHOD_OPTS)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.03, momentum=0.9,
                          weight_decay=5e-4)
    return Model(method, opt, torch.bfloat16 if precision == "bf16" else None, channels_last)


# --------------------------------------------------------------------------------------------
# timing


def timed_rate(batches: Iterator, work: Callable[[list[torch.Tensor]], object] | None, warmup: int, steps: int,
               view_images: int) -> float:
    """View-images/s over ``steps`` iterations after ``warmup`` ones (the wait for data included)."""
    for _ in range(warmup):
        views, _ = next(batches)
        if work is not None:
            work(views)
    t0 = time.perf_counter()
    for _ in range(steps):
        views, _ = next(batches)
        if work is not None:
            work(views)
    return steps * view_images / (time.perf_counter() - t0)


def interleaved(trials: dict[str, Callable[[], float]], rounds: int, log: bool = True) -> dict[str, float]:
    """Run every trial once per round, in turn (A, B, A, B, ...); the median rate of each."""
    rates: dict[str, list[float]] = {k: [] for k in trials}
    for r in range(rounds):
        for name, fn in trials.items():
            rates[name].append(fn())
            if log:
                print(f"  round {r + 1}/{rounds} {name}: {rates[name][-1]:,.0f} view-images/s", file=sys.stderr,
                      flush=True)
    return {k: statistics.median(v) for k, v in rates.items()}


_trial_seeds = itertools.count(1)


def peer_trial(ds: PeerDataset, workers: int, work: Callable | None, warmup: int, steps: int, batch: int) -> float:
    """One peer trial: a DataLoader of exactly ``warmup + steps`` batches; its workers start during
    the warm-up and have nothing left to do when the trial ends (no work during the other side's)."""
    loader = peer_loader(ds, batch, workers, seed=next(_trial_seeds), num_batches=warmup + steps)
    it = iter(loader)
    try:
        return timed_rate(it, work, warmup, steps, batch * len(ds.transforms))
    finally:
        del it  # shuts the workers down


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and iterations (about a minute)")
    p.add_argument("--data-root", default=DEFAULT_ROOT, help="CIFAR-10 folder (random images when absent)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the peer pipeline")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training process (both sides)")
    p.add_argument("--backbone", default="small", help="the small-backbone comparison (ratio=)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="dtype of the ratio= comparison")
    p.add_argument("--no-channels-last", action="store_true", help="contiguous layout in the ratio= comparison")
    p.add_argument("--resnet-batch", type=int, default=64, help="batch of the ResNet-18 fp32 comparison")
    p.add_argument("--skip-resnet18", action="store_true")
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 3)
    aug_steps, step_steps, rn_steps = (10, 3, 2) if args.quick else (30, 6, 3)
    cl = not args.no_channels_last
    data = load_images(args.data_root)
    print(f"data: {len(data)} images {data.image_size}x{data.image_size} ({data.name}); batch {args.batch}, "
          f"{args.views} views, {args.threads} threads; peer: torchvision transforms on PIL images, "
          f"DataLoader with {args.workers} workers; {rounds} interleaved rounds, medians")
    vi = args.batch * args.views
    peer = peer_dataset(data, args.views)

    # 1. augmentation alone
    ours = iter(BatchedViews(data, args.views, args.batch))
    aug = interleaved({
        "siamgrad augment": lambda: timed_rate(ours, None, 2, aug_steps, vi),
        "peer augment": lambda: peer_trial(peer, args.workers, None, 2, aug_steps, args.batch),
    }, rounds)
    print(f"augmentation only: siamgrad {aug['siamgrad augment']:,.0f} view-images/s, "
          f"peer {aug['peer augment']:,.0f} view-images/s")

    # 2. whole step, small backbone, the preset's dtype/layout
    model = make_model(args.backbone, args.precision, cl)
    tag = f"{args.backbone} backbone, {args.precision}{' + channels_last' if cl else ''}"
    step = interleaved({
        "siamgrad step": lambda: timed_rate(ours, model.step, 1, step_steps, vi),
        "peer step": lambda: peer_trial(peer, args.workers, model.step, 1, step_steps, args.batch),
    }, rounds)
    print(f"whole step ({tag}, batch {args.batch}): siamgrad {step['siamgrad step']:,.0f} view-images/s, "
          f"peer {step['peer step']:,.0f} view-images/s")

    # 3. what bf16 autocast and channels_last add to siamgrad's step (small backbone)
    variants = {}
    for prec in ("fp32", "bf16"):
        for layout in (False, True):
            m = make_model(args.backbone, prec, layout)
            variants[f"{prec}{' + channels_last' if layout else ''}"] = (
                lambda m=m: timed_rate(ours, m.step, 1, max(2, step_steps // 2), vi))
    var = interleaved(variants, rounds)
    base = var["fp32"]
    print(f"siamgrad step, {args.backbone} backbone, batch {args.batch}: " + ", ".join(
        f"{k} {v:,.0f} view-images/s (x{v / base:.2f})" for k, v in var.items()))

    # 4. whole step, ResNet-18 (CIFAR stem), fp32
    rn = None
    if not args.skip_resnet18:
        rb = args.resnet_batch
        ours_rn = iter(BatchedViews(data, args.views, rb, seed=1))
        m18 = make_model("resnet18", "fp32", False)
        rn = interleaved({
            "siamgrad resnet18 step": lambda: timed_rate(ours_rn, m18.step, 1, rn_steps, rb * args.views),
            "peer resnet18 step": lambda: peer_trial(peer, args.workers, m18.step, 1, rn_steps, rb),
        }, rounds)
        print(f"whole step (resnet18 CIFAR stem, fp32, batch {rb}): siamgrad {rn['siamgrad resnet18 step']:,.1f} "
              f"view-images/s, peer {rn['peer resnet18 step']:,.1f} view-images/s")
        if not args.quick:
            fast = make_model("resnet18", "bf16", True)
            r = statistics.median(timed_rate(ours_rn, fast.step, 1, rn_steps, rb * args.views) for _ in range(2))
            print(f"siamgrad resnet18 step with bf16 + channels_last: {r:,.1f} view-images/s "
                  f"(x{r / rn['siamgrad resnet18 step']:.2f} over fp32)")

    print(f"aug_ratio={aug['siamgrad augment'] / aug['peer augment']:.2f}")
    print(f"ratio={step['siamgrad step'] / step['peer step']:.2f}")
    if rn is not None:
        print(f"resnet18_ratio={rn['siamgrad resnet18 step'] / rn['peer resnet18 step']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
