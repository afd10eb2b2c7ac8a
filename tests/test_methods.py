"""The method registry and SiameseMethod: options, training on CPU, state, momentum encoder, queue."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from siamgrad import methods
from siamgrad.errors import ConfigError, SiamgradError
from siamgrad.core.gradient import l2n

NAMES = ["simclr", "moco", "byol", "simsiam", "directpred", "barlow_twins", "vicreg", "unigrad"]
FEATURE_DIM = 32


def tiny_backbone() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, FEATURE_DIM))


def small_options(name: str, **extra) -> dict:
    opts = {"proj_hidden_dim": 64, "proj_output_dim": 32}
    defaults = methods.default_options(name)
    if "pred_hidden_dim" in defaults:
        opts["pred_hidden_dim"] = 32
    if name == "moco":
        opts["queue_size"] = 4096
    opts.update(extra)
    return opts


def make(name: str, seed: int = 0, **extra) -> methods.SiameseMethod:
    torch.manual_seed(seed)
    return methods.build(name, tiny_backbone(), FEATURE_DIM, **small_options(name, **extra))


def fixed_views(m: int, n: int = 16, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, 8, 8, generator=g)
    return [base + 0.3 * torch.randn(n, 3, 8, 8, generator=g) for _ in range(m)]


def train(method: methods.SiameseMethod, views, steps: int, lr: float = 0.05):
    opt = torch.optim.SGD(method.parameters(), lr=lr, momentum=0.9)
    history = []
    for step in range(steps):
        loss, logs = method.training_step(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_step_end(step, steps)
        history.append(logs)
    return history


# ------------------------------------------------------------------------------------ registry


def test_available_lists_all_methods() -> None:
    assert methods.available() == NAMES


def test_paper_defaults() -> None:
    d = methods.default_options
    assert d("simclr")["temperature"] == 0.1 and d("simclr")["proj_output_dim"] == 128
    assert d("moco")["momentum"] == 0.99 and d("moco")["queue_size"] == 65536 and d("moco")["temperature"] == 0.2
    assert d("byol")["momentum"] == 0.996 and d("byol")["proj_hidden_dim"] == 4096 and d("byol")["proj_output_dim"] == 256
    assert d("simsiam")["proj_layers"] == 3 and d("simsiam")["pred_hidden_dim"] == 512
    dp = d("directpred")
    assert (dp["rho"], dp["eps"], dp["freq"], dp["clamp"], dp["momentum"]) == (0.3, 0.01, 1, 1e-4, 0.996)
    assert d("barlow_twins")["lambd"] == 0.0051 and d("barlow_twins")["proj_output_dim"] == 8192
    vic = d("vicreg")
    assert (vic["sim_weight"], vic["var_weight"], vic["cov_weight"], vic["proj_hidden_dim"]) == (25.0, 25.0, 1.0, 8192)
    uni = d("unigrad")
    assert (uni["lam"], uni["rho"], uni["momentum"], uni["proj_layers"]) == (100.0, 0.99, 0.996, 3)
    for name in NAMES:
        assert {"form", "target", "momentum", "proj_hidden_dim", "proj_output_dim", "proj_layers"} <= set(d(name))


@pytest.mark.parametrize(
    "name,options,fragment",
    [
        ("nope", {}, "unknown method 'nope'; choose one of: simclr"),
        ("simclr", {"temprature": 0.1}, "unknown option method.temprature"),
        ("simclr", {"form": "grad"}, "method.form='grad' is invalid for simclr: expected one of original, gradient"),
        ("simclr", {"temperature": 0}, "method.temperature=0"),
        ("byol", {"momentum": 1.0}, "method.momentum=1.0"),
        ("moco", {"queue_size": 0}, "method.queue_size=0"),
        ("moco", {"queue_size": 2.5}, "method.queue_size=2.5"),
        ("byol", {"target": "none"}, "method.target='none' is not available for byol with form=original"),
        ("barlow_twins", {"form": "gradient", "target": "none"}, "choose one of: auto, stopgrad"),
        ("barlow_twins", {"width_scaled": "yes"}, "method.width_scaled='yes'"),
        ("byol", {"lam": "big"}, "method.lam='big'"),
        ("unigrad", {"rho": 1.5}, "method.rho=1.5"),
    ],
)
def test_bad_options_raise_one_line_config_error(name: str, options: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        methods.build(name, tiny_backbone(), FEATURE_DIM, **options)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_options_are_normalized() -> None:
    m = methods.build("simclr", tiny_backbone(), FEATURE_DIM, temperature="0.5", proj_hidden_dim=16.0, proj_output_dim=8)
    assert m.options["temperature"] == 0.5 and m.options["proj_hidden_dim"] == 16
    assert m.target == "none" and m.form == "original"
    assert methods.build("byol", tiny_backbone(), FEATURE_DIM, **small_options("byol", lam="auto", form="gradient")).target == "momentum"


def test_bad_views_and_feature_dim_raise() -> None:
    m = make("simclr")
    with pytest.raises(SiamgradError):
        m.training_step([torch.randn(4, 3, 8, 8)])
    with pytest.raises(SiamgradError):
        m.training_step([torch.randn(4, 3, 8, 8), torch.randn(5, 3, 8, 8)])
    wrong = methods.build("simclr", tiny_backbone(), 16, **small_options("simclr"))
    with pytest.raises(ConfigError, match="feature_dim=16"):
        wrong.training_step(fixed_views(2, n=4))


# ------------------------------------------------------------------------------------ training

CASES = [
    (name, form, target)
    for name in NAMES
    for form in ("original", "gradient")
    for target in methods.REGISTRY[name].targets[form]
]

# Gradient-form balance coefficients for the tiny 32-d heads: the decorrelation forms settle at
# pos_sim ~ D / (2 lam), so the paper's lam = 50 (made for D = 2048) is scaled down here.
TINY_LAM = {"barlow_twins": 2.0, "vicreg": 2.0}


# every target with M = 2 views, the default (auto) target of each form also with M = 3
TRAIN_CASES = [(n, f, t, 2) for n, f, t in CASES] + [
    (n, f, methods.REGISTRY[n].targets[f][0], 3) for n in NAMES for f in ("original", "gradient")
]


@pytest.mark.parametrize("name,form,target,m", TRAIN_CASES)
def test_trains_without_nan_and_loss_falls(name: str, form: str, target: str, m: int) -> None:
    extra = {"form": form, "target": target}
    if form == "gradient" and name in TINY_LAM:
        extra["lam"] = TINY_LAM[name]
    method = make(name, **extra)
    if name == "moco":
        # On a fixed batch the queue would fill with this batch's own keys (its positives become
        # negatives and the loss must rise); freeze the queue here -- enqueueing is tested below.
        method.state.stash = lambda keys: None
    history = train(method, fixed_views(m), steps=20)
    losses = [h["loss"] for h in history]
    assert all(math.isfinite(v) for h in history for v in h.values())
    assert method.last_features is not None and method.last_features.shape == (16, FEATURE_DIM)
    assert not method.last_features.requires_grad
    first, last = losses[0], float(np.mean(losses[-3:]))
    assert last < first - 1e-3 * max(1.0, abs(first)), (losses[0], losses[-3:])


def test_bf16_autocast_runs_objectives_in_float32() -> None:
    for name in ("simclr", "directpred", "barlow_twins", "unigrad"):
        method = make(name)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, logs = method.training_step(fixed_views(2))
        assert loss.dtype == torch.float32 and math.isfinite(logs["loss"])
        loss.backward()


# ------------------------------------------------------------------------------------ state


@pytest.mark.parametrize("name,form", [(n, f) for n in NAMES for f in ("original", "gradient")])
def test_state_dict_round_trip_gives_identical_next_loss(name: str, form: str) -> None:
    extra = {"form": form}
    if name == "directpred" and form == "original":
        extra["freq"] = 3
    a = make(name, seed=0, **extra)
    views = fixed_views(2)
    train(a, views, steps=2)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = make(name, seed=123, **extra)
    b.load_state_dict(torch.load(buffer))
    next_views = fixed_views(2, seed=5)
    la, _ = a.training_step(next_views)
    lb, _ = b.training_step(next_views)
    assert la.item() == lb.item()
    a.on_step_end(2, 10)
    b.on_step_end(2, 10)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_resume_state_is_registered() -> None:
    keys = set(make("moco").state_dict())
    assert {"state.queue", "state.ptr"} <= keys and any(k.startswith("momentum_backbone.") for k in keys)
    assert {"state.F", "state.updates"} <= set(make("unigrad").state_dict())
    assert {"state.ema.F", "state.ema.updates", "state.weight", "state.steps"} <= set(make("directpred").state_dict())


# ------------------------------------------------------------------------------------ momentum


def test_momentum_encoder_follows_cosine_schedule_exactly() -> None:
    method = make("byol", momentum=0.9)
    online_before = [p.detach().clone() for p in method.backbone.parameters()]
    target_before = [p.detach().clone() for p in method.momentum_backbone.parameters()]
    # perturb the online weights so that online != target
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    step, total = 3, 10
    m = 1 - (1 - 0.9) * (math.cos(math.pi * step / total) + 1) / 2
    method.on_step_end(step, total)
    assert method.last_momentum == pytest.approx(m, rel=1e-15)
    for ob, tb, tp in zip(online_before, target_before, method.momentum_backbone.parameters()):
        np.testing.assert_allclose(tp.numpy(), (m * tb + (1 - m) * (ob + 1.0)).numpy(), rtol=1e-6, atol=1e-7)
    assert method.momentum_at(0, 10) == pytest.approx(0.9)
    assert method.momentum_at(10, 10) == pytest.approx(1.0)
    assert method.momentum_at(5, 10) == pytest.approx(0.95)


def test_momentum_target_gets_no_gradient_and_initially_equals_online() -> None:
    method = make("unigrad")
    for po, pm in zip(method.backbone.parameters(), method.momentum_backbone.parameters()):
        assert torch.equal(po, pm) and not pm.requires_grad
    loss, _ = method.training_step(fixed_views(2))
    loss.backward()
    assert all(p.grad is None for p in method.momentum_backbone.parameters())
    assert all(p.grad is not None for p in method.backbone.parameters())


def test_target_branches_route_features() -> None:
    views = fixed_views(2)
    none = make("simclr", target="none").branches(views)
    assert all(t.requires_grad for t in none.positive + none.negative)
    stop = make("simclr", target="stopgrad").branches(views)
    assert not any(t.requires_grad for t in stop.positive + stop.negative)
    torch.testing.assert_close(stop.positive[1], stop.online[1].detach())
    mp_method = make("simclr", target="momentum_positive")
    with torch.no_grad():
        for p in mp_method.momentum_projector.parameters():
            p.mul_(0.5)
    mp = mp_method.branches(views)
    torch.testing.assert_close(mp.negative[0], mp.online[0].detach())
    assert not torch.allclose(mp.positive[0], mp.online[0])


# ------------------------------------------------------------------------------------ MoCo queue


def test_moco_queue_enqueue_and_pointer_wrap() -> None:
    method = make("moco", queue_size=40)
    queue = method.state
    views = fixed_views(2, n=16)
    for step in range(3):
        expected_keys = l2n(method.branches(views).negative[0].detach())
        before = queue.queue.clone()
        ptr = int(queue.ptr)
        method.training_step(views)
        assert torch.equal(queue.queue, before)  # nothing written before the optimizer step
        method.on_step_end(step, 10)
        idx = [(ptr + i) % 40 for i in range(16)]
        torch.testing.assert_close(queue.queue[idx], expected_keys, rtol=1e-5, atol=1e-6)
        untouched = [i for i in range(40) if i not in idx]
        assert torch.equal(queue.queue[untouched], before[untouched])
        assert int(queue.ptr) == (ptr + 16) % 40
    assert int(queue.ptr) == 8  # 48 keys into a ring of 40


def test_feature_queue_keeps_last_keys_when_batch_exceeds_queue() -> None:
    from siamgrad.methods.states import FeatureQueue

    q = FeatureQueue(4, 2)
    q.ptr.fill_(3)
    keys = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    q.enqueue(keys)
    # the last 4 keys land at 3, 0, 1, 2 and the pointer advances by 4 (mod 4)
    torch.testing.assert_close(q.queue[[3, 0, 1, 2]], keys[2:])
    assert int(q.ptr) == 3


def test_moco_gradient_form_at_lam_one_equals_original_infonce() -> None:
    # With the queue and momentum keys detached, the gradient form's g (lam = 1) is InfoNCE's gradient:
    # both forms must give the same loss value and the same parameter gradients.
    results = {}
    for form in ("original", "gradient"):
        method = make("moco", seed=0, form=form, queue_size=64).double()
        views = [v.double() for v in fixed_views(2)]
        loss, _ = method.training_step(views)
        loss.backward()
        results[form] = (loss.item(), [p.grad for p in method.parameters() if p.grad is not None])
    assert results["original"][0] == pytest.approx(results["gradient"][0], rel=1e-12)
    for a, b in zip(results["original"][1], results["gradient"][1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------ view pairs


def test_simclr_three_views_is_mean_of_pairwise_nt_xent() -> None:
    from siamgrad.core.objectives.contrastive import nt_xent_loss

    method = make("simclr", temperature=0.5)
    views = fixed_views(3)
    loss, _ = method.training_step(views)
    with torch.no_grad():
        z = method.branches(views).online
    expected = np.mean([nt_xent_loss(z[a], z[b], 0.5).item() for a, b in [(0, 1), (0, 2), (1, 2)]])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_byol_is_sum_of_both_directions() -> None:
    from siamgrad.core.objectives.asymmetric import byol_loss

    method = make("byol")
    views = fixed_views(2)
    loss, _ = method.training_step(views)
    with torch.no_grad():
        b = method.branches(views)
        p = [method.predictor(z) for z in b.online]  # a predictor pass per view (per-view batch norm)
    expected = byol_loss(p[0], b.positive[1]) + byol_loss(p[1], b.positive[0])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------------ describe


def test_describe_rows_and_table() -> None:
    rows = methods.describe()
    assert [r["name"] for r in rows] == NAMES
    required = ["name", "family", "positive term", "negative set", "negative weights", "balance coefficient (lambda)", "defaults"]
    for row in rows:
        assert all(isinstance(row[k], str) and row[k] for k in required)
    by_name = {r["name"]: r for r in rows}
    assert by_name["unigrad"]["family"] == "unigrad" and "lam=100.0" in by_name["unigrad"]["defaults"]
    assert by_name["moco"]["family"] == "contrastive" and "queue" in by_name["moco"]["negative set"]
    assert by_name["barlow_twins"]["family"] == "decorrelation" and "lambd=0.0051" in by_name["barlow_twins"]["defaults"]
    assert {by_name[n]["family"] for n in ("byol", "simsiam", "directpred")} == {"asymmetric"}
    table = methods.format_table(rows)
    lines = table.splitlines()
    for row in rows:
        assert any(line.startswith("name") and line.rstrip().endswith(row["name"]) for line in lines)
    assert sum(1 for line in lines if line.startswith("family")) == len(NAMES)
    assert methods.format_table([]) == ""
