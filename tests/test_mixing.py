"""Image mixing inside the batch (CutMix, Mixup) and the ratio-weighted targets of mixed images.

* CutMix boxes against a transcription of the reference ``rand_bbox`` (Yun et al. 2019), the
  ratio recomputed from the clipped box (the pasted area is exactly ``1 - r``), the pixels;
* Mixup is the convex combination ``r x_i + (1 - r) x_perm(i)``; the Beta(alpha, alpha) ratios
  and the per-step probability;
* a mixed positive's gradient against its closed form, autograd through the l2-normalization
  against numpy: UniGrad ``g = -(r u2_i + (1 - r) u2_j) + lambda F u1`` (both forms), SimCLR's
  gradient form with the batch negatives unchanged;
* through a method: the mixed copies are forwarded as their own group, paired with the other
  global crops, and every method trains a mixed step.
"""

from __future__ import annotations

import functools
import math
import types

import numpy as np
import pytest
import torch
from conftest import check_close, leaf64, normalize, through_normalization

from siamgrad import methods
from siamgrad.augment.mixing import cutmix_box, draw_mix, draw_step_mix, mix_images, partner_rows
from siamgrad.core.gradient import view_pairs
from siamgrad.errors import ConfigError
from siamgrad.methods import objectives as obj
from siamgrad.methods.protocol import Branches, MixedView
from siamgrad.models.backbones import build_backbone


def rand_bbox(width: int, height: int, lam: float, cx: int, cy: int) -> tuple[int, int, int, int]:
    """The reference CutMix box (clovaai/CutMix-PyTorch train.py ``rand_bbox``), at a given centre."""
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(width * cut_rat), int(height * cut_rat)
    bbx1, bby1 = np.clip(cx - cut_w // 2, 0, width), np.clip(cy - cut_h // 2, 0, height)
    bbx2, bby2 = np.clip(cx + cut_w // 2, 0, width), np.clip(cy + cut_h // 2, 0, height)
    return int(bbx1), int(bby1), int(bbx2), int(bby2)


# ------------------------------------------------------------------------------------ CutMix / Mixup


def test_cutmix_boxes_match_the_reference_and_clip_at_the_border() -> None:
    rng = np.random.default_rng(0)
    clipped = 0
    for _ in range(500):
        h, w = int(rng.integers(4, 40)), int(rng.integers(4, 40))
        lam, cy, cx = float(rng.random()), int(rng.integers(h)), int(rng.integers(w))
        top, left, bh, bw = cutmix_box(lam, h, w, cy, cx)
        x1, y1, x2, y2 = rand_bbox(w, h, lam, cx, cy)
        assert (left, top, left + bw, top + bh) == (x1, y1, x2, y2)
        assert 0 <= top <= top + bh <= h and 0 <= left <= left + bw <= w
        clipped += bh < int(h * math.sqrt(1 - lam)) // 2 * 2 or bw < int(w * math.sqrt(1 - lam)) // 2 * 2
    assert clipped > 50  # boxes near the border are clipped, and the ratio follows the clipped box
    assert cutmix_box(0.75, 8, 8, 0, 0) == (0, 0, 2, 2)  # half of the 4x4 box falls outside


def test_cutmix_pastes_the_partner_box_and_its_area_is_one_minus_r() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 3, 12, 12, generator=g)
    for _ in range(50):
        p = draw_mix("cutmix", 1.0, 10, 12, 12, g)
        assert sorted(p.perm.tolist()) == list(range(10))
        top, left, bh, bw = p.box
        assert p.ratio == pytest.approx(1 - bh * bw / 144, abs=1e-12)
        mixed = mix_images(x, p)
        inside = torch.zeros(12, 12, dtype=torch.bool)
        inside[top : top + bh, left : left + bw] = True
        assert torch.equal(mixed[:, :, inside], x[p.perm][:, :, inside])
        assert torch.equal(mixed[:, :, ~inside], x[:, :, ~inside])
        assert (~inside).double().mean().item() == pytest.approx(p.ratio, abs=1e-12)


def test_mixup_is_the_convex_combination() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 6, 6, generator=g, dtype=torch.float64)
    p = draw_mix("mixup", 0.5, 8, 6, 6, g)
    assert 0.0 <= p.ratio <= 1.0 and p.box is None
    expected = p.ratio * x + (1 - p.ratio) * x[p.perm]
    assert torch.allclose(mix_images(x, p), expected, rtol=0, atol=1e-15)


def test_beta_ratios_and_the_step_probability() -> None:
    g = torch.Generator().manual_seed(2)
    uniform = np.array([draw_mix("mixup", 1.0, 4, 8, 8, g).ratio for _ in range(3000)])
    assert abs(uniform.mean() - 0.5) < 0.02 and abs((uniform < 0.25).mean() - 0.25) < 0.03  # Beta(1, 1)
    u_shaped = np.array([draw_mix("mixup", 0.2, 4, 8, 8, g).ratio for _ in range(3000)])
    assert ((u_shaped < 0.1) | (u_shaped > 0.9)).mean() > 0.6  # Beta(0.2, 0.2) puts most mass near 0 and 1
    steps = [draw_step_mix("cutmix", 1.0, 0.3, 2, 4, 8, 8, g) for _ in range(2000)]
    assert abs(np.mean([s is not None for s in steps]) - 0.3) < 0.04
    assert all(len(s) == 2 for s in steps if s is not None)
    assert draw_step_mix("cutmix", 1.0, 0.0, 2, 4, 8, 8, g) is None
    assert draw_step_mix("none", 1.0, 1.0, 2, 4, 8, 8, g) is None
    a, b = (draw_mix("cutmix", 1.0, 16, 8, 8, torch.Generator().manual_seed(5)) for _ in range(2))
    assert a.ratio == b.ratio and a.box == b.box and torch.equal(a.perm, b.perm)  # a seed fixes the draw
    with pytest.raises(ConfigError, match="mix_alpha=0 must be > 0"):
        draw_mix("mixup", 0, 4, 8, 8, g)
    with pytest.raises(ConfigError, match="is not a mixing"):
        draw_mix("blend", 1.0, 4, 8, 8, g)


# ------------------------------------------------------------------------------------ closed forms


def _mixed_branches(z: list[torch.Tensor], targets: list[torch.Tensor], r: float, perm: torch.Tensor) -> Branches:
    """Two global crops and a mixed copy of the first (online view 2, paired with target 1)."""
    return Branches(online=z, predicted=z, positive=targets, negative=targets, pairs=view_pairs(2, 0, 1),
                    mixed={2: MixedView(r, functools.partial(partner_rows, perm=perm))})


@pytest.mark.parametrize("form", ["original", "gradient"])
def test_unigrad_mixed_positive_gradient_is_the_closed_form(form: str) -> None:
    rng = np.random.default_rng(3)
    n, d, r, lam = 7, 5, 0.3, 4.0
    zs = [rng.normal(size=(n, d)) for _ in range(3)]
    ts = [rng.normal(size=(n, d)) for _ in range(2)]
    A = rng.normal(size=(d, d))
    F = A @ A.T / d
    perm = rng.permutation(n)
    z = [leaf64(v) for v in zs]
    b = _mixed_branches(z, [torch.tensor(t) for t in ts], r, torch.tensor(perm))
    st = types.SimpleNamespace(F=torch.tensor(F))
    objective = obj.unigrad_original if form == "original" else obj.unigrad_gradient
    loss, _ = objective(b, {"lam": lam}, st)
    loss.backward()
    u, t1 = normalize(zs[2]), normalize(ts[1])
    g = -(r * t1 + (1 - r) * t1[perm]) + lam * u @ F  # the mixed view against target 1
    pairs = 3
    check_close(z[2].grad, through_normalization(zs[2], g) / (pairs * n))
    g0 = -normalize(ts[1]) + lam * normalize(zs[0]) @ F  # an unmixed view: the ordinary gradient
    check_close(z[0].grad, through_normalization(zs[0], g0) / (pairs * n))


def test_simclr_mixed_positive_gradient_keeps_the_batch_negatives() -> None:
    """SimCLR's gradient form for a mixed anchor: g = (1/tau)(-(r u2_i + (1-r) u2_j) + lam sum_v s_v v),
    V = the anchor's own (mixed) view and the target view, unpermuted."""
    rng = np.random.default_rng(4)
    n, d, r, tau, lam = 6, 4, 0.65, 0.5, 1.0
    zs = [rng.normal(size=(n, d)) for _ in range(3)]
    ts = [rng.normal(size=(n, d)) for _ in range(2)]
    perm = rng.permutation(n)
    z = [leaf64(v) for v in zs]
    b = _mixed_branches(z, [torch.tensor(t) for t in ts], r, torch.tensor(perm))
    loss, _ = obj.simclr_gradient(b, {"temperature": tau, "lam": lam}, None)
    loss.backward()
    u, t1 = normalize(zs[2]), normalize(ts[1])
    bank = np.concatenate([u, t1])
    logits = u @ bank.T / tau
    s = np.exp(logits - logits.max(1, keepdims=True))
    s /= s.sum(1, keepdims=True)
    g = (-(r * t1 + (1 - r) * t1[perm]) + lam * s @ bank) / tau
    check_close(z[2].grad, through_normalization(zs[2], g) / (3 * n))


# ------------------------------------------------------------------------------------ methods


def _method(name: str, **options) -> methods.SiameseMethod:
    torch.manual_seed(0)
    backbone, dim = build_backbone("tiny")
    opts = {"proj_hidden_dim": 16, "proj_output_dim": 8, **options}
    if "pred_hidden_dim" in methods.default_options(name):
        opts["pred_hidden_dim"] = 8
    if name == "moco":
        opts["queue_size"] = 32
    return methods.build(name, backbone, dim, **opts)


def _views(seed: int = 0, local: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 3, 16, 16, generator=g) for _ in range(2)] + \
        [torch.randn(6, 3, 8, 8, generator=g) for _ in range(local)]


def test_mixed_copies_are_their_own_group_paired_with_the_other_global_crops() -> None:
    m = _method("unigrad", target="stopgrad")
    views = _views(local=2)
    mix = [draw_mix("cutmix", 1.0, 6, 16, 16, torch.Generator().manual_seed(k)) for k in range(2)]
    b = m.branches(views, mix)
    assert len(b.online) == 6 and len(b.positive) == 2 and set(b.mixed) == {4, 5}
    assert b.pairs == view_pairs(2, 2, 2)
    assert [b.mixed[4].ratio, b.mixed[5].ratio] == [p.ratio for p in mix]
    # the mixed copies' features are those of a forward of the mixed images on their own
    mixed_images = [mix_images(views[k], p) for k, p in enumerate(mix)]
    again = _method("unigrad", target="stopgrad")
    _, online, _ = again._online(mixed_images, None)
    assert all(torch.allclose(a, c, atol=1e-6) for a, c in zip(b.online[4:], online))


# every method and form once; CutMix with the original losses, Mixup with the gradient forms
CASES = [(name, form, "cutmix" if form == "original" else "mixup")
         for name in methods.available() for form in ("original", "gradient")]


@pytest.mark.parametrize("name,form,kind", CASES, ids=[f"{n}-{f}-{k}" for n, f, k in CASES])
def test_every_method_trains_a_mixed_multicrop_step(name: str, form: str, kind: str) -> None:
    m = _method(name, form=form)
    mix = [draw_mix(kind, 1.0, 6, 16, 16, torch.Generator().manual_seed(k)) for k in range(2)]
    loss, logs = m.training_step(_views(local=2), mix)
    assert math.isfinite(float(loss.detach())) and math.isfinite(logs["pos_sim"])
    loss.backward()
    grads = [p.grad for p in m.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
