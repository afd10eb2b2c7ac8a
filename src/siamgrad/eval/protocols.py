"""The frozen-feature evaluation protocols as a table of functions over features already extracted.

Every caller (the trainer at the end of a run, ``siamgrad eval``, the grids) first extracts the
features of each encoder it scores (:func:`encoder_features`: the trained backbone, a random-init
one, raw pixels) on the labeled train and evaluation sets, then calls a protocol of
:data:`PROTOCOLS` on them. A protocol returns the figures under the names results.json keeps
(``knn_top1``, ``linear_test_top1``, ... with ``_random_init`` / ``_raw_pixels`` for the baselines).
docs/evaluation.md describes each.

>>> import torch
>>> from siamgrad.data.in_memory import ImageDataset
>>> labels = torch.tensor([0, 0, 1, 1])
>>> x = torch.tensor([[[[0]]], [[[10]]], [[[240]]], [[[250]]]], dtype=torch.uint8).expand(4, 3, 2, 2).contiguous()
>>> sets = EvalSets(ImageDataset(x, labels, ["a", "b"]), ImageDataset(x, labels, ["a", "b"]), (0.5,) * 3, (0.25,) * 3)
>>> feats = encoder_features({}, sets, raw_pixels=True)
>>> PROTOCOLS["knn"](feats, sets, Settings(knn_k=2))
{'knn_top1_raw_pixels': 100.0}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from siamgrad.data.in_memory import ImageDataset
from siamgrad.eval.features import extract_features, raw_pixel_features
from siamgrad.eval.fewshot import DEFAULT_FRACTIONS, fewshot_eval
from siamgrad.eval.knn import knn_accuracy
from siamgrad.eval.linear import linear_probe

Features = dict[str, tuple[torch.Tensor, torch.Tensor]]  # encoder -> (train features, evaluation features)
SUFFIX = {"trained": "", "random_init": "_random_init", "raw_pixels": "_raw_pixels"}


@dataclass(frozen=True)
class EvalSets:
    """The labeled train set, the set scored (test or validation split) and the training set's
    normalization, at the encoder's input size."""

    train: ImageDataset
    test: ImageDataset
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int | None = None
    split: str = "test"


@dataclass(frozen=True)
class Settings:
    """What the protocols read of a run's config (``eval.*`` and the seed), and the few-label draws."""

    knn_k: int = 200
    knn_t: float = 0.1
    linear_epochs: int = 100
    seed: int = 0
    fewshot_seeds: int = 3
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS

    @classmethod
    def of(cls, cfg: Any, **kw: Any) -> Settings:
        return cls(knn_k=cfg.eval.knn_k, knn_t=cfg.eval.knn_t, linear_epochs=cfg.eval.linear_epochs, seed=cfg.seed,
                   **{k: v for k, v in kw.items() if v is not None})


def encoder_features(encoders: dict[str, nn.Module], sets: EvalSets, *, raw_pixels: bool = False,
                     **extract: Any) -> Features:
    """Each encoder's features of both sets (``extract``: :func:`extract_features`' options), and the raw
    pixels' with ``raw_pixels``."""
    feats = {name: (extract_features(net, sets.train.images, sets.mean, sets.std, size=sets.size, **extract),
                    extract_features(net, sets.test.images, sets.mean, sets.std, size=sets.size, **extract))
             for name, net in encoders.items()}
    if raw_pixels:
        feats["raw_pixels"] = (raw_pixel_features(sets.train.images, sets.mean, sets.std),
                               raw_pixel_features(sets.test.images, sets.mean, sets.std))
    return feats


def knn(feats: Features, sets: EvalSets, s: Settings) -> dict[str, Any]:
    n = len(sets.train.classes)
    return {"knn_top1" + SUFFIX[name]: knn_accuracy(ftr, sets.train.labels, fte, sets.test.labels, k=s.knn_k,
                                                    temperature=s.knn_t, num_classes=n)
            for name, (ftr, fte) in feats.items()}


def linear(feats: Features, sets: EvalSets, s: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (ftr, fte) in feats.items():
        res = linear_probe(ftr, sets.train.labels, fte, sets.test.labels, num_classes=len(sets.train.classes),
                           max_iter=s.linear_epochs, seed=s.seed)
        if name == "trained":
            out["linear_train_top1"] = res.train_accuracy
        out[f"linear_{sets.split}_top1" + SUFFIX[name]] = res.test_accuracy  # named by the split scored
    return out


def fewshot(feats: Features, sets: EvalSets, s: Settings) -> dict[str, Any]:
    seeds = [s.seed + i for i in range(s.fewshot_seeds)]
    return {"seeds": seeds, "fractions": list(s.fractions),
            "rows": fewshot_eval(feats, sets.train.labels, sets.test.labels, fractions=tuple(s.fractions),
                                 seeds=tuple(seeds), k=s.knn_k, temperature=s.knn_t,
                                 num_classes=len(sets.train.classes))}


PROTOCOLS: dict[str, Callable[[Features, EvalSets, Settings], dict[str, Any]]] = {
    "knn": knn, "linear": linear, "fewshot": fewshot,
}
