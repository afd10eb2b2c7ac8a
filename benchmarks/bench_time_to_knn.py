"""Time to a kNN accuracy: the CPU UniGrad preset trained by siamgrad vs fed by the peer pipeline.

    python benchmarks/bench_time_to_knn.py            # target 35% kNN top-1, at most 8 epochs
    python benchmarks/bench_time_to_knn.py --quick    # target 33%, at most 3 epochs
    python benchmarks/bench_time_to_knn.py --target 40 45 --max-epochs 44   # the preset's whole schedule

Both sides train the ``cifar10_cpu`` preset (UniGrad, small ResNet, 24 px, batch 128, 2 views,
bf16 autocast + channels_last; ``--set`` changes any of it) on the CIFAR-10 subset, from the same
initialization (same seed), with :class:`siamgrad.train.loop.Trainer`'s own step (learning-rate
schedule, autocast, backward, optimizer, momentum update). They differ in where the views come from:

* **siamgrad**: the Trainer's pipeline -- uint8 images in memory, batched augmentation;
* **peer**: torchvision's per-image transforms on PIL images in a ``DataLoader`` with 2 workers
  (the lightly / solo-learn recipe, :func:`bench_throughput.peer_dataset`), with the same recipe,
  a shuffled epoch per pass and the workers started per epoch (the DataLoader default).

The two are run interleaved, epoch by epoch (A, B, A, B, ...), on the same cores. After every
epoch each side's kNN top-1 on the test split is measured (k = 200, T = 0.1); the clock counts
training only (evaluation time is printed apart); each side stops at the highest target. Printed:
the accuracy curve of both sides, the training time each needed to reach every ``--target``,
``time_ratio@T=`` for each lower target and ``time_ratio=`` for the highest (peer time / siamgrad
time; above 1 means siamgrad got there sooner), then ``epoch_ratio=``, the same ratio per epoch
over the epochs both sides trained, which the epoch-to-epoch wobble of kNN accuracy does not sway.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_throughput import DEFAULT_ROOT, SCALE, peer_dataset, peer_loader  # noqa: E402

from siamgrad.config import build_config  # noqa: E402
from siamgrad.train.loop import Trainer  # noqa: E402


class _Feed:
    """Stands in for the Trainer's augmentation: returns the views the peer's DataLoader delivered."""

    def __init__(self) -> None:
        self.views: list[torch.Tensor] | None = None

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 share: tuple[int, int] | None = None) -> list[torch.Tensor]:
        assert self.views is not None and share is None  # one process: the whole batch
        return self.views


def _trainer(settings: list[str]) -> Trainer:
    return Trainer(build_config(settings), log=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="target 33%% in at most 3 epochs")
    p.add_argument("--target", type=float, nargs="+", default=None,
                   help="kNN top-1 to reach, in %%, one or more (default 35; quick 33)")
    p.add_argument("--max-epochs", type=int, default=None, help="default 8 (quick 3)")
    p.add_argument("--data-root", default=DEFAULT_ROOT)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="more training settings for both sides (e.g. --set data.fraction=0.5)")
    args = p.parse_args(argv)
    targets = sorted(args.target or [33.0 if args.quick else 35.0])
    top = targets[-1]
    epochs = args.max_epochs or (3 if args.quick else 8)
    if not Path(args.data_root).is_dir():
        print(f"error: no CIFAR-10 data at {args.data_root}; pass --data-root", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="bench_knn_")
    settings = ["preset=cifar10_cpu", f"data.root={args.data_root}", f"epochs={epochs}", "diag.enabled=false",
                "eval.online_probe=false", "eval.random_baseline=false", "progress=false", f"out_dir={tmp}",
                "resume=false", f"threads={args.threads}", *args.set]
    ours = _trainer([*settings, "run_name=siamgrad"])
    peer = _trainer([*settings, "run_name=peer"])
    cfg = ours.cfg
    scale = tuple(cfg.augment.scale) if cfg.augment.scale else SCALE
    feed = _Feed()
    peer.augment = feed  # the peer trainer's steps take the DataLoader's views
    peer_ds = peer_dataset(peer.train_set, cfg.augment.n_views, preset=cfg.augment.preset, scale=scale,
                           size=ours.size)
    print(f"cifar10_cpu preset: {cfg.method['name']}, backbone {cfg.backbone}, batch {cfg.batch_size}, "
          f"{cfg.augment.n_views} views, {cfg.precision}{' + channels_last' if cfg.channels_last else ''}, "
          f"{len(ours.train_set)} training images, {ours.steps_per_epoch} steps/epoch, {args.threads} threads; "
          f"peer: DataLoader with {args.workers} workers; target kNN {', '.join(f'{t:.1f}%' for t in targets)}")

    def siamgrad_epoch(e: int) -> None:
        for images, labels in ours.batches.epoch(e):
            ours.train_step(images, labels)
            ours.step += 1

    def peer_epoch(e: int) -> None:
        loader = peer_loader(peer_ds, cfg.batch_size, args.workers, seed=cfg.seed * 1_000_003 + e)
        for views, labels in loader:
            feed.views = views
            peer.train_step(views[0], labels)
            peer.step += 1

    sides = {"siamgrad": (ours, siamgrad_epoch), "peer": (peer, peer_epoch)}
    clock = {k: 0.0 for k in sides}
    curve: dict[str, list[tuple[int, float, float]]] = {k: [] for k in sides}  # (epoch, seconds, kNN)
    eval_s = 0.0

    def done(name: str) -> bool:  # the side's last kNN reached every target
        return bool(curve[name]) and curve[name][-1][2] >= top

    for e in range(epochs):
        for name, (tr, run_epoch) in sides.items():
            if done(name):
                continue
            t0 = time.perf_counter()
            run_epoch(e)
            clock[name] += time.perf_counter() - t0
            t1 = time.perf_counter()
            acc = tr.knn()
            eval_s += time.perf_counter() - t1
            curve[name].append((e + 1, clock[name], acc))
            print(f"epoch {e + 1} {name}: kNN {acc:.2f}% after {clock[name]:.1f} s of training "
                  f"({tr.step} steps)", flush=True)
        if all(done(name) for name in sides):
            break
    print(f"(evaluation took {eval_s:.1f} s, not counted)")
    for target in targets:
        reached = {name: next((r for r in c if r[2] >= target), None) for name, c in curve.items()}
        for name, r in reached.items():
            if r is None:
                print(f"{name}: did not reach {target:.1f}% in {epochs} epochs ({clock[name]:.1f} s of training)")
            else:
                print(f"{name}: {r[2]:.2f}% >= {target:.1f}% after {r[0]} epochs, {r[1]:.1f} s of training")
        a, b = reached["siamgrad"], reached["peer"]
        key = "time_ratio" if target == top else f"time_ratio@{target:g}"
        if a is not None and b is not None:
            print(f"{key}={b[1] / a[1]:.2f}")
        elif a is not None:  # the peer did not get there: its whole time is a lower bound
            print(f"{key}>={clock['peer'] / a[1]:.2f}")
        else:
            print(f"{key}=nan")
    both = min(len(c) for c in curve.values())  # epochs both sides trained
    if both:
        per_epoch = {name: c[both - 1][1] / both for name, c in curve.items()}
        print(f"per epoch over the {both} epochs both trained: siamgrad {per_epoch['siamgrad']:.1f} s, "
              f"peer {per_epoch['peer']:.1f} s, epoch_ratio={per_epoch['peer'] / per_epoch['siamgrad']:.2f}")
    for tr in (ours, peer):
        getattr(tr, "close", lambda: None)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
