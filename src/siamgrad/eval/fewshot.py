"""Few-label evaluation: kNN and a linear probe on frozen features with 1% / 10% of the labels.

For every label fraction and seed, one class-balanced subset of the training images keeps its
labels (:func:`siamgrad.eval.splits.balanced_label_subset`); the classifiers see only those
images, and are scored on the whole evaluation split. Every encoder compared (the trained one,
a random-init one, raw pixels) gets the same subsets, so their differences are paired. The
linear probe standardizes with the statistics of all training features (no labels needed for
those); kNN uses ``k = min(k, labeled images)``.
"""

from __future__ import annotations

import statistics

import torch

from siamgrad.eval.knn import knn_accuracy
from siamgrad.eval.linear import linear_probe
from siamgrad.eval.splits import balanced_label_subset

DEFAULT_FRACTIONS = (0.01, 0.1)

#: the few-label probe's weight decay (chosen on a validation split: docs/evaluation.md)
FEWSHOT_WEIGHT_DECAY = 1e-2


def fewshot_eval(
    features: dict[str, tuple[torch.Tensor, torch.Tensor]],
    train_labels: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    seeds: tuple[int, ...] = (0, 1, 2),
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    weight_decay: float = FEWSHOT_WEIGHT_DECAY,
    max_iter: int = 100,
) -> list[dict]:
    """One row per (fraction, classifier, encoder): ``fraction``, ``labels`` (images kept per seed),
    ``per_class``, ``classifier`` (knn|linear), ``encoder`` (a key of ``features``), ``per_seed``
    (top-1 in %), ``mean`` and ``std`` (population std over the seeds)."""
    num_classes = num_classes or int(train_labels.max()) + 1
    rows: list[dict] = []
    for frac in fractions:
        subsets = [balanced_label_subset(train_labels, frac, s, num_classes) for s in seeds]
        for classifier in ("knn", "linear"):
            for name, (ftr, fte) in features.items():
                stats = (ftr.float().mean(0), ftr.float().std(0))
                accs = []
                for idx, s in zip(subsets, seeds):
                    if classifier == "knn":
                        accs.append(knn_accuracy(ftr[idx], train_labels[idx], fte, test_labels,
                                                 k=min(k, len(idx)), temperature=temperature,
                                                 num_classes=num_classes))
                    else:
                        accs.append(linear_probe(ftr[idx], train_labels[idx], fte, test_labels,
                                                 weight_decay=weight_decay, max_iter=max_iter,
                                                 num_classes=num_classes, seed=s, stats=stats).test_accuracy)
                rows.append({
                    "fraction": frac, "labels": int(len(subsets[0])),
                    "per_class": int(torch.bincount(train_labels[subsets[0]], minlength=num_classes).max()),
                    "classifier": classifier, "encoder": name, "per_seed": accs,
                    "mean": statistics.fmean(accs), "std": statistics.pstdev(accs),
                })
    return rows
