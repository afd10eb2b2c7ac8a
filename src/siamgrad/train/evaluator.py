"""Evaluation during pretraining: kNN on the run's labeled sets, the online probe's accuracy and
the baselines a trained encoder is read against (raw pixels, the run's own random initialization).

Only rank 0 evaluates. Conventions (k, temperature, cosine similarity): docs/evaluation.md.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from siamgrad.config import Config
from siamgrad.data.in_memory import ImageDataset
from siamgrad.eval.knn import extract_features, knn_accuracy, raw_pixel_features
from siamgrad.eval.protocols import PROTOCOLS, EvalSets, Settings, encoder_features
from siamgrad.train.probe import OnlineProbe


class RunEvaluator:
    """kNN top-1 of a backbone on ``(knn_train, knn_test)``; ``available`` is False without labeled sets."""

    def __init__(self, cfg: Config, knn_train: ImageDataset | None, knn_test: ImageDataset | None, *,
                 mean: tuple[float, ...], std: tuple[float, ...], size: int, device: torch.device,
                 autocast_dtype: torch.dtype | None):
        self.cfg = cfg
        self.knn_train, self.knn_test = knn_train, knn_test
        self.mean, self.std = mean, std
        self.features_kw = dict(size=size, device=device, channels_last=bool(cfg.channels_last),
                                autocast_dtype=autocast_dtype)
        self.test_features: torch.Tensor | None = None  # of the last kNN evaluation, for the probe
        self.baselines: dict[str, float | None] = {"random_knn": None, "raw_pixel_knn": None}
        self.best_knn: float | None = None

    @property
    def available(self) -> bool:
        return self.knn_train is not None

    def _knn(self, train_features: torch.Tensor, test_features: torch.Tensor) -> float:
        e = self.cfg.eval
        return knn_accuracy(train_features, self.knn_train.labels, test_features, self.knn_test.labels,
                            k=e.knn_k, temperature=e.knn_t, num_classes=len(self.knn_train.classes))

    def knn(self, backbone: nn.Module) -> float | None:
        if not self.available:
            return None
        ftr = extract_features(backbone, self.knn_train.images, self.mean, self.std, **self.features_kw)
        fte = extract_features(backbone, self.knn_test.images, self.mean, self.std, **self.features_kw)
        self.test_features = fte
        return self._knn(ftr, fte)

    def probe_accuracy(self, probe: OnlineProbe | None) -> float | None:
        if probe is None or self.test_features is None:
            return None
        return probe.accuracy(self.test_features, self.knn_test.labels)

    def measure_baselines(self, initial_backbone: nn.Module) -> None:
        """Raw pixels' kNN and, with ``eval.random_baseline``, the untrained backbone's (step 0)."""
        if not self.available:
            return
        raw = lambda ds: raw_pixel_features(ds.images, self.mean, self.std)  # noqa: E731
        self.baselines["raw_pixel_knn"] = self._knn(raw(self.knn_train), raw(self.knn_test))
        if self.cfg.eval.random_baseline:
            self.baselines["random_knn"] = self.knn(initial_backbone)

    def protocols(self, backbone: nn.Module, random_init: nn.Module, step: int,
                  fractions: tuple[float, ...] = (0.01,)) -> dict[str, dict[str, Any]]:
        """The few-label and linear-probe evaluations of ``backbone`` beside ``random_init`` and raw
        pixels, on the labeled sets already in memory: ``{"fewshot": entry, "linear": entry}`` in
        the form ``siamgrad eval`` merges into results.json (so neither that command nor the end
        of the run computes them again for this step)."""
        sets = EvalSets(self.knn_train, self.knn_test, self.mean, self.std, self.features_kw["size"])
        # fp32 and the eval layout, as siamgrad eval extracts them: the same figures from either
        feats = encoder_features({"trained": backbone, "random_init": random_init}, sets, raw_pixels=True,
                                 device=self.features_kw["device"])
        common = {"checkpoint_step": step, "split": "test", "train_images": len(sets.train),
                  "eval_images": len(sets.test), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        s = Settings.of(self.cfg, fractions=fractions)
        return {name: {"protocol": name, **common, **PROTOCOLS[name](feats, sets, s)} for name in ("fewshot", "linear")}

    def record(self, acc: float) -> bool:
        """Note a kNN accuracy; True when it is the best so far."""
        if self.best_knn is None or acc > self.best_knn:
            self.best_knn = acc
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best_knn": self.best_knn, "baselines": dict(self.baselines)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_knn = state.get("best_knn")
        self.baselines.update(state.get("baselines") or {})
