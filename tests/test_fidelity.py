"""The behaviours that follow the reference implementations, each against an independent computation.

* per-view batch norm inside a method = separate forwards of each view (float64, outputs,
  gradients, running statistics);
* MoCo's shuffled batch norm: the keys are the key encoder on the groups of the shuffled batch,
  put back in order; without batch norm they equal the unshuffled keys;
* DirectPred's predictor trained by SGD between resets from ``F_hat`` (numpy, step by step);
* the momentum schedules and the references' heads.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from siamgrad import methods
from siamgrad.methods.protocol import Branches
from siamgrad.methods.states import DirectPredictor
from siamgrad.train.optim import build_optimizer
from siamgrad.config import OptimConfig

N, D_IN = 6, 3 * 4 * 4


def _bn_backbone() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10), nn.BatchNorm1d(10), nn.ReLU())


def _views(m: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, 3, 4, 4, generator=g, dtype=torch.float64) * (1 + 0.5 * v) + v for v in range(m)]


def _build(name: str, **options) -> methods.SiameseMethod:
    torch.manual_seed(0)
    opts = {"proj_hidden_dim": 12, "proj_output_dim": 8, **options}
    if "pred_hidden_dim" in methods.default_options(name):
        opts.setdefault("pred_hidden_dim", 6)
    if name == "moco":
        opts.setdefault("queue_size", 64)
    return methods.build(name, _bn_backbone(), 10, **opts).double()


# ------------------------------------------------------------------------ per-view batch norm


@pytest.mark.parametrize("name", ["byol", "barlow_twins"])
def test_method_per_view_batch_norm_equals_separate_forwards(name):
    """The online branch of a 3-view step = backbone, projector (and predictor) run on each view
    alone; the gradients and the running statistics too."""
    method = _build(name, view_bn="per_view")
    ref = copy.deepcopy(method)
    views = _views(3)
    b = method.branches(views)
    nets = [ref.backbone, ref.projector] + ([ref.predictor] if ref.predictor is not None else [])
    expected_online, expected_pred = [], []
    for v in views:
        z = ref.projector(ref.backbone(v))
        expected_online.append(z)
        expected_pred.append(ref.predictor(z) if ref.predictor is not None else z)
    for got, want in zip(b.online + b.predicted, expected_online + expected_pred):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = torch.linspace(-1, 1, 8, dtype=torch.float64)
    (sum((p * w).sum() + p.pow(2).sum() for p in b.predicted)).backward()
    (sum((p * w).sum() + p.pow(2).sum() for p in expected_pred)).backward()
    got_nets = [method.backbone, method.projector] + ([method.predictor] if method.predictor is not None else [])
    for mine, theirs in zip(got_nets, nets):
        for (k, p), (_, q) in zip(mine.named_parameters(), theirs.named_parameters()):
            if q.grad is None:
                assert p.grad is None or not p.grad.any(), k
                continue
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-11, atol=1e-12, msg=k)
        for (k, x), (_, y) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12, msg=k)


def test_joint_option_is_one_batch_norm_over_all_views():
    method = _build("unigrad", view_bn="joint", target="stopgrad")
    per_view = _build("unigrad", view_bn="per_view", target="stopgrad")
    views = _views(2)
    x = torch.cat(views)
    with torch.no_grad():
        joint = method.projector(method.backbone(x))
        b_joint = method.branches(views)
        b_pv = per_view.branches(views)
    torch.testing.assert_close(torch.cat(b_joint.online), joint, rtol=1e-12, atol=1e-12)
    assert (torch.cat(b_pv.online) - joint).abs().max() > 1e-3


# ------------------------------------------------------------------------ MoCo shuffled batch norm


def test_moco_keys_come_from_the_shuffled_groups():
    """Keys = the momentum encoder on each group of N rows of the permuted batch (separate forwards,
    by hand), put back in order; queries keep their per-view groups."""
    method = _build("moco", shuffle_bn=True)
    assert method.key_shuffle is not None
    views = _views(2)
    x = torch.cat(views)
    perm = method.key_shuffle.permutation(x.shape[0], "cpu")
    ref = copy.deepcopy(method)
    with torch.no_grad():
        b = method.branches(views)
        keys = torch.empty(2 * N, 8, dtype=torch.float64)
        for j in range(2):
            rows = perm[j * N:(j + 1) * N]
            keys[rows] = ref.momentum_projector(ref.momentum_backbone(x[rows]))
        plain = [ref.momentum_projector(ref.momentum_backbone(v)) for v in views]
    torch.testing.assert_close(torch.cat(b.positive), keys, rtol=1e-12, atol=1e-12)
    assert (torch.cat(b.positive) - torch.cat(plain)).abs().max() > 1e-3  # the grouping matters
    # the next step draws another permutation
    method.on_step_end(0, 10)
    assert not torch.equal(method.key_shuffle.permutation(x.shape[0], "cpu"), perm)


def test_moco_keys_without_batch_norm_equal_the_unshuffled_ones():
    def build(shuffle: bool) -> methods.SiameseMethod:
        torch.manual_seed(0)
        backbone = nn.Sequential(nn.Flatten(), nn.Linear(D_IN, 10), nn.ReLU())
        return methods.build("moco", backbone, 10, proj_hidden_dim=12, proj_output_dim=8, queue_size=64,
                             shuffle_bn=shuffle).double()

    views = _views(2)
    with torch.no_grad():
        shuffled, plain = build(True).branches(views), build(False).branches(views)
    for a, b in zip(shuffled.positive, plain.positive):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_shuffle_state_is_checkpointed_only_when_on():
    assert "key_shuffle.steps" in _build("moco").state_dict()
    assert not any(k.startswith("key_shuffle") for k in _build("moco", shuffle_bn=False).state_dict())
    assert _build("moco", target="stopgrad").key_shuffle is None  # no key encoder, nothing to shuffle


# ------------------------------------------------------------------------ DirectPred between resets


def _wp_numpy(F: np.ndarray, eps: float, clamp: float) -> np.ndarray:
    s, U = np.linalg.eigh(F)
    p = np.maximum(np.sqrt(np.maximum(s, 0) / s.max()) + eps, clamp)
    return (U * p) @ U.T


def _cos_loss_grad(W: np.ndarray, f: np.ndarray, t: np.ndarray) -> np.ndarray:
    """d/dW of mean_i -2 cos(W f_i, t_i)."""
    p = f @ W.T
    pn, tn = np.linalg.norm(p, axis=1, keepdims=True), np.linalg.norm(t, axis=1, keepdims=True)
    dp = -2 * (t / (pn * tn) - (p * t).sum(1, keepdims=True) * p / (pn**3 * tn))
    return dp.T @ f / f.shape[0]


def test_directpred_predictor_trained_between_resets_by_hand():
    """freq=3: after the optimizer step of steps 0, 3, 6 W_p = directpred_weight(F_hat) (F_hat with that
    step's batch); in between, SGD with momentum and weight decay on the loss's gradient."""
    dim, n, rho, eps, clamp, freq = 4, 7, 0.3, 0.01, 1e-4, 3
    lr, mom, wd = 0.2, 0.9, 0.01
    st = DirectPredictor(dim, rho, eps, freq, clamp, trained=True).double()
    opt = torch.optim.SGD([st.weight], lr=lr, momentum=mom, weight_decay=wd)
    g = torch.Generator().manual_seed(5)
    F = W = buf = None
    for k in range(8):
        f = [torch.randn(n, dim, generator=g, dtype=torch.float64) for _ in range(2)]
        t = [torch.randn(n, dim, generator=g, dtype=torch.float64) for _ in range(2)]
        st.observe(Branches(online=f, predicted=f, positive=t, negative=t))
        fb = sum(z.numpy().T @ z.numpy() for z in f) / (2 * n)
        F = fb if F is None else rho * F + (1 - rho) * fb
        if k == 0:
            W = _wp_numpy(F, eps, clamp)  # the first step predicts with W_p of its own F_hat
        np.testing.assert_allclose(st.weight.detach().numpy(), W, rtol=1e-10, atol=1e-12, err_msg=f"step {k}")
        np.testing.assert_allclose(st.F_hat.numpy(), F, rtol=1e-12, atol=1e-14)
        loss = sum((-2 * torch.cosine_similarity(st(f[a]), t[1 - a], dim=1)).mean() for a in range(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        G = sum(_cos_loss_grad(W, f[a].numpy(), t[1 - a].numpy()) for a in range(2)) + wd * W
        buf = G if buf is None else mom * buf + G
        W = W - lr * buf
        st.on_step_end()
        if k % freq == 0:
            W = _wp_numpy(F, eps, clamp)
        np.testing.assert_allclose(st.weight.detach().numpy(), W, rtol=1e-10, atol=1e-12, err_msg=f"after {k}")


def test_directpred_method_trains_its_predictor_with_the_optimizer():
    method = _build("directpred", freq=2)
    assert method.options["predictor_update"] == "sgd"
    opt = build_optimizer(method, OptimConfig(name="sgd", lr=0.1, lr_scaling="none"), batch_size=N)
    assert any(p is method.state.weight for grp in opt.param_groups for p in grp["params"])
    weights = []
    for k in range(3):
        loss, _ = method.training_step(_views(2, seed=k))
        opt.zero_grad()
        loss.backward()
        assert method.state.weight.grad is not None and method.state.weight.grad.abs().sum() > 0
        opt.step()
        before_reset = method.state.weight.detach().clone()
        method.on_step_end(k, 10)
        weights.append((before_reset, method.state.weight.detach().clone()))
    from siamgrad.core.objectives.asymmetric import directpred_weight
    for k, (before, after) in enumerate(weights):
        if k % 2 == 0:  # reset after steps 0 and 2
            assert not torch.allclose(before, after)
        else:  # step 1: the SGD step stays
            torch.testing.assert_close(before, after, rtol=0, atol=0)
    torch.testing.assert_close(weights[-1][1], directpred_weight(method.state.F_hat, 0.01, 1e-4))
    fixed = _build("directpred", predictor_update="fixed")
    assert not isinstance(fixed.state.weight, nn.Parameter)


# ------------------------------------------------------------------------ momentum schedules


def test_momentum_schedules():
    moco, byol = _build("moco"), _build("byol")
    assert moco.options["momentum_schedule"] == "constant" and byol.options["momentum_schedule"] == "cosine"
    assert moco.momentum_at(50, 100) == moco.options["momentum"] == 0.99
    m0 = byol.options["momentum"]
    assert byol.momentum_at(50, 100) == pytest.approx(1 - (1 - m0) * 0.5)
    assert _build("directpred").momentum_at(7, 10) == 0.996
    cos = _build("moco", momentum_schedule="cosine")
    assert cos.momentum_at(100, 100) == pytest.approx(1.0)


# ------------------------------------------------------------------------ heads


def _linears(seq: nn.Module) -> list[nn.Linear]:
    return [m for m in seq if isinstance(m, nn.Linear)]


def _bns(seq: nn.Module) -> list[nn.BatchNorm1d]:
    return [m for m in seq if isinstance(m, nn.BatchNorm1d)]


def test_heads_follow_the_references():
    simclr = _build("simclr").projector  # google-research/simclr model_util.py projection_head
    assert isinstance(simclr[-1], nn.BatchNorm1d) and _linears(simclr)[-1].bias is None
    assert simclr[-1].weight.requires_grad and not simclr[-1].bias.requires_grad  # a scale, no shift
    byol = _build("byol")  # deepmind-research byol/utils/networks.py MLP
    assert _linears(byol.projector)[-1].bias is None and _linears(byol.predictor)[-1].bias is None
    vicreg = _build("vicreg").projector  # facebookresearch/vicreg main_vicreg.py Projector
    assert _linears(vicreg)[-1].bias is None and not isinstance(vicreg[-1], nn.BatchNorm1d)
    dp = _build("directpred").projector  # facebookresearch/luckmatters mlp_head.py, has_bn_affine=false
    assert all(not bn.affine for bn in _bns(dp)) and _linears(dp)[-1].bias is not None
    simsiam = _build("simsiam").projector  # facebookresearch/simsiam builder.py
    assert isinstance(simsiam[-1], nn.BatchNorm1d) and not simsiam[-1].affine
    moco = _build("moco").projector  # facebookresearch/moco builder.py (mlp)
    assert not _bns(moco) and all(lin.bias is not None for lin in _linears(moco))
    unigrad = _build("unigrad").projector  # fundamentalvision/UniGrad project/model.py
    assert [lin.bias is not None for lin in _linears(unigrad)] == [False, False, True] and len(_bns(unigrad)) == 2
    bt = _build("barlow_twins").projector  # facebookresearch/barlowtwins main.py
    assert all(lin.bias is None for lin in _linears(bt))
    # options override the flags (the UniGrad head for a gradient form; old defaults)
    sg = _build("simclr", proj_last_bn=False, proj_last_bias=True).projector
    assert not isinstance(sg[-1], nn.BatchNorm1d) and _linears(sg)[-1].bias is not None
    assert all(bn.affine for bn in _bns(_build("directpred", proj_hidden_bn_affine=True).projector))


def test_simclr_output_shift_stays_zero_while_the_scale_learns():
    method = _build("simclr")
    opt = build_optimizer(method, OptimConfig(name="lars", lr=0.5, lr_scaling="none"), batch_size=N)
    bn = method.projector[-1]
    scale0 = bn.weight.detach().clone()
    for k in range(2):
        loss, _ = method.training_step(_views(2, seed=k))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not bn.bias.any() and not torch.equal(bn.weight.detach(), scale0)
