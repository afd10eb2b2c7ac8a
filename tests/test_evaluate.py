"""kNN against a direct numpy re-derivation of the weighted-vote protocol; linear probe vs sklearn."""

import numpy as np
import pytest
import torch

from siamgrad.eval.knn import knn_accuracy, knn_predict, linear_probe


def _numpy_knn(train, labels, test, k, t, c):
    tr = train / np.linalg.norm(train, axis=1, keepdims=True)
    te = test / np.linalg.norm(test, axis=1, keepdims=True)
    out = []
    for q in te:
        sim = tr @ q
        idx = np.argsort(-sim, kind="stable")[:k]
        votes = np.zeros(c)
        for i in idx:
            votes[labels[i]] += np.exp(sim[i] / t)
        out.append(votes.argmax())
    return np.array(out)


@pytest.mark.parametrize("k,t", [(1, 0.1), (5, 0.07), (50, 0.5), (500, 0.1)])
def test_knn_matches_numpy(k, t):
    rng = np.random.default_rng(k)
    train = rng.normal(size=(300, 16))
    labels = rng.integers(0, 4, size=300)
    train[np.arange(300), labels] += 2.0
    test = rng.normal(size=(70, 16))
    test[np.arange(70), rng.integers(0, 4, 70)] += 2.0
    ours = knn_predict(torch.tensor(train), torch.tensor(labels), torch.tensor(test), k=k,
                       temperature=t, num_classes=4, chunk=32)
    np.testing.assert_array_equal(ours.numpy(), _numpy_knn(train, labels, test, min(k, 300), t, 4))


def test_knn_accuracy_perfect_on_separable():
    x = torch.eye(3).repeat(10, 1) + 0.01 * torch.randn(30, 3)
    y = torch.arange(3).repeat(10)
    assert knn_accuracy(x, y, x, y, k=5) == 100.0


def test_linear_probe_matches_sklearn_accuracy():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 20)) * 1.5
    ytr, yte = rng.integers(0, 5, 600), rng.integers(0, 5, 300)
    xtr = centers[ytr] + rng.normal(size=(600, 20))
    xte = centers[yte] + rng.normal(size=(300, 20))
    res = linear_probe(torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr),
                       torch.tensor(xte, dtype=torch.float32), torch.tensor(yte), weight_decay=1e-3)
    mu, sd = xtr.mean(0), xtr.std(0, ddof=1)
    sk = LogisticRegression(C=1 / (1e-3 * 600), max_iter=2000).fit((xtr - mu) / sd, ytr)
    sk_acc = 100 * (sk.predict((xte - mu) / sd) == yte).mean()
    assert abs(res.test_accuracy - sk_acc) <= 1.0
    assert res.test_accuracy > 60


def test_raw_pixel_baseline_on_cifar_subset():
    """The raw-pixel kNN on the shared CIFAR-10 subset is about 34.8% (the figure the project quotes)."""
    from pathlib import Path

    from siamgrad.data.datasets import load_dataset
    from siamgrad.data.in_memory import channel_stats
    from siamgrad.eval.knn import raw_pixel_features

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"
    if not root.is_dir():
        pytest.skip(f"CIFAR-10 subset not found at {root}")
    tr, te = load_dataset("cifar10", str(root), "train"), load_dataset("cifar10", str(root), "test")
    mean, std = channel_stats(tr)
    acc = knn_accuracy(raw_pixel_features(tr.images, mean, std), tr.labels,
                       raw_pixel_features(te.images, mean, std), te.labels, k=200, temperature=0.1)
    assert 33.5 < acc < 36.5


def test_linear_probe_standardizes_with_given_statistics():
    """``stats`` replaces the training features' own mean/std: probing x with stats (mu, sd) is
    probing (x - mu) / sd with stats (0, 1)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g) * 3 + 1
    y = (x[:, 0] > 1).long()
    xt = torch.randn(80, 6, generator=g) * 3 + 1
    yt = (xt[:, 0] > 1).long()
    mu, sd = torch.full((6,), 2.0), torch.full((6,), 0.5)
    a = linear_probe(x, y, xt, yt, stats=(mu, sd), seed=1)
    b = linear_probe((x - mu) / sd, y, (xt - mu) / sd, yt, stats=(torch.zeros(6), torch.ones(6)), seed=1)
    torch.testing.assert_close(a.classifier.weight, b.classifier.weight)
    assert a.test_accuracy == b.test_accuracy > 90


def test_load_backbone_of_a_foreign_file_is_one_line(tmp_path):
    from siamgrad.checkpoint import save_checkpoint
    from siamgrad.errors import CheckpointError
    from siamgrad.eval.features import load_backbone

    save_checkpoint({"config": {"backbone": "tiny"}, "method": {"backbone.nope": torch.zeros(1)}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="lacks a usable backbone") as e:
        load_backbone(str(tmp_path / "x.pt"))
    assert "\n" not in str(e.value)
