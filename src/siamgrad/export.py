"""``siamgrad export RUN``: the trained backbone's weights alone, for use in other code.

Formats (``--format``; the default follows the backbone):

* ``torchvision`` (default for ``resnet18/34/50``): keys that load with ``strict=True`` into
  ``torchvision.models.resnetNN(weights=None)`` with ``fc = nn.Identity()`` and, for a run
  trained with the CIFAR stem, ``conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)``
  and ``maxpool = nn.Identity()``.
* ``timm`` (default for ``timm:NAME[,key=value,...]``): keys that load into ``timm.create_model(NAME,
  num_classes=0, key=value, ...)``; ResNets also export to timm's ``resnetNN`` (the same key names; the CIFAR
  stem changed the same way).
* ``state_dict``: siamgrad's own keys, loading into
  :func:`siamgrad.models.backbones.build_backbone` (the only format of the ``small``/``tiny``
  CPU networks).

The weights are written in safetensors (``.safetensors``, the default) or, for an ``--out``
ending in ``.pt``/``.pth``, as a plain tensor dict for ``torch.load(..., weights_only=True)``.
A JSON file beside them records the architecture, stem, input size, feature width, the
normalization a user must apply (``x / 255``, then ``(x - mean) / std`` per channel, the
training set's statistics) and the lines that build the target model and load the weights.
The backbone exported is the online encoder (the one kNN and the linear probe evaluate).
After writing, the export is loaded back into the target library's model (when that library is
installed) and its features compared with siamgrad's backbone on the same input.

An export writes only its own files: never over a siamgrad checkpoint, nor under a run folder's
own names (:data:`siamgrad.checkpoint.RUN_FILES`), nor over any other existing file of a run
folder; ``RUN/export/`` is the export's own folder, whose files it replaces.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from siamgrad.checkpoint import FORMAT, RUN_FILES, atomic_write_bytes, atomic_write_json
from siamgrad.config import from_dict, uses_cifar_stem
from siamgrad.errors import ConfigError
from siamgrad.eval.checkpoint import run_folder
from siamgrad.eval.features import load_backbone
from siamgrad.models.backbones import timm_spec

FORMATS = ("torchvision", "timm", "state_dict")
RESNETS = ("resnet18", "resnet34", "resnet50")


@dataclass
class ExportResult:
    weights: Path
    meta: Path
    tensors: int
    max_abs_diff: float | None  # features of the reloaded model vs siamgrad's backbone; None: not checked
    checked_with: str | None

    def summary(self) -> str:
        size = self.weights.stat().st_size / 1e6
        check = (f"reloaded into {self.checked_with}: features match siamgrad's backbone (max abs diff "
                 f"{self.max_abs_diff:.1e})" if self.max_abs_diff is not None else
                 f"not reloaded ({self.checked_with or 'target library not installed'})")
        return f"wrote {self.weights} ({self.tensors} tensors, {size:.1f} MB) and {self.meta.name}; {check}"


def default_format(backbone: str) -> str:
    if backbone in RESNETS:
        return "torchvision"
    if backbone.startswith("timm:"):
        return "timm"
    return "state_dict"


def _check_format(backbone: str, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    if fmt == "torchvision" and backbone not in RESNETS:
        raise ConfigError(f"backbone '{backbone}' has no torchvision model; export it with "
                          f"--format {default_format(backbone)}")
    if fmt == "timm" and not (backbone in RESNETS or backbone.startswith("timm:")):
        raise ConfigError(f"backbone '{backbone}' has no timm model; export it with --format {default_format(backbone)}")


def _is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a run's files (a checkpoint, its metrics or results; a config.yaml
    alone may be anyone's)."""
    return any((folder / name).exists() for name in RUN_FILES if name != "config.yaml")


def _is_checkpoint(path: Path) -> bool:
    """Whether the existing file ``path`` is a siamgrad checkpoint (read without running pickle code)."""
    if path.suffix not in (".pt", ".pth") or not path.is_file():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable or not a zip: not a checkpoint to protect
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def _check_out(out: str, targets: list[Path], run_dir: Path, default: Path) -> None:
    """Refuse an ``--out`` whose files would replace a checkpoint or a file of a run folder."""
    for target in targets:
        folder = target.parent.resolve()
        in_run = folder == run_dir.resolve() or _is_run_folder(folder)
        if in_run and (target.name in RUN_FILES or target.exists()):
            what = f"a file of the run folder {folder}"
            if target.suffix == ".pt" and target.name in RUN_FILES:
                what += " (a training checkpoint)"
        elif target.exists() and _is_checkpoint(target):
            what = "a siamgrad checkpoint"
        else:
            continue
        raise ConfigError(f"--out {out} would write over {target}, {what}; an export never replaces a run's "
                          f"files: leave --out out to write {default}, or give another path")


def _load_lines(meta: dict[str, Any], file_name: str) -> list[str]:
    """Python lines that build the target model and load the exported weights."""
    arch, fmt, stem = meta["architecture"], meta["format"], meta["stem"]
    loader = ("from safetensors.torch import load_file; weights = load_file(%r)" % file_name
              if file_name.endswith(".safetensors") else
              "weights = torch.load(%r, weights_only=True)" % file_name)
    cifar = ["model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)",
             "model.maxpool = torch.nn.Identity()"] if stem == "cifar" else []
    if fmt == "torchvision":
        build = ["import torch, torchvision", f"model = torchvision.models.{arch}(weights=None)", *cifar,
                 "model.fc = torch.nn.Identity()"]
    elif fmt == "timm":
        name, kwargs = timm_spec(arch)
        options = "".join(f", {k}={v!r}" for k, v in kwargs.items())
        build = ["import torch, timm", f"model = timm.create_model({name!r}, pretrained=False, num_classes=0{options})",
                 *cifar]
    else:
        build = ["import torch", "from siamgrad.models.backbones import build_backbone",
                 f"model, dim = build_backbone({arch!r}, cifar_stem={stem == 'cifar'})"]
    return [*build, loader, "model.load_state_dict(weights, strict=True); model.eval()",
            f"# input: float images [N, 3, {meta['input_size']}, {meta['input_size']}], x / 255, then "
            "(x - mean) / std per channel (see normalize)"]


def build_target(meta: dict[str, Any]) -> nn.Module:
    """The target library's model described by an export's JSON (weights not loaded)."""
    arch, fmt, stem = meta["architecture"], meta["format"], meta["stem"]
    if fmt == "state_dict":
        from siamgrad.models.backbones import build_backbone

        return build_backbone(arch, cifar_stem=stem == "cifar")[0]
    if fmt == "torchvision":
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None)
        model.fc = nn.Identity()
    else:
        import timm  # type: ignore[import-not-found]

        name, kwargs = timm_spec(arch)
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


def _library(fmt: str) -> str | None:
    """``NAME VERSION`` of the format's library, or None when it is not installed."""
    name = {"torchvision": "torchvision", "timm": "timm", "state_dict": "siamgrad"}[fmt]
    try:
        mod = __import__(name)
    except ImportError:
        return None
    return f"{name} {getattr(mod, '__version__', '')}".strip()


@torch.no_grad()
def _compare(backbone: nn.Module, target: nn.Module, size: int) -> float:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size, size, generator=gen)
    backbone.eval()
    target.eval()
    return float((backbone(x).float() - target(x).float()).abs().max())


def export_backbone(run: str, out: str | None = None, fmt: str | None = None, verify: bool = True) -> ExportResult:
    """Write the backbone of ``run`` (a run folder or checkpoint) in ``fmt``; see the module docstring."""
    backbone, state = load_backbone(run)
    cfg = from_dict(state["config"])
    arch = cfg.backbone
    fmt = fmt or default_format(arch)
    _check_format(arch, fmt)
    # ResNets: siamgrad's CIFAR stem or torchvision's own; the small networks and timm models have one stem
    stem = ("cifar" if uses_cifar_stem(cfg) else "imagenet") if arch in RESNETS else "own"
    default = run_folder(run) / "export" / f"{arch.replace(':', '-')}-{fmt}.safetensors"
    if out is None:
        path = default
    else:
        path = Path(out).expanduser()
        if path.is_dir() or str(out).endswith(("/", "\\")):
            path = path / f"{arch.replace(':', '-')}-{fmt}.safetensors"
    if path.suffix not in (".safetensors", ".pt", ".pth"):
        raise ConfigError(f"--out '{path}': the file name must end in .safetensors (default) or .pt/.pth")
    _check_out(str(out) if out is not None else str(default), [path, path.with_suffix(".json")],
               run_folder(run), default)
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    feature_dim = int(_compare_dim(backbone, int(state.get("image_size") or 32)))
    meta: dict[str, Any] = {
        "format": fmt,
        "architecture": arch,
        "stem": stem,
        "input_size": int(state.get("image_size") or 32),
        "feature_dim": feature_dim,
        "normalize": {"scale": "x / 255 (pixels in [0, 1]) first", "mean": list(state["mean"]),
                      "std": list(state["std"])},
        "classifier": "none: the model outputs the backbone's features (fc / head removed)",
        "weights": "online backbone",
        "source": {"run": str(run_folder(run)), "step": int(state.get("step", 0)),
                   "method": cfg.method.get("name"), "dataset": cfg.data.name},
        "file": path.name,
    }
    meta["load"] = _load_lines(meta, path.name)
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        blob = save(weights, metadata={"format": fmt, "architecture": arch, "stem": stem})
        atomic_write_bytes(path, lambda f: f.write(blob), option="--out")
    else:
        buf = io.BytesIO()
        torch.save(weights, buf)
        atomic_write_bytes(path, lambda f: f.write(buf.getvalue()), option="--out")
    meta_path = path.with_suffix(".json")
    atomic_write_json(meta_path, meta, option="--out")
    diff, lib = None, _library(fmt)
    if verify and lib is not None:
        target = build_target(meta)
        target.load_state_dict(_read_weights(path), strict=True)
        diff = _compare(backbone, target, meta["input_size"])
    return ExportResult(path, meta_path, len(weights), diff, lib)


@torch.no_grad()
def _compare_dim(backbone: nn.Module, size: int) -> int:
    was = backbone.training
    backbone.eval()
    dim = backbone(torch.zeros(1, 3, size, size)).shape[1]
    backbone.train(was)
    return dim


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, weights_only=True)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON written beside an export (``FILE.json`` for ``FILE.safetensors``)."""
    return json.loads(Path(path).with_suffix(".json").read_text())
