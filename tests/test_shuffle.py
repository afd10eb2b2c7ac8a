"""MoCo's shuffled batch norm: the shuffle, its inverse, one process and two (gloo)."""

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from siamgrad.models.shuffle import KeyShuffle, shuffle, unshuffle
from siamgrad.models.view_norm import view_groups

WORLD, N, V = 2, 4, 2  # per rank: V views of N images stacked


def _encoder(bn: bool) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(3, 6), *([nn.BatchNorm1d(6)] if bn else []), nn.ReLU(), nn.Linear(6, 2)]
    return nn.Sequential(*layers).double()


def _global_batch() -> torch.Tensor:
    return torch.randn(WORLD * V * N, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def test_shuffle_is_the_permutation_and_unshuffle_its_inverse():
    x = _global_batch()
    perm = KeyShuffle(seed=5).permutation(x.shape[0], "cpu")
    assert sorted(perm.tolist()) == list(range(x.shape[0])) and perm.tolist() != list(range(x.shape[0]))
    torch.testing.assert_close(shuffle(x, perm), x[perm], rtol=0, atol=0)
    torch.testing.assert_close(unshuffle(shuffle(x, perm), perm), x, rtol=0, atol=0)


def test_keys_equal_the_unshuffled_computation_without_batch_norm():
    enc, x = _encoder(bn=False), _global_batch()
    perm = KeyShuffle(seed=5).permutation(x.shape[0], "cpu")
    with torch.no_grad():
        torch.testing.assert_close(unshuffle(enc(shuffle(x, perm)), perm), enc(x), rtol=1e-14, atol=1e-14)


def test_with_per_view_batch_norm_the_key_groups_are_the_shuffled_ones():
    """Keys = the encoder on each group of the *shuffled* batch (by hand: separate forwards of the
    groups x[perm[j n:(j + 1) n]]), put back in order; and they differ from the unshuffled keys."""
    x = _global_batch()
    g, n = 2 * V, N  # the whole global batch on one process, in 2V groups of N
    perm = KeyShuffle(seed=5).permutation(x.shape[0], "cpu")
    enc, ref = _encoder(bn=True), _encoder(bn=True)
    with torch.no_grad(), view_groups(enc, g):
        keys = unshuffle(enc(shuffle(x, perm)), perm)
        plain = enc(x)
    with torch.no_grad():
        by_hand = torch.empty_like(keys)
        for j in range(g):
            rows = perm[j * n : (j + 1) * n]
            by_hand[rows] = ref(x[rows])
    torch.testing.assert_close(keys, by_hand, rtol=1e-13, atol=1e-13)
    assert (keys - plain).abs().max() > 1e-3


def test_permutations_are_reproducible_and_resume():
    def sequence(ks: KeyShuffle, steps: int) -> list[list[int]]:
        out = []
        for _ in range(steps):
            out.append(ks.permutation(10, "cpu").tolist())
            assert ks.permutation(10, "cpu").tolist() == out[-1]  # a second forward in a step: the same
            ks.advance()
        return out

    seq = sequence(KeyShuffle(seed=11), 3)
    assert seq[0] != seq[1] != seq[2]
    b = KeyShuffle(seed=11)
    assert sequence(b, 1) == seq[:1]
    resumed = KeyShuffle(seed=0)
    resumed.load_state_dict(b.state_dict())  # a run resumed after one step
    assert sequence(resumed, 2) == seq[1:]
    assert sequence(KeyShuffle(seed=12), 1) != seq[:1]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x = _global_batch()
        local = x.view(WORLD, V * N, 3)[rank]
        perm = KeyShuffle(seed=100 + rank).permutation(x.shape[0], "cpu")  # rank 0's wins
        enc = _encoder(bn=False)
        with torch.no_grad():
            shuffled = shuffle(local, perm)
            keys = unshuffle(enc(shuffled), perm)
        torch.save({"perm": perm, "shuffled": shuffled, "keys": keys}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo")
def test_two_processes_shuffle_across_ranks(tmp_path: Path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    out = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    x = _global_batch()
    perm = KeyShuffle(seed=100).permutation(x.shape[0], "cpu")
    assert all(torch.equal(o["perm"], perm) for o in out)
    m = V * N
    with torch.no_grad():
        full = _encoder(bn=False)(x)
    for r, o in enumerate(out):
        torch.testing.assert_close(o["shuffled"], x[perm][r * m : (r + 1) * m], rtol=0, atol=0)
        torch.testing.assert_close(o["keys"], full[r * m : (r + 1) * m], rtol=1e-14, atol=1e-14)
    # every rank's shuffled rows come from both ranks' samples
    assert len({int(i) // m for i in perm[:m]}) == WORLD
