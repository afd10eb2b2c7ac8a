"""The cost of per-view batch-norm statistics: one training step with ``view_bn=per_view`` vs ``joint``.

    python benchmarks/bench_view_bn.py                 # 5 rounds: a few minutes on 2 CPU cores
    python benchmarks/bench_view_bn.py --quick         # 3 rounds
    python benchmarks/bench_view_bn.py --backbone resnet18 --batch 64
    python benchmarks/bench_view_bn.py --gradient-only 16,64,256

Both sides are the same method (UniGrad with a momentum encoder and the CPU preset's 512-128
projector by default), built from the same seed, stepped on the same pre-made views (the model
alone: no augmentation, no data loading): ``training_step`` -> ``backward`` -> ``optimizer.step``
-> ``on_step_end``. ``per_view`` runs every batch-norm layer once per view slice
(:mod:`siamgrad.models.view_norm`); ``joint`` once over the stacked views. The sides are timed
interleaved (A, B, A, B, ...) after warm-up steps; the figures are medians over the rounds.

Printed last: ``per_view_steps_per_s=``, ``joint_steps_per_s=`` and ``ratio=`` (per_view / joint
step rate; 1.0 means no cost).

``--gradient-only B1,B2,...`` skips the timing and prints, for each batch size, how far the first
step's parameter gradient with joint statistics is from the per-view one (the references'):
``grad_rel_diff_B=||g_joint - g_per_view|| / ||g_per_view||`` (same weights, same views, fp32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from siamgrad.methods.registry import build as build_method
from siamgrad.models.backbones import build_backbone


def make(view_bn: str, args: argparse.Namespace) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net, dim = build_backbone(args.backbone, cifar_stem=True)
    method = build_method(args.method, net, dim, proj_hidden_dim=512, proj_output_dim=128, view_bn=view_bn)
    if args.channels_last:
        method = method.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.03, momentum=0.9)
    return method, opt


def steps_per_second(method, opt, views, steps: int, warmup: int, amp: torch.dtype | None) -> float:
    def one(k: int) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = method.training_step(views)
        loss.backward()
        opt.step()
        method.on_step_end(k, 10_000)

    for k in range(warmup):
        one(k)
    t0 = time.perf_counter()
    for k in range(steps):
        one(warmup + k)
    return steps / (time.perf_counter() - t0)


def gradient_difference(args: argparse.Namespace, batch: int) -> float:
    g = torch.Generator().manual_seed(2)
    views = [torch.randn(batch, 3, args.size, args.size, generator=g) for _ in range(args.views)]
    grads = []
    for view_bn in ("per_view", "joint"):
        method, _ = make(view_bn, args)
        loss, _ = method.training_step(views)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None]))
    return float((grads[1] - grads[0]).norm() / grads[0].norm())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 rounds instead of 5")
    p.add_argument("--backbone", default="small")
    p.add_argument("--method", default="unigrad")
    p.add_argument("--batch", type=int, default=256, help="images per view")
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--precision", default="fp32", choices=["bf16", "fp32"],
                   help="bf16 autocast is fast only on CPUs with AVX512-BF16")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--steps", type=int, default=3, help="timed steps per trial")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--gradient-only", default=None, metavar="B1,B2", help="only the gradient difference at these batches")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gradient_only:
        args.channels_last = False
        for batch in (int(b) for b in args.gradient_only.split(",")):
            print(f"grad_rel_diff_{batch}={gradient_difference(args, batch):.4f}", flush=True)
        return 0
    rounds = args.rounds or (3 if args.quick else 5)
    amp = torch.bfloat16 if args.precision == "bf16" else None
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(args.batch, 3, args.size, args.size, generator=g) for _ in range(args.views)]
    if args.channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    sides = {name: make(name, args) for name in ("per_view", "joint")}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    print(f"method={args.method} backbone={args.backbone} batch={args.batch}x{args.views} views "
          f"precision={args.precision} channels_last={args.channels_last} threads={torch.get_num_threads()}",
          flush=True)
    for r in range(rounds):
        for name, (method, opt) in sides.items():
            rates[name].append(steps_per_second(method, opt, views, args.steps, 1, amp))
            print(f"  round {r + 1}/{rounds} {name}: {rates[name][-1]:.3f} steps/s", file=sys.stderr, flush=True)
    pv, joint = statistics.median(rates["per_view"]), statistics.median(rates["joint"])
    print(f"per_view_steps_per_s={pv:.3f}")
    print(f"joint_steps_per_s={joint:.3f}")
    print(f"ratio={pv / joint:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
