"""`siamgrad export`: the backbone's weights load with strict=True into the target library's own
model (built here by hand, as a user would) and give siamgrad's features on the same input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from siamgrad.checkpoint import save_checkpoint
from siamgrad.config import build_config, resolve, to_dict
from siamgrad.eval.features import load_backbone
from siamgrad.export import export_backbone, read_meta
from siamgrad.methods.from_config import build_method

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
TINY = ["backbone=tiny", "method.proj_hidden_dim=32", "method.proj_output_dim=16", "eval.knn_k=20",
        "progress=false", "threads=1", "diag.enabled=false", "diag.report=false"]


def fake_run(tmp_path, backbone: str, cifar_stem: bool | None = None, size: int = 32):
    """A run folder with a checkpoint as the trainer writes it; weights and batch-norm statistics
    are randomized so that a key or buffer the export dropped shows in the features."""
    settings = [f"backbone={backbone}", "data=cifar10", "method.proj_hidden_dim=64", "method.proj_output_dim=32"]
    if cifar_stem is not None:
        settings.append(f"cifar_stem={str(cifar_stem).lower()}")
    cfg = resolve(build_config(settings))
    torch.manual_seed(1)
    method = build_method(cfg)
    with torch.no_grad():
        for m in method.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    run = tmp_path / f"{backbone.replace(':', '-')}-{cifar_stem}"
    save_checkpoint({"config": to_dict(cfg), "step": 7, "total_steps": 7, "method": method.state_dict(),
                     "mean": MEAN, "std": STD, "image_size": size}, run / "latest.pt")
    return run


def features_match(run, target: nn.Module, size: int = 32) -> None:
    """siamgrad's backbone (from the checkpoint) and ``target`` give the same features, eval mode."""
    ours, _ = load_backbone(str(run))
    ours.eval()
    target.eval()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        a, b = ours(x), target(x)
    assert a.shape == b.shape
    assert a.abs().max() > 0
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def tv_resnet(name: str, cifar: bool) -> nn.Module:
    import torchvision

    m = getattr(torchvision.models, name)(weights=None)
    if cifar:
        m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    return m


@pytest.mark.parametrize("name,cifar", [("resnet18", True), ("resnet18", False), ("resnet34", True),
                                        ("resnet50", True), ("resnet50", False)])
def test_resnet_export_loads_strictly_into_torchvision(tmp_path, name, cifar):
    run = fake_run(tmp_path, name, cifar)
    res = export_backbone(str(run))
    assert res.weights == run / "export" / f"{name}-torchvision.safetensors"
    target = tv_resnet(name, cifar)
    target.load_state_dict(load_file(str(res.weights)), strict=True)
    features_match(run, target)
    meta = read_meta(res.weights)
    assert meta["architecture"] == name and meta["format"] == "torchvision"
    assert meta["stem"] == ("cifar" if cifar else "imagenet")
    assert meta["input_size"] == 32 and meta["normalize"]["mean"] == MEAN and meta["normalize"]["std"] == STD
    assert meta["feature_dim"] == (2048 if name == "resnet50" else 512)
    assert res.max_abs_diff is not None and res.max_abs_diff < 1e-5
    # the other stem's model does not take these weights: the stem is really part of the export
    with pytest.raises(RuntimeError):
        tv_resnet(name, not cifar).load_state_dict(load_file(str(res.weights)), strict=True)


def test_load_lines_in_the_json_run_as_written(tmp_path):
    run = fake_run(tmp_path, "resnet18", True)
    res = export_backbone(str(run), out=str(tmp_path / "out" / "r18.safetensors"))
    meta = json.loads((tmp_path / "out" / "r18.json").read_text())
    scope: dict = {}
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path / "out")
    try:
        exec("\n".join(meta["load"]), scope)
    finally:
        os.chdir(cwd)
    features_match(run, scope["model"])
    assert res.weights.name == "r18.safetensors"


def test_pt_output_and_state_dict_format(tmp_path):
    run = fake_run(tmp_path, "resnet18", True)
    res = export_backbone(str(run), out=str(tmp_path / "b.pt"), fmt="state_dict")
    from siamgrad.models.backbones import build_backbone

    net, _ = build_backbone("resnet18", cifar_stem=True)
    net.load_state_dict(torch.load(res.weights, weights_only=True), strict=True)
    features_match(run, net)


def test_small_backbone_from_a_real_run_on_the_command_line(tmp_path):
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "siamgrad", "train", *TINY, "epochs=1", "data.fraction=0.2",
                        f"out_dir={out}", "run_name=t"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    e = subprocess.run([sys.executable, "-m", "siamgrad", "export", str(out / "t")], capture_output=True,
                       text=True, timeout=300)
    assert e.returncode == 0, e.stderr
    path = out / "t" / "export" / "tiny-state_dict.safetensors"
    assert str(path) in e.stdout and "features match" in e.stdout
    from siamgrad.models.backbones import build_backbone

    net, dim = build_backbone("tiny")
    net.load_state_dict(load_file(str(path)), strict=True)
    features_match(out / "t", net, size=16)
    meta = read_meta(path)
    state = torch.load(out / "t" / "latest.pt", weights_only=True)
    assert meta["normalize"]["mean"] == state["mean"] and meta["input_size"] == state["image_size"] == 16
    assert meta["feature_dim"] == dim and meta["source"]["step"] == state["step"]


def _one_line_error(args):
    r = subprocess.run([sys.executable, "-m", "siamgrad", "export", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_errors_are_one_line(tmp_path):
    assert "not found" in _one_line_error([str(tmp_path / "missing")])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    assert "corrupt" in _one_line_error([str(tmp_path / "bad.pt")])
    run = fake_run(tmp_path, "small")
    assert "--format state_dict" in _one_line_error([str(run), "--format", "torchvision"])
    assert ".safetensors" in _one_line_error([str(run), "--out", str(tmp_path / "x.bin")])


@pytest.mark.parametrize("model", ["test_resnet", "test_efficientnet"])
def test_timm_backbone_export_loads_into_timm(tmp_path, model):
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'siamgrad[timm]')")
    run = fake_run(tmp_path, f"timm:{model}")
    res = export_backbone(str(run))
    assert res.weights.name == f"timm-{model}-timm.safetensors"
    target = timm.create_model(model, pretrained=False, num_classes=0)
    target.load_state_dict(load_file(str(res.weights)), strict=True)
    features_match(run, target)
    assert read_meta(res.weights)["stem"] == "own"


def test_timm_backbone_with_options_exports_with_them(tmp_path):
    """``timm:NAME,key=value``: the export builds the timm model with the same keys (a patch-4 ViT at 32 px)."""
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'siamgrad[timm]')")
    run = fake_run(tmp_path, "timm:test_vit,img_size=32,patch_size=4")
    res = export_backbone(str(run))
    target = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32, patch_size=4)
    target.load_state_dict(load_file(str(res.weights)), strict=True)
    features_match(run, target)
    meta = json.loads(res.meta.read_text())
    assert "img_size=32, patch_size=4" in "\n".join(meta["load"])  # the load lines build the same model


def test_resnet_export_loads_into_timm_resnet(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'siamgrad[timm]')")
    run = fake_run(tmp_path, "resnet18", True)
    res = export_backbone(str(run), fmt="timm")
    target = timm.create_model("resnet18", pretrained=False, num_classes=0)
    target.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    target.maxpool = nn.Identity()
    target.load_state_dict(load_file(str(res.weights)), strict=True)
    features_match(run, target)
