"""The README's examples work as written: every ``siamgrad train`` line of the usage block and the
settings sentence build their config and method, the CPU CIFAR path names this workspace's
subset from the repository root, and the library snippet runs (with the tiny backbone)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from siamgrad.config import build_config, resolve
from siamgrad.methods.from_config import build_method

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _usage_block() -> str:
    return README.split("## Usage", 1)[1].split("```bash", 1)[1].split("```", 1)[0]


def _train_lines() -> list[list[str]]:
    out = []
    for line in _usage_block().splitlines():
        words = shlex.split(line.split("#", 1)[0])
        if "train" in words and words[0] in ("siamgrad", "torchrun"):
            out.append(words[words.index("train") + 1:])
    return out


def test_every_train_line_of_the_usage_block_builds_its_method():
    lines = _train_lines()
    assert len(lines) >= 4
    for settings in lines:
        cfg = resolve(build_config(settings))
        build_method(cfg)  # method options are checked here (a temperature on UniGrad fails)


def test_the_settings_sentence_examples_build():
    sentence = README.split("Settings are `key=value`", 1)[1].split("Unknown keys", 1)[0]
    examples = [e for e in re.findall(r"`([^`]*=[^`]*)`", sentence) if not re.search(r"=[A-Z]+\b", e)]
    assert len(examples) >= 4
    assert any("temperature" in e for e in examples)
    for e in examples:
        build_method(resolve(build_config(e.split())))


def test_the_cifar_path_is_the_workspace_subset_relative_to_the_repository_root():
    roots = [s.split("=", 1)[1] for line in _train_lines() for s in line if s.startswith("data.root=../")]
    assert roots == ["../shared/data/cifar10-subset"]
    subset = REPO / roots[0]
    if not subset.is_dir():
        pytest.skip("this checkout has no shared/ folder beside it")
    assert (subset / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert "relative to the repository root" in README and "this workspace's CIFAR-10 subset" in README


def test_the_library_snippet_runs_and_clears_gradients_each_step():
    code = README.split("As a library:", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    loop = code.split("for step in range(total_steps):", 1)[1]
    assert loop.index("optimizer.zero_grad()") < loop.index("loss.backward()")
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(code.replace('"resnet18"', '"tiny"'), "README.md", "exec"), ns)
    assert ns["step"] == ns["total_steps"] - 1 and torch.isfinite(ns["loss"]).item()
    # the parameters moved: the optimizer stepped on real gradients
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ns["method"].parameters())


def _quick_start() -> str:
    return README.split("## Quick start", 1)[1].split("Install and run the tests", 1)[0]


def test_the_quick_start_gives_one_duration_for_the_default_run():
    quick = _quick_start()
    # the run's time on a quiet 2-core CPU is stated once, in words that claim no unmeasured figure
    assert "a few minutes on a quiet 2-core CPU" in quick
    assert not re.search(r"about [0-9.]+ minutes", quick), re.findall(r"about [0-9.]+ minutes", quick)
    assert quick.count("quiet 2-core CPU") == 1


def _timm_example() -> str:
    found = re.findall(r"`backbone=(timm:[a-z][^`]*)`", README)
    assert len(found) == 1, found
    return found[0]


def test_the_timm_load_line_is_the_one_the_exports_json_records():
    from siamgrad.export import _load_lines

    arch = _timm_example()
    meta = {"architecture": arch, "format": "timm", "stem": "own", "input_size": 32}
    build = next(line for line in _load_lines(meta, "w.safetensors") if "timm.create_model(" in line)
    call = build.split("model = ", 1)[1]
    flat = " ".join(README.split())
    assert f"`{call}`" in flat, call  # the README's line for its own ViT is the JSON's line
    assert "timm.create_model(NAME, num_classes=0)`" not in flat  # the line that fails for it


def test_the_readme_timm_line_loads_the_vit_it_describes():
    timm = pytest.importorskip("timm")
    from siamgrad.models.backbones import build_backbone

    arch = _timm_example()
    flat = " ".join(README.split())
    call = re.search(r"`(timm\.create_model\('vit[^`]+\))`", flat)[1]
    model = eval(call, {"timm": timm})  # noqa: S307 - the README's own line
    trained, _ = build_backbone(arch)
    model.load_state_dict(trained.state_dict(), strict=True)  # pos_embed and patch_embed fit
    # the README's warning is true: without the options the weights do not load
    plain = timm.create_model(arch[5:].split(",")[0], pretrained=False, num_classes=0)
    with pytest.raises(RuntimeError, match="pos_embed"):
        plain.load_state_dict(trained.state_dict(), strict=True)
