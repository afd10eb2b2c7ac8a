"""kNN evaluation on frozen features (the Wu et al. 2018 protocol used by solo-learn and lightly).

Cosine similarity of l2-normalized features; the ``k`` most similar training samples vote with
weight ``exp(sim / T)`` (k = 200, T = 0.1 by default); top-1 accuracy on the evaluation split.

The eval package: :mod:`~siamgrad.eval.features` (frozen features, raw-pixel baseline),
this module, :mod:`~siamgrad.eval.linear` (linear probe), :mod:`~siamgrad.eval.fewshot`
(few labels), :mod:`~siamgrad.eval.finetune` (whole encoder + linear head) and
:mod:`~siamgrad.eval.checkpoint` (``siamgrad eval`` on a run). The names re-exported here keep
``from siamgrad.eval.knn import extract_features, load_backbone, linear_probe`` working.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from siamgrad.eval.features import extract_features, load_backbone, raw_pixel_features
from siamgrad.eval.linear import LinearProbeResult, linear_probe

__all__ = ["knn_predict", "knn_accuracy", "extract_features", "load_backbone", "raw_pixel_features",
           "linear_probe", "LinearProbeResult"]


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predicted labels of ``test_features`` by similarity-weighted kNN over ``train_features``.

    Cosine similarity on l2-normalized features, each neighbour's vote weighted by
    ``exp(similarity / temperature)`` (the protocol of docs/evaluation.md):

    >>> bank = torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]])
    >>> knn_predict(bank, torch.tensor([0, 0, 1, 1]), torch.tensor([[2.0, 0.0], [-3.0, 0.5]]), k=2).tolist()
    [0, 1]
    """
    num_classes = num_classes or int(train_labels.max()) + 1
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, len(train))
    preds = []
    for i in range(0, len(test_features), chunk):
        q = F.normalize(test_features[i : i + chunk].float(), dim=1)
        sim = q @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(q), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(train_features, train_labels, test_features, test_labels, **kw) -> float:
    """Top-1 accuracy (in %) of :func:`knn_predict`."""
    pred = knn_predict(train_features, train_labels, test_features, **kw)
    return 100.0 * (pred == test_labels).float().mean().item()
