"""One typed, validated configuration for a run.

Layers, later ones winning: the defaults below, a YAML preset (``preset=NAME`` picks
``siamgrad/configs/NAME.yaml``; ``config=PATH`` any YAML file), then ``key=value`` overrides from
the command line. Dotted keys reach into sections (``optim.lr=0.1``); two shorthands exist:
``method=NAME`` sets ``method.name`` and ``data=NAME`` sets ``data.name``.

The ``method`` section holds ``name`` plus that method's own options; those are checked against
the method registry (:func:`siamgrad.methods.registry.default_options`) when the method is built.

Every problem is a :class:`~siamgrad.errors.ConfigError` with a one-line message naming the key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from siamgrad.cpu import native_bf16
from siamgrad.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


@dataclass
class DataConfig:
    # shards: a folder of WebDataset-layout tar shards (siamgrad data pack SRC DST), streamed
    name: Literal["digits", "cifar10", "cifar100", "stl10", "imagefolder", "shards"] = "digits"
    root: str | None = None
    download: bool = False
    image_size: int | None = field(default=None, metadata=_range(4))
    train_split: str | None = None  # None: "train" ("train+unlabeled" for stl10)
    test_split: str = "test"
    fraction: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    # streaming (siamgrad.data.streaming): read files batch by batch instead of holding the set in memory;
    # None: auto (always for shards, for image folders of more than 50,000 files)
    stream: bool | None = None
    workers: int | None = field(default=None, metadata=_range(0))  # reader processes; None: cores - 1 (max 16)
    decode: Literal["auto", "cpu", "device"] = "auto"  # auto: JPEGs on the GPU (nvjpeg) when training on CUDA
    shuffle_buffer: int = field(default=10_000, metadata=_range(1))  # shards: samples in the shuffle buffer
    max_bad_fraction: float = field(default=0.01, metadata=_range(0.0, 1.0))  # more unreadable images: stop
    max_side: int | None = field(default=512, metadata=_range(16))  # larger decoded images are scaled down
    eval_images: int = field(default=10_000, metadata=_range(1))  # streamed kNN sets: images per split, at most


@dataclass
class AugmentConfig:
    preset: str = "auto"  # auto: "digits" for digits, "cifar" for 32 px data, "simclr" otherwise
    n_views: int = field(default=2, metadata=_range(2))
    size: int | None = field(default=None, metadata=_range(4))  # None: the dataset's image size
    scale: list[float] | None = None  # overrides the preset's crop scale range
    blur_p: float | None = field(default=None, metadata=_range(0.0, 1.0))
    solarize_p: float | None = field(default=None, metadata=_range(0.0, 1.0))
    # multi-crop: local crops beside the n_views global ones (targets come from global crops only)
    local_crops: int = field(default=0, metadata=_range(0))
    local_size: int | None = field(default=None, metadata=_range(2))  # None: round(size * 96 / 224)
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.14])  # crop scale of the local crops
    # image mixing inside the batch: a mixed copy of every global crop (docs/methods.md, multi-crop and mixing)
    mix: Literal["none", "cutmix", "mixup"] = "none"
    mix_alpha: float = field(default=1.0, metadata=_range(0.0, lo_open=True))  # ratio ~ Beta(alpha, alpha)
    mix_p: float = field(default=1.0, metadata=_range(0.0, 1.0))  # probability that a step mixes


@dataclass
class OptimConfig:
    name: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: float = field(default=0.5, metadata=_range(0.0, lo_open=True))  # base lr, see lr_scaling
    lr_scaling: Literal["linear", "none"] = "linear"  # linear: lr * batch_size / 256
    weight_decay: float = field(default=5e-4, metadata=_range(0.0))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))
    # LARS trust coefficient: 0.001 in the official Barlow Twins, VICReg and BYOL code
    lars_eta: float = field(default=0.001, metadata=_range(0.0, lo_open=True))
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = field(default=2.0, metadata=_range(0.0))
    min_lr_ratio: float = field(default=0.0, metadata=_range(0.0, 1.0))
    clip_grad: float | None = field(default=None, metadata=_range(0.0, lo_open=True))
    probe_lr: float = field(default=0.1, metadata=_range(0.0, lo_open=True))


@dataclass
class EvalConfig:
    knn_k: int = field(default=200, metadata=_range(1))
    knn_t: float = field(default=0.1, metadata=_range(0.0, lo_open=True))
    every: int = field(default=1, metadata=_range(0))  # kNN every N epochs (0: only at the end)
    random_baseline: bool = True  # also report a random-init encoder's kNN accuracy
    online_probe: bool = True
    linear_epochs: int = field(default=100, metadata=_range(1))


@dataclass
class LogConfig:
    # Weights & Biases beside metrics.jsonl and TensorBoard (pip install 'siamgrad[wandb]');
    # WANDB_MODE=offline keeps the run on disk (wandb sync uploads it later)
    wandb: bool = False
    wandb_project: str = "siamgrad"


@dataclass
class DiagConfig:
    enabled: bool = True
    every: int = field(default=0, metadata=_range(0))  # steps between diagnostics (0: every epoch end)
    batch: int = field(default=256, metadata=_range(2))  # fixed images, fixed augmentation, every time
    gradients: bool = True  # gradient decomposition (positive/negative parts, lambda, cosine)
    collapse: Literal["stop", "warn"] = "stop"  # what a detected collapse does
    patience: int = field(default=3, metadata=_range(1))  # consecutive collapsed checks before acting
    # effective rank (RankMe) below this fraction of the width = dimensional collapse; healthy and
    # collapsed digits runs fall on either side of it (docs/results.md, collapse diagnostics)
    dim_rank_frac: float = field(default=0.1, metadata=_range(0.0, 1.0))
    report: bool = True  # write the PNG/HTML report into the run folder at the end


@dataclass
class Config:
    method: dict[str, Any] = field(
        # the CPU demo: a 128-d projector, so UniGrad's balance lambda scales down from 100 at
        # 2048-d (the negative term lambda * F u1 grows like lambda / width) to 5
        default_factory=lambda: {"name": "unigrad", "proj_hidden_dim": 512, "proj_output_dim": 128,
                                 "lam": 5.0, "momentum": 0.99}
    )
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    diag: DiagConfig = field(default_factory=DiagConfig)
    log: LogConfig = field(default_factory=LogConfig)
    backbone: str = "auto"  # auto: "small" for digits, "resnet18" otherwise
    cifar_stem: bool | None = None  # None: on for images of 64 px or less
    epochs: int = field(default=30, metadata=_range(1))
    batch_size: int = field(default=128, metadata=_range(2))  # global: split over the processes of a torchrun
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu
    # auto: bf16 on cuda, fp32 on cpu; bf16_if_native: bf16 on cuda and on CPUs with native bf16
    precision: Literal["auto", "fp32", "bf16", "bf16_if_native"] = "auto"
    channels_last: bool | None = None  # None: on for cuda
    compile: bool = False
    # several processes (torchrun): normalize batch-norm layers (backbone and heads) over the global
    # batch, so N processes with batch_size/N each train as one process with batch_size
    sync_bn: bool = False
    threads: int | None = field(default=None, metadata=_range(1))
    out_dir: str = "runs"
    run_name: str | None = None
    resume: bool | Literal["auto"] = "auto"  # auto: continue if the run folder has a checkpoint
    stop_after: int | None = field(default=None, metadata=_range(1))  # stop this process after N global steps
    checkpoint_every: int = field(default=0, metadata=_range(0))  # also checkpoint every N steps (0: per epoch)
    log_every: int = field(default=10, metadata=_range(1))
    progress: bool = True
    on_nan: Literal["stop", "skip"] = "stop"
    max_bad_steps: int = field(default=10, metadata=_range(1))


SHORTHANDS = {"method": "method.name", "data": "data.name"}

# method options that keep their value when the method changes (projector widths): the defaults
# size the projector for the CPU demo, and `method=byol` alone should not switch to 8192-d heads.
COMMON_METHOD_OPTIONS = ("proj_hidden_dim", "proj_output_dim")


# --------------------------------------------------------------------------------------------
# type checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"list of {_type_name(inner)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` checked against (and lightly converted to) the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(
            f"{key}: {value!r} is not valid; choose one of: {', '.join(map(str, choices))}"
        )
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: null is not allowed; expected {_type_name(tp)}")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list like [0.2, 1.0], got {value!r}")
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, str):
        # YAML 1.1 reads "1e-3" or "1e30" as strings: numbers in any Python float notation are numbers
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            v = float(value)
            if v != v or v in (float("inf"), float("-inf")):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return v
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str) and value != "":
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _check_range(key: str, value: Any, meta: typing.Mapping) -> None:
    if value is None or "lo" not in meta:
        return
    vals = value if isinstance(value, list) else [value]
    for v in vals:
        lo, hi = meta["lo"], meta["hi"]
        if lo is not None and (v <= lo if meta["lo_open"] else v < lo):
            bound = f"> {lo}" if meta["lo_open"] else f">= {lo}"
            raise ConfigError(f"{key}: {v!r} is out of range; it must be {bound}")
        if hi is not None and v > hi:
            raise ConfigError(f"{key}: {v!r} is out of range; it must be <= {hi}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply(obj: Any, key: str, value: Any, full_key: str) -> None:
    """Set dotted ``key`` on the dataclass ``obj`` with checking."""
    head, _, rest = key.partition(".")
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    if head not in names:
        raise ConfigError(
            f"unknown config key '{full_key}'; valid keys here: {', '.join(names)}"
        )
    current = getattr(obj, head)
    if head == "method":
        if not rest:
            if isinstance(value, dict):
                for k, v in value.items():
                    _apply(obj, f"method.{k}", v, f"method.{k}")
                return
            raise ConfigError(f"{full_key}: expected a method name or a mapping, got {value!r}")
        if "." in rest:
            raise ConfigError(f"unknown config key '{full_key}'; method options are flat (method.OPTION)")
        if rest == "name":
            if not isinstance(value, str):
                raise ConfigError(f"method.name: expected a method name, got {value!r}")
            if value != current.get("name"):
                # options of another method do not carry over, projector widths do
                for k in [k for k in current if k not in COMMON_METHOD_OPTIONS]:
                    del current[k]
        current[rest] = value
        return
    if dataclasses.is_dataclass(current):
        if not rest:
            if not isinstance(value, dict):
                raise ConfigError(f"{full_key}: expected a mapping of options, got {value!r}")
            for k, v in value.items():
                _apply(current, str(k), v, f"{full_key}.{k}")
            return
        _apply(current, rest, value, full_key)
        return
    if rest:
        raise ConfigError(f"unknown config key '{full_key}'; '{head}' has no sub-keys")
    f = next(f for f in dataclasses.fields(obj) if f.name == head)
    v = _coerce(full_key, value, hints[head])
    _check_range(full_key, v, f.metadata)
    setattr(obj, head, v)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """``["optim.lr=0.1", "method=byol"]`` -> ``[("optim.lr", 0.1), ("method.name", "byol")]``."""
    out = []
    for a in args:
        if "=" not in a:
            raise ConfigError(f"bad argument {a!r}; settings are written key=value (e.g. epochs=10)")
        k, _, v = a.partition("=")
        k = k.strip().lstrip("-").replace("-", "_")
        if not k:
            raise ConfigError(f"bad argument {a!r}; the key before '=' is empty")
        out.append((SHORTHANDS.get(k, k), _parse_value(v)))
    return out


def load_yaml(path: str | Path) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found; give an existing YAML file (config=PATH)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        tag = re.search(r"constructor for the tag '([^']+)'", str(getattr(e, "problem", "") or ""))
        if isinstance(e, yaml.constructor.ConstructorError) and tag:
            shown = tag[1].replace("tag:yaml.org,2002:", "!!")
            raise ConfigError(f"config file '{p}' uses the YAML tag {shown}{where}, which is refused: configs are "
                              "read with safe loading only (plain values, lists and mappings); remove the tag") from None
        raise ConfigError(f"config file '{p}' is not valid YAML{where}; fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys to values")
    return data


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    p = PRESET_DIR / f"{name}.yaml"
    if not p.is_file():
        raise ConfigError(
            f"unknown preset '{name}'; choose one of: {', '.join(available_presets())}"
        )
    return p


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "method" and not key.startswith("method."):
            out.extend(_flatten(v, key + "."))
        elif key == "method" and isinstance(v, dict):
            # name first, so options are not cleared by a later name
            if "name" in v:
                out.append(("method.name", v["name"]))
            out.extend((f"method.{mk}", mv) for mk, mv in v.items() if mk != "name")
        else:
            out.append((SHORTHANDS.get(key, key), v))
    return out


def build_config(overrides: list[str] | None = None, base: dict | None = None) -> Config:
    """Defaults <- ``base`` dict <- preset/config files named in overrides <- overrides."""
    cfg = Config()
    pairs = parse_overrides(overrides or [])
    layers: list[tuple[str, Any]] = []
    if base:
        layers.extend(_flatten(base))
    for k, v in pairs:
        if k in ("preset", "config"):
            if not isinstance(v, str):
                raise ConfigError(f"{k}: expected a name or path, got {v!r}")
            path = preset_path(v) if k == "preset" else Path(v)
            layers.extend(_flatten(load_yaml(path)))
    layers.extend((k, v) for k, v in pairs if k not in ("preset", "config"))
    for k, v in layers:
        _apply(cfg, k, v, k)
    check_data_root(cfg)
    check_augment(cfg)
    return cfg


def check_data_root(cfg: Config) -> None:
    """A ``data.root`` the chosen dataset does not read is an error, not silently ignored (one would
    believe one trained on one's own files while the embedded digits were used)."""
    if cfg.data.name == "digits" and cfg.data.root is not None:
        raise ConfigError(f"data.root={cfg.data.root} is set but data.name is digits, the embedded dataset, which "
                          "reads no files; add data=cifar10, cifar100, stl10, imagefolder or shards to use that "
                          "folder, or drop data.root")


# image sizes of the datasets whose size is known before reading them
_DATASET_SIZES = {"cifar10": 32, "cifar100": 32, "stl10": 96}


def global_crop_size(cfg: Config) -> int | None:
    """The side of the global crops when known from the config alone (else None: read from the data)."""
    return cfg.augment.size or cfg.data.image_size or _DATASET_SIZES.get(cfg.data.name)


def check_augment(cfg: Config, size: int | None = None) -> None:
    """One-line errors for multi-crop and mixing settings that cannot work together.

    ``size``: the global crop side when known (the data's image size); else from the config.
    """
    a = cfg.augment
    scale = a.local_scale
    if len(scale) != 2 or not (0.0 < scale[0] <= scale[1] <= 1.0):
        raise ConfigError(f"augment.local_scale={a.local_scale} must be [min, max] with 0 < min <= max <= 1; "
                          "e.g. [0.05, 0.14]")
    size = size or global_crop_size(cfg)
    if a.local_crops and a.local_size is not None and size is not None and a.local_size >= size:
        raise ConfigError(f"augment.local_size={a.local_size} is not smaller than the global crops ({size} px); "
                          f"give augment.local_size below {size}")


def from_dict(d: dict) -> Config:
    cfg = Config()
    for k, v in _flatten(d):
        _apply(cfg, k, v, k)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config | dict) -> str:
    d = to_dict(cfg) if isinstance(cfg, Config) else cfg
    return yaml.safe_dump(d, sort_keys=False)


# --------------------------------------------------------------------------------------------
# resolving "auto" settings


def available_devices() -> list[str]:
    """The ``device=`` values this machine can run on: ``cpu``, ``cuda`` and ``cuda:N`` for every
    visible GPU, ``mps`` where PyTorch's Apple GPU backend works."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def check_device(name: str) -> str:
    """``name`` when this machine has that device, else a one-line :class:`ConfigError` naming the
    devices it has (torch would fail later with a traceback, or at the first tensor moved)."""
    have = available_devices()
    if name in have:
        return name
    if name.startswith("cuda") and not torch.cuda.is_available():
        why = "cuda was asked for but no GPU is visible"
    elif name.startswith("cuda:") and name[5:].isdigit():
        why = f"there is no GPU {name[5:]} ({torch.cuda.device_count()} visible)"
    elif name == "mps":
        why = "PyTorch's MPS backend (Apple GPUs) is not available here"
    else:
        why = f"'{name}' is not a device"
    raise ConfigError(f"device={name}: {why}; devices on this machine: {', '.join(have)}; use one of them "
                      "(or device=auto)")


def resolve(cfg: Config) -> Config:
    """Return a copy with every ``auto``/``None`` setting replaced by its concrete value."""
    cfg = from_dict(to_dict(cfg))
    check_data_root(cfg)
    check_augment(cfg)
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        cfg.device = check_device(cfg.device)
    on_gpu = cfg.device.startswith("cuda")
    if cfg.precision == "auto":
        cfg.precision = "bf16" if on_gpu else "fp32"
    elif cfg.precision == "bf16_if_native":
        cfg.precision = "bf16" if on_gpu or native_bf16() else "fp32"
    if cfg.channels_last is None:
        cfg.channels_last = on_gpu
    if cfg.backbone == "auto":
        cfg.backbone = "small" if cfg.data.name == "digits" else "resnet18"
    if cfg.data.train_split is None:
        cfg.data.train_split = "train+unlabeled" if cfg.data.name == "stl10" else "train"
    if cfg.augment.preset == "auto":
        cfg.augment.preset = {"digits": "digits", "cifar10": "cifar", "cifar100": "cifar"}.get(
            cfg.data.name, "simclr"
        )
    return cfg


def uses_cifar_stem(cfg: Config) -> bool:
    """Whether the backbone gets the CIFAR stem: as set, else for images of 64 px or less."""
    if cfg.cifar_stem is not None:
        return cfg.cifar_stem
    size = cfg.augment.size or cfg.data.image_size or (16 if cfg.data.name == "digits" else 32)
    return size <= 64 or cfg.data.name in ("cifar10", "cifar100", "stl10", "digits")
