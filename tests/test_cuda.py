"""The CUDA paths, checked on a GPU against the CPU: marked ``cuda``, skipped without CUDA.

    pytest -m cuda tests/test_cuda.py                                # on a machine with a GPU
    SIAMGRAD_CUDA_TEST_DEVICE=cpu pytest -m cuda tests/test_cuda.py  # the same code on the CPU

What runs on the device: the batched augmentation (same-size and ragged batches, the
convolution blur used for long kernels on a GPU) against the CPU result; one training step of
every method in both forms in fp32 against the CPU step, then in bf16 autocast with
channels_last against the fp32 step; a compiled backbone and a compiled step against eager; the
streamed JPEG path with nvjpeg decoding against CPU decoding; the trainer end to end in bf16;
a one-process NCCL group through the all-reduce helpers.

``SIAMGRAD_CUDA_TEST_DEVICE=cpu`` runs every test on the CPU instead (CPU decoding, the
compiler's tracing without code generation, gloo), a check of the tests' own code where no GPU
is lent: the GPU suite's dry run (``benchmarks/gpu_suite.py --dry-run``) runs them so.
"""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch

from siamgrad import distributed as D
from siamgrad.augment.multiview import build_augment
from siamgrad.augment.ragged import RaggedImages
from siamgrad.methods import registry
from siamgrad.models.backbones import build_backbone

DEVICE = torch.device(os.environ.get("SIAMGRAD_CUDA_TEST_DEVICE", "cuda"))
ON_GPU = DEVICE.type == "cuda"
COMPILE_BACKEND = "inductor" if ON_GPU else "eager"

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="needs CUDA"),
]

# small heads: the steps check numerics, not capacity
_SMALL = {"proj_hidden_dim": 256, "proj_output_dim": 128, "pred_hidden_dim": 128, "queue_size": 256}


@pytest.fixture
def exact_fp32():
    """fp32 matmuls and convolutions without TF32, so GPU and CPU agree to float rounding."""
    mm, cd = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = mm, cd


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=_gen(seed))


# -- augmentation on the device


@pytest.mark.parametrize("preset,size,src", [("byol", 24, 32), ("simclr", 96, 112)])
def test_augment_on_device_matches_cpu(exact_fp32, preset, size, src) -> None:
    # 96 px: a 9-tap blur, which runs as grouped convolutions on a GPU and as shifted copies on a CPU
    aug = build_augment(preset, size, 3)
    x = _images(48, src, src)
    cpu = aug(x, generator=_gen(1))
    dev = aug(x.to(DEVICE), generator=_gen(1))
    for a, b in zip(cpu, dev):
        assert b.device.type == DEVICE.type and b.shape == (48, 3, size, size)
        torch.testing.assert_close(b.cpu(), a, atol=1e-3, rtol=0)  # normalized units: 1/16 of a gray level
    if ON_GPU:  # parameters drawn on the device's own generator: other draws, same shapes
        own = aug(x.to(DEVICE), generator=torch.Generator(device=DEVICE).manual_seed(1))
        assert all(v.device.type == "cuda" and v.shape == (48, 3, size, size) for v in own)


def test_ragged_augment_on_device_matches_cpu(exact_fp32) -> None:
    sizes = [(40, 56), (64, 48), (33, 33), (72, 60)]
    imgs = [_images(1, h, w, seed=i)[0] for i, (h, w) in enumerate(sizes)]
    aug = build_augment("simclr", 32, 2)
    cpu = aug(RaggedImages.from_list(imgs), generator=_gen(3))
    dev = aug(RaggedImages.from_list(imgs, device=DEVICE), generator=_gen(3))
    for a, b in zip(cpu, dev):
        assert b.device.type == DEVICE.type
        torch.testing.assert_close(b.cpu(), a, atol=1e-3, rtol=0)


# -- every method: fp32 on the device = CPU, bf16 + channels_last close to fp32


def _method(name: str, form: str, backbone: str = "tiny", seed: int = 0):
    torch.manual_seed(seed)
    net, dim = build_backbone(backbone, cifar_stem=True)
    opts = {k: v for k, v in _SMALL.items() if k in registry.default_options(name)}
    return registry.build(name, net, dim, form=form, **opts)


def _step(method, views, amp: torch.dtype | None, channels_last: bool) -> tuple[float, torch.nn.Module]:
    """One SGD step (the trainer's calls); the loss before it and the method after it."""
    dev = next(method.parameters()).device
    views = [v.to(dev) for v in views]
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    opt.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
        loss, logs = method.training_step(views)
    loss.backward()
    grads = [p.grad for p in method.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    opt.step()
    method.on_step_end(0, 100)
    return float(loss.detach()), method


@pytest.mark.parametrize("form", ["original", "gradient"])
@pytest.mark.parametrize("name", registry.available())
def test_every_method_steps_on_the_device(exact_fp32, name, form) -> None:
    views = build_augment("cifar", 32, 2)(_images(32, 32, 32), generator=_gen(2))
    base = _method(name, form)
    ref_loss, ref = _step(copy.deepcopy(base), views, None, False)  # CPU, fp32
    loss32, m32 = _step(copy.deepcopy(base).to(DEVICE), views, None, False)
    assert loss32 == pytest.approx(ref_loss, rel=1e-3, abs=1e-4)
    for (k, a), b in zip(ref.state_dict().items(), m32.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b.float().cpu(), a.float(), atol=2e-3, rtol=2e-3, msg=lambda m: f"{k}: {m}")
    loss16, m16 = _step(copy.deepcopy(base).to(DEVICE), views, torch.bfloat16, True)
    assert torch.isfinite(torch.tensor(loss16))
    assert loss16 == pytest.approx(loss32, rel=0.1, abs=0.05)  # bf16 keeps 8 bits of mantissa
    assert all(torch.isfinite(p).all() for p in m16.parameters())


# -- compile


def test_compiled_backbone_and_step_match_eager(exact_fp32) -> None:
    torch._dynamo.reset()
    x = torch.randn(16, 3, 32, 32, generator=_gen(4)).to(DEVICE)
    net, _ = build_backbone("resnet18", cifar_stem=True)
    net = net.to(DEVICE).eval()
    with torch.no_grad():
        eager = net(x)
        net.compile(backend=COMPILE_BACKEND)
        compiled = net(x)
    torch.testing.assert_close(compiled, eager, atol=1e-3, rtol=1e-3)

    views = build_augment("cifar", 32, 2)(_images(32, 32, 32), generator=_gen(5))
    base = _method("unigrad", "original")
    loss_eager, eager_m = _step(copy.deepcopy(base).to(DEVICE), views, None, False)
    comp = copy.deepcopy(base).to(DEVICE)
    comp.backbone.compile(backend=COMPILE_BACKEND)
    loss_comp, comp_m = _step(comp, views, None, False)
    assert loss_comp == pytest.approx(loss_eager, rel=1e-3, abs=1e-4)
    for a, b in zip(eager_m.parameters(), comp_m.parameters()):
        torch.testing.assert_close(b, a, atol=2e-3, rtol=2e-3)
    # compiled, bf16, channels_last: the suite's configuration runs and stays finite
    loss16, _ = _step(comp_m, views, torch.bfloat16, True)
    assert torch.isfinite(torch.tensor(loss16))


# -- the streamed JPEG path


def _write_jpegs(root, n: int = 12) -> list[tuple[int, int]]:
    from torchvision.io import encode_jpeg

    sizes = []
    for i in range(n):
        h, w = 40 + 7 * i, 64 - 2 * i
        # smooth content: JPEG's loss, and decoders' rounding differences, stay small
        lo = torch.rand(1, 3, 4, 4, generator=_gen(10 + i)) * 255
        img = torch.nn.functional.interpolate(lo, size=(h, w), mode="bilinear", align_corners=False)[0]
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"c{i % 2}" / f"{i:03d}.jpg").write_bytes(
            encode_jpeg(img.round().clamp(0, 255).to(torch.uint8), quality=95).numpy().tobytes())
        sizes.append((h, w))
    return sizes


def test_streamed_jpegs_decode_on_the_device(tmp_path, exact_fp32) -> None:
    from siamgrad.data import FolderSource, StreamBatches

    _write_jpegs(tmp_path)
    source = FolderSource.scan(tmp_path)
    decode = "device" if ON_GPU else "cpu"
    on_dev = StreamBatches(source, DEVICE, 6, seed=0, workers=0, decode=decode)
    on_cpu = StreamBatches(source, "cpu", 6, seed=0, workers=0, decode="cpu")
    assert on_dev.device_jpeg == ON_GPU
    aug = build_augment("simclr", 32, 2)
    batches = 0
    for (a, la), (b, lb) in zip(on_cpu.epoch(0), on_dev.epoch(0)):
        assert b.device.type == DEVICE.type
        assert torch.equal(b.sizes, a.sizes) and torch.equal(lb.cpu(), la)
        for i in range(len(a)):
            diff = (b.image(i).cpu().float() - a.image(i).float()).abs()
            assert diff.mean() < 1.5 and diff.max() <= 16  # nvjpeg and libjpeg round the IDCT apart
        va, vb = aug(a, generator=_gen(7)), aug(b, generator=_gen(7))
        for x, y in zip(va, vb):
            assert (y.cpu() - x).abs().mean() < 0.05  # normalized units: ~1 gray level
        batches += 1
    assert batches == len(on_cpu) == 2


# -- the trainer end to end


def test_trainer_trains_on_the_device(tmp_path) -> None:
    from siamgrad.config import build_config
    from siamgrad.train.loop import Trainer

    cfg = build_config([f"device={DEVICE.type}", "backbone=tiny", "epochs=1", "batch_size=64", "diag.enabled=false",
                        "progress=false", f"out_dir={tmp_path}", "run_name=cuda", "eval.random_baseline=false",
                        "method.proj_hidden_dim=128", "method.proj_output_dim=64"])
    tr = Trainer(cfg, log=False)
    assert tr.device.type == DEVICE.type
    if ON_GPU:  # precision and layout "auto" on CUDA: bf16 autocast, channels_last
        assert tr.amp_dtype == torch.bfloat16 and tr.cfg.channels_last
    result = tr.fit()
    tr.close()
    assert result.step == tr.total_steps > 0
    assert result.knn_accuracy is not None and 0.0 <= result.knn_accuracy <= 100.0
    assert (tmp_path / "cuda" / "latest.pt").is_file()


# -- one-process NCCL group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_group_all_reduce() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already running")
    backend = "nccl" if ON_GPU else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        x = torch.arange(6, dtype=torch.float32, device=DEVICE).view(2, 3)
        torch.testing.assert_close(D.all_reduce_mean(x.clone()), x)
        torch.testing.assert_close(D.all_gather(x), x)
        assert D.world_size() == 1 and D.rank() == 0
    finally:
        dist.destroy_process_group()
