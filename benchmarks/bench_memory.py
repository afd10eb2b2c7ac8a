"""Peak memory of a training step: siamgrad's step vs the same step on views delivered ready-made.

    python benchmarks/bench_memory.py            # CPU: peak resident memory; CUDA: peak allocated
    python benchmarks/bench_memory.py --quick    # the small backbone only

Every configuration runs in a fresh child process (one per measurement, so nothing cached from
another configuration counts). The child builds the method (UniGrad, 512-128 projector, momentum
encoder, as the ``cifar10_cpu`` preset), its SGD optimizer and a batch, reads the memory in use,
runs 3 training steps and reads the peak:

* on CPU the peak resident set size (``VmHWM`` of ``/proc/self/status``) minus the resident size
  just before the first step;
* on CUDA ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the first step.

The figure therefore holds everything a step adds: activations kept for backward, gradients and
optimizer buffers (made on the first step), temporaries, and for siamgrad the augmented views.

Two sides per configuration, interleaved (A, B, A, B) with medians:

* **siamgrad**: a uint8 batch in memory -> ``build_augment`` (all views, float32, on the device)
  -> ``training_step`` -> backward -> optimizer step;
* **ready views** (the named comparison, what a per-image DataLoader pipeline hands the step): the
  float32 views already exist before the measurement starts; the step is the same.

``mem_ratio=`` is siamgrad / ready views for the CPU preset's configuration (small backbone, batch
256, 2 views, bf16 + channels_last): the memory cost of augmenting on the training device.
Also printed: fp32 vs bf16 + channels_last, more views (M = 4, 8), and a CIFAR-stem ResNet-18.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

MB = 1024 * 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak memory while a ``with`` block runs, in bytes: ``before``, ``peak``, ``added``.

    CUDA: ``torch.cuda.max_memory_allocated()`` after resetting the peak at the start (``before``
    is the memory allocated then). CPU: the peak resident set size (``VmHWM``), reset to the
    current resident size at the start by writing 5 to ``/proc/self/clear_refs`` (``before`` is
    ``VmRSS`` then); where that reset is not allowed the peak is the process's since it began.
    """

    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.before = self.peak = 0

    def __enter__(self) -> "PeakMemory":
        torch = self.torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.before = _status_kb("VmRSS") * 1024
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        torch = self.torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _status_kb("VmHWM") * 1024

    @property
    def added(self) -> int:
        return self.peak - self.before


def child(spec: dict) -> dict:
    """Measure one configuration in this process; returns the figures in bytes."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_throughput import BatchedViews, load_images, make_model

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    data = load_images(spec["root"], n=max(spec["batch"], 512))
    model = make_model(spec["backbone"], spec["precision"], spec["channels_last"], device=device)
    source = BatchedViews(data, spec["views"], spec["batch"])
    images = source.images[: spec["batch"]].to(device)
    gen = torch.Generator().manual_seed(0)
    ready = source.augment(images, generator=gen) if spec["side"] == "ready" else None

    def step() -> None:
        views = ready if ready is not None else source.augment(images, generator=gen)
        if model.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        model.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=model.amp or torch.float32, enabled=model.amp is not None):
            loss, _ = model.method.training_step(views)
        loss.backward()
        model.optimizer.step()
        model.method.on_step_end(model.steps, 10_000)
        model.steps += 1

    with PeakMemory(device) as mem:
        for _ in range(3):
            step()
    return {"before": mem.before, "peak": mem.peak, "step": mem.added}


def measure(spec: dict) -> dict:
    """Run :func:`child` for ``spec`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"measurement failed for {spec}: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(base: dict, rounds: int) -> tuple[float, float]:
    """Median step memory (bytes) of siamgrad and of the ready-views step, measured interleaved."""
    ours, ready = [], []
    for _ in range(rounds):
        ours.append(measure({**base, "side": "siamgrad"})["step"])
        ready.append(measure({**base, "side": "ready"})["step"])
    return statistics.median(ours), statistics.median(ready)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the CPU preset's configuration only, one round")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rounds = args.rounds or (1 if args.quick else 2)
    what = "peak allocated CUDA memory" if device == "cuda" else "peak resident memory (VmHWM)"
    print(f"{what} added by 3 training steps (UniGrad, 512-128 projector, momentum encoder), "
          f"device {device}, {args.threads} threads, {rounds} interleaved rounds, medians")
    base = dict(device=device, root=args.data_root, threads=args.threads, backbone="small", batch=256, views=2,
                precision="bf16", channels_last=True)
    configs = [("small, batch 256, 2 views, bf16 + channels_last (the CPU preset)", {})]
    if not args.quick:
        configs += [
            ("small, batch 256, 2 views, fp32", dict(precision="fp32", channels_last=False)),
            ("small, batch 256, 4 views, bf16 + channels_last", dict(views=4)),
            ("small, batch 256, 8 views, bf16 + channels_last", dict(views=8)),
            ("resnet18, batch 64, 2 views, fp32", dict(backbone="resnet18", batch=64, precision="fp32",
                                                        channels_last=False)),
            ("resnet18, batch 64, 2 views, bf16 + channels_last", dict(backbone="resnet18", batch=64)),
        ]
    first = None
    for label, change in configs:
        spec = {**base, **change}
        ours, ready = compare(spec, rounds)
        views_mb = spec["batch"] * spec["views"] * 3 * 32 * 32 * 4 / MB
        print(f"{label}: siamgrad {ours / MB:,.0f} MB, ready views {ready / MB:,.0f} MB "
              f"(x{ours / ready:.2f}; the float32 views themselves are {views_mb:.0f} MB)", flush=True)
        if first is None:
            first = ours / ready
    print(f"mem_ratio={first:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
