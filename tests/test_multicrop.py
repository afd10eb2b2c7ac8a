"""Multi-crop: G global crops and L smaller local crops, targets from the global crops only.

* the pairing (which online view meets which target), counted for several (G, L) and checked on
  the branches a method builds;
* one forward per size group with per-view batch norm against one separate forward per view
  (float64: outputs, parameter gradients and running statistics), momentum keys included;
* the local crops of the batched augmentation (sizes, scales, the global views unchanged by adding
  them, the ragged/streamed path), a streamed training run;
* config errors, one line each;
* every method in both forms trains a step with G = 2, L = 2 (and BYOL / SimSiam with a predictor
  of their own for the local crops);
* a small ViT from timm (patch 4, 32 px) trains with 16 px local crops (position embeddings
  interpolated by timm's ``dynamic_img_size``).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from siamgrad import methods
from siamgrad.augment.multiview import build_augment
from siamgrad.augment.ragged import RaggedImages
from siamgrad.config import build_config, resolve
from siamgrad.core.gradient import ordered_pairs, view_pairs
from siamgrad.errors import ConfigError, SiamgradError
from siamgrad.models.backbones import build_backbone
from siamgrad.train.loop import Trainer, train

pytestmark = pytest.mark.filterwarnings("ignore:.*image decoding:DeprecationWarning")  # the streamed run's JPEGs

GLOBAL, LOCAL = 16, 8


def _views(g: int, l: int, n: int = 6, seed: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return ([torch.randn(n, 3, GLOBAL, GLOBAL, generator=gen, dtype=dtype) for _ in range(g)]
            + [torch.randn(n, 3, LOCAL, LOCAL, generator=gen, dtype=dtype) for _ in range(l)])


def _method(name: str, **options) -> methods.SiameseMethod:
    torch.manual_seed(0)
    backbone, dim = build_backbone("tiny")
    opts = {"proj_hidden_dim": 16, "proj_output_dim": 8, **options}
    if "pred_hidden_dim" in methods.default_options(name):
        opts.setdefault("pred_hidden_dim", 8)
    if name == "moco":
        opts.setdefault("queue_size", 32)
    return methods.build(name, backbone, dim, **opts)


# ------------------------------------------------------------------------------------ pairing


@pytest.mark.parametrize("g,l", [(2, 0), (2, 1), (2, 6), (3, 2), (4, 4)])
def test_pairing_counts_and_targets(g: int, l: int) -> None:
    pairs = view_pairs(g, l)
    assert len(pairs) == g * (g - 1) + l * g == len(set(pairs))
    for a in range(g + l):
        targets = sorted(c for x, c in pairs if x == a)
        # a global crop meets every other global crop, a local crop every global crop, never a local
        assert targets == [c for c in range(g) if c != a], (a, targets)
    assert view_pairs(g) == ordered_pairs(g)  # no local crops: every ordered pair, in the old order
    # a mixed copy of global crop k meets the other global crops
    mixed = view_pairs(g, l, 2)
    assert len(mixed) == len(pairs) + 2 * (g - 1)
    assert sorted(c for a, c in mixed if a == g + l) == list(range(1, g))
    assert sorted(c for a, c in mixed if a == g + l + 1) == [0] + list(range(2, g))


@pytest.mark.parametrize("g,l", [(2, 2), (3, 1)])
def test_branches_hold_global_targets_and_the_pairing(g: int, l: int) -> None:
    for name, target in (("unigrad", "momentum"), ("simclr", "none"), ("simsiam", "stopgrad")):
        m = _method(name, target=target)
        b = m.branches(_views(g, l))
        assert len(b.online) == len(b.predicted) == g + l
        assert len(b.positive) == len(b.negative) == g
        assert b.pairs == view_pairs(g, l) and not b.plain
        if target == "none":  # the target of a global crop is its own online feature
            assert all(b.positive[c] is b.online[c] for c in range(g))


def test_the_loss_is_the_mean_over_the_pairs() -> None:
    """UniGrad's loss with G = 2, L = 3 equals the mean over the 2 + 6 pairs computed one by one."""
    from siamgrad.core.objectives.unigrad import unigrad_loss

    m = _method("unigrad", target="stopgrad")
    views = _views(2, 3)
    loss, _ = m.training_step(views)
    b = m.branches(views)  # the same features (train-mode batch norm, no momentum encoder)
    F = m.state.F
    expected = torch.stack([unigrad_loss(b.online[a], b.online[c].detach(), F, m.params["lam"])
                            for a in range(5) for c in range(2) if a != c]).mean()
    assert torch.allclose(loss, expected, rtol=1e-6)


# ------------------------------------------------------------------------------------ forwards


def _separate(model: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
    return [model(v) for v in views]


def test_one_forward_per_size_group_equals_separate_forwards_per_view() -> None:
    """float64, per-view batch norm: outputs, gradients and running statistics of the grouped forward
    (one per size group) equal those of one forward per view, in view order."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        m = _method("byol", local_predictor=True)
        views = _views(2, 3, n=5, dtype=torch.float64)
        ref = copy.deepcopy(m)
        b = m.branches(views)
        online_ref = nn.Sequential(ref.backbone, ref.projector)
        z_ref = _separate(online_ref, views)
        p_ref = [ref.predictor(z) for z in z_ref[:2]] + [ref.local_predictor(z) for z in z_ref[2:]]
        keys_ref = _separate(nn.Sequential(ref.momentum_backbone, ref.momentum_projector), views[:2])
        for got, want in zip(b.online + b.predicted + b.positive, z_ref + p_ref + keys_ref):
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
        weights = [torch.randn(*z.shape) for z in b.predicted]
        sum(((p * w).sum() for p, w in zip(b.predicted, weights)), torch.zeros(())).backward()
        sum(((p * w).sum() for p, w in zip(p_ref, weights)), torch.zeros(())).backward()
        grads = [(k, p.grad) for k, p in m.named_parameters() if p.grad is not None]
        assert len(grads) > 10 and any("local_predictor" in k for k, _ in grads)
        ref_params = dict(ref.named_parameters())
        for k, g in grads:
            assert torch.allclose(g, ref_params[k].grad, rtol=1e-10, atol=1e-12), k
        ref_buffers = dict(ref.named_buffers())
        for k, v in m.named_buffers():
            if "running" in k or "num_batches" in k:
                assert torch.allclose(v.double(), ref_buffers[k].double(), rtol=1e-12, atol=1e-14), k
    finally:
        torch.set_default_dtype(before)


def test_views_out_of_order_or_mismatched_are_one_line_errors() -> None:
    m = _method("unigrad")
    with pytest.raises(SiamgradError, match="first two views must be global crops") as e:
        m.training_step(_views(0, 1) + _views(2, 0))
    assert "\n" not in str(e.value)
    with pytest.raises(SiamgradError, match="global crops first, all of one size"):
        m.training_step(_views(0, 2) + _views(2, 0))
    bigger_local = _views(2, 0) + [torch.randn(6, 3, 24, 24)]
    with pytest.raises(SiamgradError, match="smaller local crops"):
        m.training_step(bigger_local)
    with pytest.raises(SiamgradError, match="same batch size"):
        m.training_step(_views(2, 0) + [torch.randn(5, 3, LOCAL, LOCAL)])


# ------------------------------------------------------------------------------------ augmentation


def test_local_crops_of_the_batched_augmentation() -> None:
    images = (torch.rand(64, 3, 32, 32) * 255).to(torch.uint8)
    plain = build_augment("cifar", 32, 2)
    multi = build_augment("cifar", 32, 2, local_views=3, local_size=12, local_scale=(0.05, 0.14))
    assert multi.total_views == 5 and plain.total_views == 2
    out = multi(images, generator=torch.Generator().manual_seed(3))
    assert [tuple(v.shape) for v in out] == [(64, 3, 32, 32)] * 2 + [(64, 3, 12, 12)] * 3
    # the global views of a seed do not change when local crops are added (drawn after them)
    same = plain(images, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(out[:2], same))
    params = multi.sample_params(64, 32, 32, torch.Generator().manual_seed(3))
    for p in params[2:]:  # the local crops' boxes cover 5-14% of the image (up to pixel rounding)
        frac = p.area_fraction
        assert frac.min() >= 0.04 and frac.max() <= 0.16
    assert min(float(p.area_fraction.max()) for p in params[:2]) > 0.5
    with pytest.raises(ConfigError, match="not smaller than the global crops"):
        build_augment("cifar", 32, 2, local_views=2, local_size=32)


def test_local_crops_from_ragged_images() -> None:
    """The streamed path: images of their own sizes give local crops of the local size, and a ragged
    batch of equal sizes gives exactly the ordinary batch's views."""
    gen = torch.Generator().manual_seed(0)
    imgs = [(torch.rand(3, h, w, generator=gen) * 255).to(torch.uint8) for h, w in ((20, 30), (32, 24), (17, 17))]
    aug = build_augment("simclr", 16, 2, local_views=2, local_size=8)
    out = aug(RaggedImages.from_list(imgs), generator=torch.Generator().manual_seed(1))
    assert [tuple(v.shape) for v in out] == [(3, 3, 16, 16)] * 2 + [(3, 3, 8, 8)] * 2
    assert all(torch.isfinite(v).all() for v in out)
    same = [(torch.rand(3, 20, 20, generator=gen) * 255).to(torch.uint8) for _ in range(4)]
    ragged = aug(RaggedImages.from_list(same), generator=torch.Generator().manual_seed(2))
    batch = aug(torch.stack(same), generator=torch.Generator().manual_seed(2))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ragged, batch))


def test_streamed_folder_trains_with_local_crops_and_mixing(tmp_path) -> None:
    from test_stream import write_folder

    write_folder(tmp_path / "data" / "train", n=36, first_h=14)
    write_folder(tmp_path / "data" / "test", n=12, first_h=14)
    cfg = build_config(["backbone=tiny", "batch_size=16", "epochs=1", "method.proj_hidden_dim=16",
                        "method.proj_output_dim=8", "eval.knn_k=5", "progress=false", "threads=1",
                        "data.image_size=16", "diag.enabled=false", "eval.random_baseline=false", "eval.every=0",
                        "data=imagefolder", f"data.root={tmp_path / 'data'}", "data.stream=true", "data.workers=0",
                        "data.eval_images=12", f"out_dir={tmp_path}", "run_name=mc", "augment.local_crops=2",
                        "augment.local_size=8", "augment.mix=cutmix", "log_every=1"])
    result = train(cfg, log=False)
    assert result.step == 2
    from siamgrad.train.loop import read_metrics

    losses = [r["loss"] for r in read_metrics(result.run_dir) if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("args,message", [
    (["data=cifar10", "augment.local_crops=4", "augment.local_size=32"], "augment.local_size=32 is not smaller"),
    (["augment.size=24", "augment.local_crops=2", "augment.local_size=30"], "augment.local_size=30 is not smaller"),
    (["augment.local_crops=2", "augment.local_scale=[0.3, 0.1]"], "augment.local_scale=.* must be"),
    (["augment.local_scale=[0.1]"], "augment.local_scale=.* must be"),
    (["augment.local_crops=-1"], "augment.local_crops: -1 is out of range"),
    (["augment.mix=cutmixx"], "augment.mix: 'cutmixx' is not valid; choose one of: none, cutmix, mixup"),
    (["augment.mix=mixup", "augment.mix_alpha=0"], "augment.mix_alpha: 0.0 is out of range"),
    (["augment.mix=cutmix", "augment.mix_p=1.5"], "augment.mix_p: 1.5 is out of range"),
    (["augment.mix=cutmix", "augment.n_views=1"], "augment.n_views: 1 is out of range"),  # mixing needs a second view
    (["method=byol", "method.local_predictor=maybe"], "method.local_predictor='maybe' is invalid"),
])
def test_config_errors_are_one_line(args: list[str], message: str) -> None:
    from siamgrad.methods.from_config import method_options

    with pytest.raises(ConfigError, match=message) as e:
        method_options(resolve(build_config(args)))
    assert "\n" not in str(e.value)


def test_local_size_against_the_datas_own_size_fails_before_training(tmp_path) -> None:
    """digits' size is known only once the data is read: the trainer says it in one line."""
    cfg = build_config(["augment.local_crops=2", "augment.local_size=40", f"out_dir={tmp_path}", "progress=false"])
    with pytest.raises(ConfigError, match="augment.local_size=40 is not smaller") as e:
        Trainer(cfg, log=False)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ every method


CASES = [(name, form) for name in methods.available() for form in ("original", "gradient")]


@pytest.mark.parametrize("name,form", CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_every_method_trains_a_multicrop_step(name: str, form: str) -> None:
    m = _method(name, form=form)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    loss, logs = m.training_step(_views(2, 2))
    assert math.isfinite(float(loss.detach())) and math.isfinite(logs["pos_sim"])
    loss.backward()
    opt.step()
    m.on_step_end(0, 10)
    assert any(not torch.equal(before[k], v) for k, v in m.state_dict().items() if k.startswith("backbone."))
    assert len(methods.REGISTRY) == 8


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_a_predictor_of_their_own_for_the_local_crops(name: str) -> None:
    m = _method(name, local_predictor=True)
    assert m.local_predictor is not None and m.local_predictor is not m.predictor
    without = _method(name)  # off by default: no extra module, the other modules' initialization unchanged
    assert without.local_predictor is None
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in without.state_dict().items())
    loss, _ = m.training_step(_views(2, 2))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.local_predictor.parameters()
               if p.requires_grad)


# ------------------------------------------------------------------------------------ timm ViT


def test_a_small_vit_from_timm_trains_with_local_crops() -> None:
    pytest.importorskip("timm", reason="timm is not installed (pip install 'siamgrad[timm]')")
    name = "timm:vit_tiny_patch16_224,img_size=32,patch_size=4,depth=2,dynamic_img_size=true"
    cfg = build_config([f"backbone={name}", "method.proj_hidden_dim=32", "method.proj_output_dim=16"])
    from siamgrad.methods.from_config import build_method

    torch.manual_seed(0)
    m = build_method(cfg)
    aug = build_augment("cifar", 32, 2, local_views=2, local_size=16)
    images = (torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    w0 = m.backbone.pos_embed.detach().clone()
    losses = []
    for step in range(3):
        views = aug(images, generator=torch.Generator().manual_seed(step))
        assert views[2].shape[-1] == 16
        loss, _ = m.training_step(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.on_step_end(step, 3)
        losses.append(float(loss))
    assert all(math.isfinite(x) for x in losses)
    assert not torch.equal(w0, m.backbone.pos_embed)  # the position embeddings learn
    with pytest.raises(ConfigError, match="is not key=value"):
        build_backbone("timm:vit_tiny_patch16_224,depth")


# ------------------------------------------------------------------------------------ benchmark


def test_throughput_benchmark_measures_the_cost_of_local_crops(capsys) -> None:
    import argparse

    from test_reproduce import _bench

    from siamgrad.data.in_memory import ImageDataset

    bench = _bench("bench_throughput")
    images = (torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    data = ImageDataset(images, torch.arange(16) % 2, ["a", "b"], "cifar10")
    args = argparse.Namespace(views=2, batch=8, local_crops=2, local_size=8, backbone="tiny")
    model = bench.make_model("tiny", "fp32", False)
    ratio = bench.multicrop_cost(args, data, model, rounds=1, steps=1)
    out = capsys.readouterr().out
    assert 0 < ratio < 10 and "2 x 16 px + 2 x 8 px" in out and "images/s" in out
    # the whole step on the busy-aware thread count (--busy-step), as under --contention
    args.busy_step = True
    assert 0 < bench.multicrop_cost(args, data, model, rounds=1, steps=1) < 10


# ------------------------------------------------------------------------------------ resume


def test_a_resumed_multicrop_mixed_run_ends_with_the_same_weights(tmp_path) -> None:
    """The local crops and the mixing draws of step s come from generators seeded by (seed, s)."""
    from siamgrad import checkpoint as ck

    common = ["backbone=tiny", "batch_size=32", "epochs=1", "data.fraction=0.1", "method.proj_hidden_dim=16",
              "method.proj_output_dim=8", "progress=false", "threads=1", "diag.enabled=false",
              "eval.random_baseline=false", "eval.every=0", "eval.online_probe=false", f"out_dir={tmp_path}",
              "augment.local_crops=2", "augment.local_size=8", "augment.mix=mixup", "augment.mix_p=0.5"]
    straight = train(build_config([*common, "run_name=straight", "stop_after=3"]), log=False)
    train(build_config([*common, "run_name=parts", "stop_after=1"]), log=False)
    parts = train(build_config([*common, "run_name=parts", "stop_after=3", "resume=true"]), log=False)
    assert straight.step == parts.step == 3
    a, b = (ck.load_checkpoint(r.run_dir / "latest.pt")["method"] for r in (straight, parts))
    assert all(torch.equal(a[k], b[k]) for k in a)
