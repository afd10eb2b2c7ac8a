"""Training throughput: siamgrad's batched pipeline vs the per-image PIL pipeline most peers use.

    python benchmarks/bench_throughput.py                  # a few minutes on 2 CPU cores
    python benchmarks/bench_throughput.py --quick          # about a minute
    python benchmarks/bench_throughput.py --contention 2   # beside 2 busy processes it starts itself

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
same number of CPU threads in the training process (``--threads``, default the CPUs this process
may use: :func:`siamgrad.cpu.available_cpus`); the peer's workers run beside it on the same cores,
as they do in a real run. siamgrad's augmentation runs with the busy-aware thread count of
:func:`siamgrad.cpu.limit_threads` (fewer threads when other processes keep the cores busy), as
it does in training (``--busy-step``: its whole step too). The two sides are measured
interleaved (A, B, A, B, ...): each trial warms up then times several iterations; the figures are
the medians over the rounds, so a burst of load from other jobs hits both sides alike.

``--contention N`` starts ``N`` busy processes (a Python spin loop each) before the measurement
and stops them at the end; each also stops itself after ``--contention-seconds`` or when this
process is gone, so none outlives the benchmark. The load average is printed at the start and
the end (``load_average_start=``, ``load_average_end=``).

Printed: augmentation alone (siamgrad vs peer), the whole step with the small CPU backbone, what
bf16 autocast and channels_last add to siamgrad's step, and the whole step with a CIFAR-stem
ResNet-18 in fp32, and the cost of multi-crop (images/s of siamgrad's step with ``--local-crops``
local crops of ``--local-size`` px beside the global views, against the global views alone, same
model, interleaved); the last lines are ``aug_ratio=``, ``ratio=`` and ``resnet18_ratio=``
(siamgrad / peer, higher is better for siamgrad) and ``multicrop_ratio=`` (with / without local
crops: the share of the images/s that multi-crop keeps).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from siamgrad import cpu
from siamgrad.augment.multiview import build_augment
from siamgrad.augment.ops import blur_kernel_size
from siamgrad.augment.recipes import ViewRecipe
from siamgrad.data import ImageDataset, channel_stats, load_dataset
from siamgrad.methods.registry import build as build_method
from siamgrad.models.backbones import build_backbone

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
                 scale: tuple[float, float] = SCALE, size: int | None = None) -> PeerDataset:
    """The peer's dataset with the same recipe as ``build_augment(preset, size, ..., scale=scale)``
    (``size``: the crops' side, default the images')."""
    mean, std = channel_stats(dataset)
    recipes = build_augment(preset, size or dataset.image_size, n_views, mean=mean, std=std, scale=scale).view_recipes
    return PeerDataset(dataset, [peer_transform(r, mean, std) for r in recipes])


def peer_loader(ds: torch.utils.data.Dataset, batch: int, workers: int, seed: int = 0,
                num_batches: int | None = None, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The peer's DataLoader: a shuffled epoch, or ``num_batches`` batches of images drawn with
    replacement (as siamgrad's benchmark batches are) when given; ``pin_memory`` for a GPU."""
    g = torch.Generator().manual_seed(seed)
    if num_batches is None:
        return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                           generator=g, pin_memory=pin_memory)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=batch * num_batches, generator=g)
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                                       pin_memory=pin_memory)


# --------------------------------------------------------------------------------------------
# the siamgrad pipeline and the shared training step


class BatchedViews:
    """siamgrad's side: random batches of the uint8 images held on ``device``, augmented as a whole
    there (the random parameters are drawn on the CPU generator and moved, as in training)."""

    def __init__(self, dataset: ImageDataset, n_views: int, batch: int, seed: int = 0,
                 preset: str = PRESET, scale: tuple[float, float] = SCALE, device: torch.device | str = "cpu",
                 local_views: int = 0, local_size: int | None = None):
        self.device = torch.device(device)
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device) if dataset.labels is not None else None
        mean, std = channel_stats(dataset)
        self.augment = build_augment(preset, dataset.image_size, n_views, mean=mean, std=std, scale=scale,
                                     local_views=local_views, local_size=local_size)
        self.batch = batch
        self.g = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], torch.Tensor | None]]:
        while True:
            idx = torch.randint(0, len(self.images), (self.batch,), generator=self.g).to(self.device)
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
    device: torch.device = torch.device("cpu")

    def step(self, views: list[torch.Tensor]) -> float | None:
        """One training step: the calls of ``Trainer.train_step`` (no probe, constant lr).

        Views elsewhere (a DataLoader's pinned CPU batch) are copied to the model's device first.
        Returns the loss on a CPU (on a GPU ``None``: reading it would wait for the step)."""
        views = [v.to(self.device, non_blocking=True) for v in views]
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss, _ = self.method.training_step(views)
        loss.backward()
        self.optimizer.step()
        self.method.on_step_end(self.steps, 10_000)
        self.steps += 1
        return float(loss.detach()) if self.device.type == "cpu" else None

    def set_format(self, precision: str, channels_last: bool) -> None:
        """Switch dtype (autocast) and memory format in place (the same weights)."""
        self.amp = torch.bfloat16 if precision == "bf16" else None
        self.channels_last = channels_last
        self.method.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def make_model(backbone: str, precision: str, channels_last: bool, seed: int = 0, *,
               device: torch.device | str = "cpu", method: str = METHOD, options: dict | None = None,
               cifar_stem: bool = True, compile_backend: str | None = None) -> Model:
    """A method (``METHOD`` with ``METHOD_OPTS`` by default) around ``backbone`` on ``device``, its
    SGD optimizer and step settings; ``compile_backend`` compiles the backbone (as ``compile=true``
    does in training: ``"inductor"``; ``"eager"`` runs the compiler's tracing without code
    generation, for a quick check)."""
    torch.manual_seed(seed)
    net, dim = build_backbone(backbone, cifar_stem=cifar_stem)
    m = build_method(method, net, dim, **(METHOD_OPTS if options is None else options)).to(device)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    if compile_backend:
        m.backbone.compile(backend=compile_backend)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.03, momentum=0.9,
                          weight_decay=5e-4)
    return Model(m, opt, torch.bfloat16 if precision == "bf16" else None, channels_last, device=torch.device(device))


# --------------------------------------------------------------------------------------------
# timing


def sync() -> None:
    """Wait for the GPU's queued work (when CUDA is in use), so a clock reading counts it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed_rate(batches: Iterator, work: Callable[[list[torch.Tensor]], object] | None, warmup: int, steps: int,
               view_images: int) -> float:
    """View-images/s over ``steps`` iterations after ``warmup`` ones (the wait for data included)."""
    for _ in range(warmup):
        views, _ = next(batches)
        if work is not None:
            work(views)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        views, _ = next(batches)
        if work is not None:
            work(views)
    sync()
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


def peer_trial(ds: torch.utils.data.Dataset, workers: int, work: Callable | None, warmup: int, steps: int,
               batch: int, n_views: int | None = None, pin_memory: bool = False) -> float:
    """One peer trial: a DataLoader of exactly ``warmup + steps`` batches; its workers start during
    the warm-up and have nothing left to do when the trial ends (no work during the other side's).
    ``ds`` items are ``(views, label)``; ``n_views`` defaults to ``len(ds.transforms)``."""
    loader = peer_loader(ds, batch, workers, seed=next(_trial_seeds), num_batches=warmup + steps,
                         pin_memory=pin_memory)
    it = iter(loader)
    views = n_views if n_views is not None else len(ds.transforms)
    try:
        return timed_rate(it, work, warmup, steps, batch * views)
    finally:
        del it  # shuts the workers down


# --------------------------------------------------------------------------------------------
# contention: busy processes beside the benchmark

_SPIN = """
import os, sys, time
end, parent = float(sys.argv[1]), int(sys.argv[2])
n = 0
while time.monotonic() < end:
    n += 1
    if n % 200_000 == 0 and os.getppid() != parent:
        break
"""


@contextlib.contextmanager
def busy_processes(n: int, seconds: float) -> Iterator[list[subprocess.Popen]]:
    """``n`` processes that each keep one core busy (a Python spin loop) while the block runs.

    They are stopped when the block ends; each also ends by itself after ``seconds`` or when
    this process is gone (its parent changes), so none outlives the benchmark."""
    end = time.monotonic() + seconds  # CLOCK_MONOTONIC: the same clock in the children
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN, repr(end), str(os.getpid())],
                              stdin=subprocess.DEVNULL) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def busy_aware(step: Callable[[list[torch.Tensor]], object]) -> Callable[[list[torch.Tensor]], object]:
    """``step`` run with the busy-aware thread count (:func:`siamgrad.cpu.limit_threads`)."""

    def run(views: list[torch.Tensor]) -> object:
        with cpu.limit_threads():
            return step(views)

    return run


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, as ``a/b/c``."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and iterations (about a minute)")
    p.add_argument("--data-root", default=DEFAULT_ROOT, help="CIFAR-10 folder (random images when absent)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the peer pipeline")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of the training process, both sides (default: the CPUs available)")
    p.add_argument("--backbone", default="small", help="the small-backbone comparison (ratio=)")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"], help="dtype of the ratio= comparison")
    p.add_argument("--no-channels-last", action="store_true", help="contiguous layout in the ratio= comparison")
    p.add_argument("--resnet-batch", type=int, default=64, help="batch of the ResNet-18 fp32 comparison")
    p.add_argument("--skip-resnet18", action="store_true")
    p.add_argument("--skip-variants", action="store_true", help="skip the fp32/bf16 x layout table of siamgrad's step")
    p.add_argument("--local-crops", type=int, default=4, help="local crops of the multi-crop comparison (0: skip it)")
    p.add_argument("--local-size", type=int, default=16, help="side of the local crops (px)")
    p.add_argument("--multicrop-only", action="store_true", help="only the multi-crop comparison")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--contention", type=int, default=0, metavar="N",
                   help="run beside N busy processes started (and stopped) by the benchmark")
    p.add_argument("--contention-seconds", type=float, default=1800.0,
                   help="the busy processes stop by themselves after this long at the latest")
    p.add_argument("--busy-step", action="store_true",
                   help="run siamgrad's whole step (not only its augmentation) on the busy-aware thread count")
    p.add_argument("--fixed-augment-threads", action="store_true",
                   help="siamgrad's augmentation on --threads whatever the load (its behaviour before siamgrad.cpu)")
    args = p.parse_args(argv)
    if args.contention < 0:
        p.error("--contention must be >= 0")
    args.threads = args.threads or cpu.available_cpus()
    torch.set_num_threads(args.threads)
    print(f"load_average_start={load_average()}")
    with busy_processes(args.contention, args.contention_seconds):
        code = run(args)
    print(f"load_average_end={load_average()}")
    return code


def run(args: argparse.Namespace) -> int:
    """The measurements of :func:`main` (beside the busy processes, if any)."""
    rounds = args.rounds or (2 if args.quick else 3)
    aug_steps, step_steps, rn_steps = (10, 3, 2) if args.quick else (30, 6, 3)
    cl = not args.no_channels_last
    data = load_images(args.data_root)
    print(f"data: {len(data)} images {data.image_size}x{data.image_size} ({data.name}); batch {args.batch}, "
          f"{args.views} views, {args.threads} threads; peer: torchvision transforms on PIL images, "
          f"DataLoader with {args.workers} workers; {rounds} interleaved rounds, medians"
          + (f"; beside {args.contention} busy processes" if args.contention else ""))
    if args.multicrop_only:
        mc = multicrop_cost(args, data, make_model(args.backbone, args.precision, cl), rounds, step_steps)
        print(f"multicrop_ratio={mc:.2f}")
        return 0
    vi = args.batch * args.views
    peer = peer_dataset(data, args.views)

    # 1. augmentation alone
    source = BatchedViews(data, args.views, args.batch)
    if args.fixed_augment_threads:
        source.augment.threads = None
    ours = iter(source)

    def ours_aug() -> float:
        print(f"  siamgrad augmentation threads now: {cpu.busy_aware_threads()} of {torch.get_num_threads()} "
              f"(load average {load_average()})", file=sys.stderr, flush=True)
        return timed_rate(ours, None, 2, aug_steps, vi)

    aug = interleaved({
        "siamgrad augment": ours_aug,
        "peer augment": lambda: peer_trial(peer, args.workers, None, 2, aug_steps, args.batch),
    }, rounds)
    print(f"augmentation only: siamgrad {aug['siamgrad augment']:,.0f} view-images/s, "
          f"peer {aug['peer augment']:,.0f} view-images/s")

    # 2. whole step, small backbone, the preset's dtype/layout
    model = make_model(args.backbone, args.precision, cl)
    ours_step = busy_aware(model.step) if args.busy_step else model.step
    tag = f"{args.backbone} backbone, {args.precision}{' + channels_last' if cl else ''}"
    step = interleaved({
        "siamgrad step": lambda: timed_rate(ours, ours_step, 1, step_steps, vi),
        "peer step": lambda: peer_trial(peer, args.workers, model.step, 1, step_steps, args.batch),
    }, rounds)
    print(f"whole step ({tag}, batch {args.batch}): siamgrad {step['siamgrad step']:,.0f} view-images/s, "
          f"peer {step['peer step']:,.0f} view-images/s")

    # 3. what bf16 autocast and channels_last add to siamgrad's step (small backbone)
    if not args.skip_variants:
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
            "siamgrad resnet18 step": lambda: timed_rate(ours_rn, busy_aware(m18.step) if args.busy_step else m18.step,
                                                         1, rn_steps, rb * args.views),
            "peer resnet18 step": lambda: peer_trial(peer, args.workers, m18.step, 1, rn_steps, rb),
        }, rounds)
        print(f"whole step (resnet18 CIFAR stem, fp32, batch {rb}): siamgrad {rn['siamgrad resnet18 step']:,.1f} "
              f"view-images/s, peer {rn['peer resnet18 step']:,.1f} view-images/s")
        if not args.quick:
            fast = make_model("resnet18", "bf16", True)
            r = statistics.median(timed_rate(ours_rn, fast.step, 1, rn_steps, rb * args.views) for _ in range(2))
            print(f"siamgrad resnet18 step with bf16 + channels_last: {r:,.1f} view-images/s "
                  f"(x{r / rn['siamgrad resnet18 step']:.2f} over fp32)")

    mc = multicrop_cost(args, data, model, rounds, step_steps) if args.local_crops else None

    print(f"aug_ratio={aug['siamgrad augment'] / aug['peer augment']:.2f}")
    print(f"ratio={step['siamgrad step'] / step['peer step']:.2f}")
    if rn is not None:
        print(f"resnet18_ratio={rn['siamgrad resnet18 step'] / rn['peer resnet18 step']:.2f}")
    if mc is not None:
        print(f"multicrop_ratio={mc:.2f}")
    return 0


def multicrop_cost(args: argparse.Namespace, data: ImageDataset, model: Model, rounds: int, steps: int) -> float:
    """Images/s of siamgrad's whole step with ``--local-crops`` local crops beside the global views vs the
    global views alone (same model, interleaved); returns the ratio (with / without)."""
    plain = iter(BatchedViews(data, args.views, args.batch, seed=2))
    multi = iter(BatchedViews(data, args.views, args.batch, seed=2, local_views=args.local_crops,
                              local_size=args.local_size))
    step = busy_aware(model.step) if getattr(args, "busy_step", False) else model.step
    rates = interleaved({
        "siamgrad step": lambda: timed_rate(plain, step, 1, steps, args.batch),
        "siamgrad multi-crop step": lambda: timed_rate(multi, step, 1, steps, args.batch),
    }, rounds)
    with_local, without = rates["siamgrad multi-crop step"], rates["siamgrad step"]
    print(f"multi-crop ({args.backbone} backbone, batch {args.batch}): {args.views} x {data.image_size} px "
          f"{without:,.1f} images/s; {args.views} x {data.image_size} px + {args.local_crops} x {args.local_size} px "
          f"{with_local:,.1f} images/s (x{with_local / without:.2f})")
    return with_local / without


if __name__ == "__main__":
    sys.exit(main())
