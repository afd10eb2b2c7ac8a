"""Two CPU processes (gloo) with half batches reproduce one process with the full batch.

Each rank computes every objective on its half of a fixed global batch and backpropagates into its
local features. Under DDP a parameter's gradient is the average over ranks, so the single-process
gradient w.r.t. a rank's slice must equal that rank's feature gradient divided by the world size,
and the single-process loss the average of the ranks' losses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from siamgrad import distributed as D
from siamgrad.core.gradient import batch_correlation, l2n, surrogate_loss
from siamgrad.core.objectives import contrastive as con
from siamgrad.core.objectives import decorrelation as dec
from siamgrad.core.objectives import unigrad as uni

WORLD = 2
N, DIM = 8, 5


def _global_batch() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(N, DIM, generator=g, dtype=torch.float64) for _ in range(3)]


def _objectives(z1: torch.Tensor, z2: torch.Tensor, z3: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every batch-statistic path of the objectives, as a function of local features (all with grad)."""
    t1, t2 = z1.detach() * 1.1, z2.detach() - 0.2  # stand-ins for target-branch features
    F = batch_correlation([l2n(t1), l2n(t2)])
    return {
        "nt_xent": con.nt_xent_loss(z1, z2, 0.3),
        "contrastive_momentum": con.batch_contrastive_loss(z1, t2, [t1, t2], 0.3),
        "contrastive_gradient": surrogate_loss(l2n(z1), con.batch_contrastive_gradient(z1, t2, [t1, t2], 0.3, 1.0)),
        "barlow_twins": dec.barlow_twins_loss([z1, z2], 0.1),
        "barlow_twins_l2": dec.barlow_twins_loss([z1, z2], 0.1, l2=True),
        "barlow_twins_3views": dec.barlow_twins_loss([z1, z2, z3], 0.1),
        "vicreg_3views": dec.vicreg_loss([z1, z2, z3], 25.0, 25.0, 1.0),
        "barlow_gradient": surrogate_loss(l2n(z1), dec.barlow_twins_gradient(z1, t2, t2, 5.0)),
        "vicreg_gradient": surrogate_loss(l2n(z1), dec.vicreg_gradient(z1, t2, 5.0)),
        "unigrad": uni.unigrad_loss(z1, t2, F, 10.0),
    }


def _run(zs: list[torch.Tensor]) -> dict[str, tuple[float, list[torch.Tensor]]]:
    out = {}
    for name in _objectives(*zs):
        leaves = [z.detach().clone().requires_grad_(True) for z in zs]
        loss = _objectives(*leaves)[name]
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        out[name] = (loss.item(), [torch.zeros_like(z) if g is None else g for z, g in zip(leaves, grads)])
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        assert D.is_dist() and D.world_size() == WORLD and D.rank() == rank
        n = N // WORLD
        local = [z[rank * n : (rank + 1) * n] for z in _global_batch()]
        torch.save(_run(local), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo")
def test_two_processes_with_half_batches_match_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    single = _run(_global_batch())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    n = N // WORLD
    for name, (loss, grads) in single.items():
        mean_loss = sum(r[name][0] for r in ranks) / WORLD
        assert mean_loss == pytest.approx(loss, rel=1e-10), name
        for v, full in enumerate(grads):
            for r in range(WORLD):
                torch.testing.assert_close(
                    ranks[r][name][1][v] / WORLD, full[r * n : (r + 1) * n], rtol=1e-9, atol=1e-12, msg=f"{name} view {v}"
                )


def test_helpers_are_identity_without_process_group() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert not D.is_dist() and D.world_size() == 1 and D.rank() == 0
    assert D.all_gather_with_grad(x) is x
    torch.testing.assert_close(D.all_reduce_mean(x), x.detach())
    torch.testing.assert_close(D.all_reduce_sum(x), x.detach())
    assert not D.all_gather(x).requires_grad
