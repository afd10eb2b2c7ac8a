"""``siamgrad eval knn|linear|fewshot|finetune RUN``: evaluate a run's encoder by one protocol.

The encoder is the online backbone of the run's checkpoint (``latest.pt`` of a run folder, or
the ``.pt`` given). The labeled sets are the run's dataset: its ``train`` split (at most
``data.eval_images`` images for streamed data) and ``data.test_split``; ``split="val"``
evaluates instead on a validation split carved from the training images (20% of every class,
seeded; :func:`siamgrad.eval.splits.validation_split`), so that settings are chosen without the
test split. Beside the trained encoder, ``baselines=True`` scores a random-init encoder of the
same architecture (seeded by the run's seed) and, for the frozen-feature protocols, raw pixels.

Every evaluation is merged into the run folder's ``results.json`` under ``eval`` ->
``PROTOCOL`` (``PROTOCOL@val`` on the validation split), with the command that reproduces it;
the report shows them. A results.json that is not valid JSON is kept beside the new one
(``results.json.damaged-<time>``) with a one-line warning. docs/evaluation.md describes every
protocol.
"""

from __future__ import annotations

import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from siamgrad.checkpoint import config_for_checkpoint
from siamgrad.checkpoint import merge_results as merge_into_results
from siamgrad.config import Config, DataConfig, check_device, uses_cifar_stem
from siamgrad.cpu import cap_threads
from siamgrad.data.in_memory import ImageDataset
from siamgrad.errors import ConfigError, DataError, OneLineWarning, SiamgradError
from siamgrad.eval.features import extract_features, load_backbone
from siamgrad.eval.finetune import FinetuneSettings, finetune, finetune_augment
from siamgrad.eval.knn import knn_predict
from siamgrad.eval.protocols import PROTOCOLS as FROZEN
from siamgrad.eval.protocols import EvalSets, Settings, encoder_features
from siamgrad.eval.splits import validation_split
from siamgrad.models.backbones import build_backbone

PROTOCOLS = ("knn", "linear", "fewshot", "finetune")
SPLITS = ("test", "val")
VAL_FRACTION = 0.2


def run_folder(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint path or run folder."""
    p = Path(checkpoint).expanduser()
    return p if p.is_dir() else p.parent


def random_init_backbone(cfg: Config) -> nn.Module:
    """A freshly initialized backbone of the run's architecture (seeded by the run's seed)."""
    torch.manual_seed(cfg.seed)
    net, _ = build_backbone(cfg.backbone, cifar_stem=uses_cifar_stem(cfg))
    return net


def why_no_labeled_sets(d: DataConfig) -> str:
    """What the data of ``d`` lacks for evaluation (labels, a test split), in one sentence."""
    from siamgrad.data.sources import open_source

    where = f"{d.name} data at {d.root}" if d.root else f"{d.name} data"
    if d.name in ("imagefolder", "shards"):
        try:
            train = open_source(d.name, d.root, "train")
        except SiamgradError as e:
            return f"the training images of {where} could not be opened ({e})"
        if train.labels is None:
            return (f"the images of {where} have no class labels (no class subfolders); evaluation needs "
                    f"labeled train and '{d.test_split}' splits")
        try:
            test = open_source(d.name, d.root, d.test_split)
        except SiamgradError as e:
            return (f"{where} has class labels but no '{d.test_split}' split to evaluate on ({e}); add one or "
                    "set data.test_split")
        if test.labels is None:
            return f"the '{d.test_split}' split of {where} has no class labels (no class subfolders)"
    return f"{where} has no labeled train and '{d.test_split}' splits to evaluate on"


def labeled_sets(cfg: Config, state: dict) -> tuple[ImageDataset, ImageDataset, int]:
    """``(train, test, size)``: the labeled sets the trainer evaluated the run on
    (:func:`siamgrad.data.sets.load_data`) and the encoder's input size."""
    from siamgrad.data.sets import load_data

    sets = load_data(cfg.data, seed=cfg.seed, size=state.get("image_size") or cfg.augment.size)
    if sets.no_eval is not None:  # labeled, but nothing to tell apart
        raise DataError(f"{sets.no_eval}, so this run cannot be evaluated; add images of other classes")
    if sets.knn_train is None or sets.knn_test is None:
        raise DataError(why_no_labeled_sets(cfg.data) + "; point data.root to a dataset with class labels and a test split")
    return sets.knn_train, sets.knn_test, sets.image_size


def eval_split(train: ImageDataset, test: ImageDataset, split: str, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """``(train, evaluation set)``: the test split, or a validation split carved from ``train``."""
    if split == "test":
        return train, test
    if split != "val":
        raise ConfigError(f"split '{split}' is not valid; choose one of: {', '.join(SPLITS)}")
    tr_idx, val_idx = validation_split(train.labels, VAL_FRACTION, seed)
    return train.subset(tr_idx), train.subset(val_idx)


def merge_results(run_dir: Path, key: str, entry: dict) -> Path:
    """Put ``entry`` under ``eval`` -> ``key`` of ``run_dir/results.json`` (atomic; other keys kept:
    :func:`siamgrad.checkpoint.merge_results`, the file's one writer, which training uses too).

    A damaged results.json (not JSON) is kept as ``results.json.damaged-<time>`` beside the new one,
    with a one-line warning: it may hold the training summary, which no evaluation can rewrite."""
    path, kept = merge_into_results(run_dir, {"eval": {key: entry}})
    if kept is not None:
        warnings.warn(f"{path} is damaged (not a JSON object); kept it as {kept.name} and wrote a new results.json with this "
                      "evaluation (the training summary is in the kept file; `siamgrad train` with the run's "
                      "settings writes it again)", OneLineWarning, stacklevel=2)
    return path


def _command(protocol: str, checkpoint: str, settings: list[str], split: str, seeds: int | None,
             epochs: int | None, baselines: bool, fractions: tuple[float, ...] | None = None) -> str:
    parts = ["siamgrad", "eval", protocol, checkpoint, *settings]
    if split != "test":
        parts += ["--split", split]
    if seeds is not None:
        parts += ["--seeds", str(seeds)]
    if fractions is not None:
        parts += ["--fractions", ",".join(f"{f:g}" for f in fractions)]
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    if not baselines:
        parts.append("--no-baselines")
    return " ".join(shlex.quote(p) for p in parts)


def _device(settings: list[str]) -> torch.device:
    """``device=`` among the settings, else CUDA when present, else the CPU."""
    asked = [s.split("=", 1)[1] for s in settings if s.startswith("device=")]
    if asked and asked[-1] not in ("", "auto"):
        return torch.device(check_device(asked[-1]))
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _checkpoint_and_sets(checkpoint: str, settings: list[str], split: str, command: str, split_seed: int | None = None
                         ) -> tuple[nn.Module, dict, Config, ImageDataset, ImageDataset, int, torch.device]:
    """The checkpoint's backbone, state and config (``settings`` applied), its labeled
    ``(train, evaluation)`` sets for ``split`` (a validation split drawn with ``split_seed``, by
    default the run's seed), the input size and the device."""
    device = _device(settings)
    backbone, state = load_backbone(checkpoint, device=str(device))
    cfg = config_for_checkpoint(state, [s for s in settings if not s.startswith("device=")], command=command,
                                applies=("data", "eval", "augment", "seed", "precision", "channels_last", "threads"))
    if cfg.threads:
        threads, note = cap_threads(cfg.threads)
        if note is not None and any(s.startswith("threads=") for s in settings):  # training warned of its own
            warnings.warn(note, OneLineWarning, stacklevel=2)
        torch.set_num_threads(threads)
    train_all, test_all, size = labeled_sets(cfg, state)
    train, test = eval_split(train_all, test_all, split, cfg.seed if split_seed is None else split_seed)
    return backbone, state, cfg, train, test, size, device


def knn_correct(checkpoint: str, settings: list[str] | None = None, *, split: str = "test",
                split_seed: int | None = None) -> torch.Tensor:
    """Per evaluation image, whether the checkpoint's kNN classifies it right (bool, in the split's order).

    The same protocol as ``evaluate_checkpoint("knn", ...)``: its mean is that accuracy. Per-image
    outcomes of several seeds split their spread of accuracy
    (:func:`siamgrad.experiments.stats.per_image_split`); on ``split="val"`` give them one
    ``split_seed``, since each run's own seed draws its own validation images.
    """
    backbone, state, cfg, train, test, size, device = _checkpoint_and_sets(checkpoint, list(settings or []), split,
                                                                           "eval knn", split_seed)
    mean, std = tuple(state["mean"]), tuple(state["std"])
    ftr = extract_features(backbone, train.images, mean, std, size=size, device=device)
    fte = extract_features(backbone, test.images, mean, std, size=size, device=device)
    pred = knn_predict(ftr, train.labels, fte, k=cfg.eval.knn_k, temperature=cfg.eval.knn_t,
                       num_classes=len(train.classes))
    return pred == test.labels


def evaluate_checkpoint(protocol: str, checkpoint: str, settings: list[str] | None = None, *,
                        split: str = "test", seeds: int | None = None, epochs: int | None = None,
                        baselines: bool = True, write: bool = True, fractions: tuple[float, ...] | None = None,
                        say: Callable[[str], None] | None = None) -> dict:
    """Evaluate a checkpoint's backbone by ``protocol``; the figures as a dict (accuracies in %).

    ``settings`` (``key=value``) override the checkpoint's config, e.g. ``data.root=...`` when the
    data moved, or ``eval.knn_k=20``. ``seeds``: few-label draws (default 3); ``epochs``:
    fine-tuning epochs (default 10); ``fractions``: few-label fractions (default 1% and 10%). With
    ``write``, the figures are merged into the run's results.json.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol '{protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    settings = list(settings or [])
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    backbone, state, cfg, train, test, size, device = _checkpoint_and_sets(checkpoint, settings, split, f"eval {protocol}")
    mean, std = tuple(state["mean"]), tuple(state["std"])
    t0 = time.monotonic()
    out: dict[str, Any] = {"checkpoint_step": int(state.get("step", 0)), "split": split,
                           "train_images": len(train), "eval_images": len(test)}

    encoders: dict[str, nn.Module] = {"trained": backbone}
    if baselines:
        encoders["random_init"] = random_init_backbone(cfg).to(device)

    if protocol in FROZEN:
        sets = EvalSets(train, test, mean, std, size, split)
        feats = encoder_features(encoders, sets, raw_pixels=baselines, device=device)
        out.update(FROZEN[protocol](feats, sets, Settings.of(cfg, fewshot_seeds=seeds, fractions=fractions)))
    else:
        s = FinetuneSettings(epochs=epochs or FinetuneSettings.epochs, seed=cfg.seed)
        aug = finetune_augment(cfg.augment.preset, size, mean, std,
                               scale=tuple(cfg.augment.scale) if cfg.augment.scale else None)
        amp = torch.bfloat16 if cfg.precision == "bf16" else None
        dim = int(extract_features(backbone, train.images[:2], mean, std, size=size, device=device).shape[1])
        for name, net in encoders.items():
            say(f"fine-tuning the {name.replace('_', '-')} encoder: {s.epochs} epochs on {len(train)} labeled images")
            res = finetune(net, dim, train, test, aug, mean=mean, std=std, size=size, settings=s, device=device,
                           autocast_dtype=amp, channels_last=bool(cfg.channels_last), say=say)
            if name == "trained":
                out.update({k: v for k, v in res.items() if k not in ("test_top1", "train_top1")})
                out["finetune_top1"] = res["test_top1"]
                out["finetune_train_top1"] = res["train_top1"]
            else:
                out["finetune_top1_random_init"] = res["test_top1"]
        out["augment"] = f"{cfg.augment.preset} preset crop {aug.recipes[0].scale} + flip p={aug.recipes[0].flip_p}, no colour"
    out["seconds"] = round(time.monotonic() - t0, 1)
    if write:
        entry = {"protocol": protocol, "checkpoint": str(Path(checkpoint)),
                 "command": _command(protocol, checkpoint, settings, split, seeds, epochs, baselines, fractions),
                 "time": time.strftime("%Y-%m-%d %H:%M:%S"), **out}
        key = protocol if split == "test" else f"{protocol}@{split}"
        out["results_file"] = str(merge_results(run_folder(checkpoint), key, entry))
    return out


_ENCODER_NAMES = {"trained": "trained", "random_init": "random-init", "raw_pixels": "raw pixels"}


def format_fewshot_rows(rows: list[dict]) -> list[str]:
    """The few-label rows as a text table: one line per (fraction, classifier), encoders as columns."""
    encoders = list(dict.fromkeys(r["encoder"] for r in rows))
    header = f"{'labels':<18} {'classifier':<10} " + " ".join(f"{_ENCODER_NAMES.get(e, e):>15}" for e in encoders)
    lines = [header]
    keys = list(dict.fromkeys((r["fraction"], r["classifier"]) for r in rows))
    for frac, clf in keys:
        cells = {r["encoder"]: r for r in rows if r["fraction"] == frac and r["classifier"] == clf}
        first = next(iter(cells.values()))
        what = f"{frac * 100:g}% ({first['labels']}, {first['per_class']}/cl)"
        lines.append(f"{what:<18} {clf:<10} " + " ".join(
            f"{cells[e]['mean']:>8.2f} ± {cells[e]['std']:<4.2f}" if e in cells else f"{'':>15}" for e in encoders))
    return lines


def format_result(protocol: str, res: dict) -> str:
    """What ``siamgrad eval`` prints: ``key: value`` lines (accuracies in %), the few-label table."""
    lines = []
    for k, v in res.items():
        if k in ("rows", "results_file"):
            continue
        if isinstance(v, float) and ("top1" in k):
            lines.append(f"{k}: {v:.2f}%")
        elif isinstance(v, (list, tuple)):
            lines.append(f"{k}: {', '.join(map(str, v))}")
        else:
            lines.append(f"{k}: {v}")
    if protocol == "fewshot" and res.get("rows"):
        lines.append(f"few labels, top-1 on the {res['split']} split (mean ± std over {len(res['seeds'])} seeds):")
        lines += ["  " + line for line in format_fewshot_rows(res["rows"])]
    if res.get("results_file"):
        lines.append(f"written to {res['results_file']} (siamgrad analyze RUN shows it in report.html)")
    return "\n".join(lines)
