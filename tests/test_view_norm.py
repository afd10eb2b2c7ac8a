"""Per-view batch norm in one forward against separate forwards of each view (float64)."""

import copy

import pytest
import torch
from torch import nn

from siamgrad.errors import SiamgradError
from siamgrad.models.view_norm import view_groups

V, N = 3, 5


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3, momentum=None),  # cumulative running average
        nn.Flatten(), nn.Linear(3 * 4 * 4, 6), nn.BatchNorm1d(6), nn.ReLU(),
        nn.Linear(6, 5), nn.BatchNorm1d(5, affine=False),
    ).double()
    for m in net.modules():  # generic affine parameters and running statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return net


def _views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(N, 2, 4, 4, generator=g, dtype=torch.float64) * (1 + v) + v for v in range(V)]


def _loss(out: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return (out * w).sum() + out.pow(2).sum()


def _state(net: nn.Module) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _grads(net: nn.Module) -> dict:
    return {k: p.grad.clone() for k, p in net.named_parameters()}


def _separate(net, views, steps=2):
    outs = []
    for _ in range(steps):
        xs = [v.clone().requires_grad_(True) for v in views]
        out = torch.cat([net(x) for x in xs])
        net.zero_grad()
        _loss(out).backward()
        outs.append((out.detach(), [x.grad for x in xs], _grads(net)))
    return outs


def _grouped(net, views, groups, steps=2):
    outs = []
    for _ in range(steps):
        x = torch.cat(views).requires_grad_(True)
        with view_groups(net, groups):
            out = net(x)
        net.zero_grad()
        _loss(out).backward()
        outs.append((out.detach(), list(x.grad.split(N)), _grads(net)))
    return outs


def test_per_view_statistics_equal_separate_forwards():
    ref, net = _net(), _net()
    a, b = _separate(ref, _views()), _grouped(net, _views(), V)
    for (oa, xa, ga), (ob, xb, gb) in zip(a, b):  # two steps: the second sees updated running stats' effects
        torch.testing.assert_close(ob, oa, rtol=1e-12, atol=1e-12)
        for u, w in zip(xb, xa):
            torch.testing.assert_close(u, w, rtol=1e-12, atol=1e-12)
        for k in ga:
            torch.testing.assert_close(gb[k], ga[k], rtol=1e-12, atol=1e-12, msg=k)
    sa, sb = _state(ref), _state(net)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-12, atol=1e-12, msg=k)
    assert int(sb["1.num_batches_tracked"]) == 2 * V
    # and the model in eval mode (running statistics) gives the same outputs as the reference
    ref.eval(), net.eval()
    x = torch.cat(_views())
    with view_groups(net, V):
        torch.testing.assert_close(net(x), ref(x), rtol=1e-12, atol=1e-12)


def test_joint_statistics_are_plain_batch_norm_on_the_union_and_differ():
    ref, net, per_view = _net(), _net(), _net()
    x = torch.cat(_views())
    out_ref = ref(x)
    with view_groups(net, 1):
        out_joint = net(x)
    torch.testing.assert_close(out_joint, out_ref, rtol=0, atol=0)
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)  # outside the context: ordinary
    with view_groups(per_view, V):
        out_pv = per_view(x)
    assert (out_pv - out_ref).abs().max() > 0.1  # the views' statistics differ: the test can tell


def test_state_dict_keys_unchanged_and_context_restores():
    net = _net()
    keys = list(net.state_dict())
    with view_groups(net, V):
        with view_groups(net, 1):
            assert net[1].view_groups == 1
        assert net[1].view_groups == V
    assert net[1].view_groups == 1 and list(net.state_dict()) == keys
    copy.deepcopy(net).load_state_dict(net.state_dict())


def test_unequal_views_are_a_one_line_error():
    net = _net()
    with view_groups(net, 2), pytest.raises(SiamgradError, match="equal size"):
        net(torch.randn(2 * N + 1, 2, 4, 4, dtype=torch.float64))
    with pytest.raises(SiamgradError, match="positive integer"):
        with view_groups(net, 0):
            pass
