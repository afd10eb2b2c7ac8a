"""LARS against a direct re-derivation of its update (the official Barlow Twins / VICReg / BYOL
rule: trust ratio eta ||w|| / ||g + wd w|| with eta 0.001, biases and norm parameters excluded from
both); the warmup + cosine schedule."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from siamgrad.config import OptimConfig
from siamgrad.train.optim import LARS, build_optimizer, lr_factor, scaled_lr


def test_lars_matches_numpy_rederivation():
    torch.manual_seed(0)
    w = torch.randn(5, 4, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    pw, pb = nn.Parameter(w.clone()), nn.Parameter(b.clone())
    opt = LARS([{"params": [pw]}, {"params": [pb], "lars_exclude": True, "weight_decay": 0.0}],
               lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.02)  # a non-default eta reaches the step
    W, Bv = w.numpy().copy(), b.numpy().copy()
    mw = mb = None
    for _ in range(3):
        gw, gb = torch.randn_like(w), torch.randn_like(b)
        pw.grad, pb.grad = gw.clone(), gb.clone()
        opt.step()
        g = gw.numpy() + 0.1 * W
        g = g * (0.02 * np.linalg.norm(W) / np.linalg.norm(g))
        mw = g if mw is None else 0.9 * mw + g
        W = W - 0.5 * mw
        mb = gb.numpy() if mb is None else 0.9 * mb + gb.numpy()
        Bv = Bv - 0.5 * mb
    np.testing.assert_allclose(pw.detach().numpy(), W, rtol=1e-12)
    np.testing.assert_allclose(pb.detach().numpy(), Bv, rtol=1e-12)


def test_one_lars_step_of_a_built_optimizer_by_hand():
    """build_optimizer(name=lars): optim.lars_eta (default 0.001) scales the weights' step; the
    biases and BatchNorm parameters take a plain SGD step without weight decay."""
    assert OptimConfig().lars_eta == 0.001
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False)).double()
    with torch.no_grad():  # BatchNorm starts at weight 1, bias 0: make every parameter generic
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.normal_()
    before = {n: p.detach().numpy().copy() for n, p in net.named_parameters()}
    for eta in (None, 0.01):
        cfg = OptimConfig(name="lars", lr=0.4, lr_scaling="none", weight_decay=0.05, momentum=0.9,
                          **({} if eta is None else {"lars_eta": eta}))
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(torch.from_numpy(before[n]))
        opt = build_optimizer(net, cfg, batch_size=256)
        net.zero_grad()
        net(torch.randn(8, 3, dtype=torch.float64)).pow(2).sum().backward()
        grads = {n: p.grad.numpy().copy() for n, p in net.named_parameters()}
        opt.step()
        e = 0.001 if eta is None else eta
        for n, p in net.named_parameters():
            w, g = before[n], grads[n]
            if w.ndim > 1:  # weights: weight decay, then the trust ratio
                g = g + 0.05 * w
                g = g * (e * np.linalg.norm(w) / np.linalg.norm(g))
            expected = w - 0.4 * g  # first step: the momentum buffer is the update itself
            np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12, atol=1e-15, err_msg=n)
    excluded = {id(p) for g in opt.param_groups if g["lars_exclude"] for p in g["params"]}
    assert excluded == {id(net[0].bias), id(net[1].weight), id(net[1].bias)}


def test_lars_eta_is_validated():
    from siamgrad.config import build_config
    from siamgrad.errors import ConfigError

    assert build_config(["optim.lars_eta=0.02"]).optim.lars_eta == 0.02
    with pytest.raises(ConfigError, match="optim.lars_eta"):
        build_config(["optim.lars_eta=0"])


def test_schedule_warmup_then_cosine():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert f[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(total, total, warm, min_ratio=0.1) == pytest.approx(0.1)


def test_build_optimizers_and_lr_scaling():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    for name in ("sgd", "lars", "adamw"):
        cfg = OptimConfig(name=name, lr=0.1)
        opt = build_optimizer(net, cfg, batch_size=512)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
        assert sum(len(g["params"]) for g in opt.param_groups) == 4
    assert scaled_lr(OptimConfig(lr=0.1, lr_scaling="none"), 512) == 0.1
