"""Evaluation on frozen features: kNN (the Wu et al. 2018 protocol) and a linear probe.

kNN: cosine similarity of l2-normalized features, the ``k`` most similar training samples
vote with weight ``exp(sim / T)`` (k = 200, T = 0.1 by default); top-1 accuracy on the test split.
Linear probe: a linear classifier on frozen, standardized features, trained to convergence with
full-batch L-BFGS (deterministic, no learning rate to tune), top-1 on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from siamgrad.augment.multiview import normalize_only


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    size: int | None = None,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Backbone features (float32, on CPU) of uint8 ``images`` [N, 3, H, W], in eval mode."""
    was_training = backbone.training
    backbone.eval()
    device = torch.device(device)
    size = size or images.shape[-1]
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = normalize_only(images[i : i + batch_size].to(device), size, mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                f = backbone(x)
            out.append(f.float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(out)


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
    """Predicted labels of ``test_features`` by similarity-weighted kNN over ``train_features``."""
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


@dataclass
class LinearProbeResult:
    train_accuracy: float
    test_accuracy: float
    classifier: nn.Linear


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    weight_decay: float = 1e-4,
    max_iter: int = 100,
    num_classes: int | None = None,
    seed: int = 0,
) -> LinearProbeResult:
    """Train a multinomial logistic regression on frozen features; return accuracies in %.

    Features are standardized with the training mean/std. The loss is cross-entropy plus
    ``weight_decay/2 * ||W||^2``, minimized with full-batch L-BFGS (strong Wolfe line search),
    which converges in ~100 iterations for a few thousand samples.
    """
    num_classes = num_classes or int(train_labels.max()) + 1
    mu = train_features.mean(0, keepdim=True)
    sd = train_features.std(0, keepdim=True).clamp_min(1e-6)
    xtr = (train_features.float() - mu) / sd
    xte = (test_features.float() - mu) / sd
    gen = torch.Generator().manual_seed(seed)
    clf = nn.Linear(xtr.shape[1], num_classes)
    with torch.no_grad():
        clf.weight.normal_(0, 0.01, generator=gen)
        clf.bias.zero_()
    opt = torch.optim.LBFGS(clf.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(clf(xtr), train_labels) + 0.5 * weight_decay * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        tr = 100.0 * (clf(xtr).argmax(1) == train_labels).float().mean().item()
        te = 100.0 * (clf(xte).argmax(1) == test_labels).float().mean().item()
    return LinearProbeResult(tr, te, clf)


def raw_pixel_features(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The raw-pixel kNN baseline: the encoder's own input (pixels in [0, 1] normalized with the
    per-channel ``mean``/``std``), flattened."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((images.float() / 255.0 - m) / s).flatten(1)


def load_backbone(checkpoint: str, device: str = "cpu") -> tuple[nn.Module, dict]:
    """The trained backbone of a checkpoint (or run folder) and the checkpoint's state dict."""
    from siamgrad.models.backbones import build_backbone
    from siamgrad.checkpoint import load_checkpoint
    from siamgrad.config import from_dict, uses_cifar_stem
    from siamgrad.errors import CheckpointError

    state = load_checkpoint(checkpoint, map_location=device)
    try:
        cfg = from_dict(state["config"])
        backbone, _ = build_backbone(cfg.backbone, cifar_stem=uses_cifar_stem(cfg))
        weights = {k[len("backbone."):]: v for k, v in state["method"].items() if k.startswith("backbone.")}
        backbone.load_state_dict(weights)
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint '{checkpoint}' lacks a usable backbone ({str(e)[:100]}); "
                              "give a checkpoint written by siamgrad train") from None
    return backbone.to(device), state


def evaluate_checkpoint(protocol: str, checkpoint: str, settings: list[str] | None = None) -> dict:
    """``siamgrad eval knn|linear``: evaluate a checkpoint's backbone on its dataset's test split.

    ``settings`` (``key=value``) override the checkpoint's config, e.g. ``data.root=...`` when the
    data moved, or ``eval.knn_k=20``.
    """
    from siamgrad.config import build_config
    from siamgrad.data.datasets import DataError, load_dataset
    from siamgrad.data.stream import IMAGEFOLDER_DEFAULT_SIZE, load_train_set, should_stream, stream_eval_sets

    backbone, state = load_backbone(checkpoint)
    cfg = build_config(settings, base=state["config"])
    d = cfg.data
    if d.name == "shards" or should_stream(d):
        # streamed data (shards, large image folders): the trainer's bounded labeled subsets
        # (at most data.eval_images per split, class-stratified), decoded at the training size
        size = int(state.get("image_size") or cfg.augment.size or d.image_size or IMAGEFOLDER_DEFAULT_SIZE)
        train, test = stream_eval_sets(d, load_train_set(d, cfg.seed), size, seed=cfg.seed)
        if train is None or test is None:
            raise DataError(f"{d.name} data at {d.root} has no labeled train and {d.test_split} splits to "
                            "evaluate on; pack or point data.root to a dataset with class labels and a test split")
    else:
        train = load_dataset(d.name, d.root, "train", image_size=d.image_size)
        test = load_dataset(d.name, d.root, d.test_split, image_size=d.image_size)
        size = int(state.get("image_size") or train.image_size)
    mean, std = tuple(state["mean"]), tuple(state["std"])
    ftr = extract_features(backbone, train.images, mean, std, size=size)
    fte = extract_features(backbone, test.images, mean, std, size=size)
    out: dict = {"checkpoint_step": int(state.get("step", 0))}
    if protocol == "knn":
        out["knn_top1"] = knn_accuracy(ftr, train.labels, fte, test.labels, k=cfg.eval.knn_k,
                                       temperature=cfg.eval.knn_t, num_classes=len(train.classes))
    else:
        res = linear_probe(ftr, train.labels, fte, test.labels, num_classes=len(train.classes),
                           max_iter=cfg.eval.linear_epochs)
        out["linear_train_top1"] = res.train_accuracy
        out["linear_test_top1"] = res.test_accuracy
    return out
