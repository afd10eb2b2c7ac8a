"""Few-label evaluation and fine-tuning: label subsets, kNN/linear on them against independent
numpy/scikit-learn computations, fine-tuning on a task with a known answer, and `siamgrad eval
fewshot|finetune` writing into results.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from siamgrad.eval.fewshot import fewshot_eval
from siamgrad.eval.splits import balanced_label_subset, validation_split


def test_balanced_subset_takes_the_same_number_of_every_class():
    labels = torch.tensor([0] * 500 + [1] * 300 + [2] * 200 + [3] * 3)
    for frac in (0.01, 0.1):
        idx = balanced_label_subset(labels, frac, seed=0)
        per = round(frac * len(labels) / 4)
        counts = torch.bincount(labels[idx], minlength=4).tolist()
        assert counts == [per, per, per, min(per, 3)]
        assert idx.unique().numel() == idx.numel() and torch.equal(idx, idx.sort().values)
    a, b = balanced_label_subset(labels, 0.1, 0), balanced_label_subset(labels, 0.1, 0)
    assert torch.equal(a, b)
    assert not torch.equal(a, balanced_label_subset(labels, 0.1, 1))
    assert torch.bincount(labels[balanced_label_subset(labels, 0.0001, 0)]).tolist() == [1, 1, 1, 1]


def test_validation_split_is_a_per_class_partition():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 1)
    tr, val = validation_split(labels, 0.2, seed=3)
    assert sorted(tr.tolist() + val.tolist()) == list(range(len(labels)))
    assert torch.bincount(labels[val], minlength=3).tolist() == [10, 6, 0]  # a lone image stays in training
    tr2, val2 = validation_split(labels, 0.2, seed=4)
    assert not torch.equal(val, val2)


def _numpy_knn(train, labels, test, k, t, c):
    tr = train / np.linalg.norm(train, axis=1, keepdims=True)
    te = test / np.linalg.norm(test, axis=1, keepdims=True)
    sim = te @ tr.T
    out = []
    for row in sim:
        idx = np.argsort(-row, kind="stable")[:k]
        votes = np.zeros(c)
        np.add.at(votes, labels[idx], np.exp(row[idx] / t))
        out.append(votes.argmax())
    return np.array(out)


def test_fewshot_rows_match_numpy_knn_and_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    c, d = 5, 12
    centers = rng.normal(size=(c, d)) * 1.2
    ytr, yte = rng.integers(0, c, 1000), rng.integers(0, c, 300)
    xtr = centers[ytr] + rng.normal(size=(1000, d))
    xte = centers[yte] + rng.normal(size=(300, d))
    noise = rng.normal(size=(1000, d)), rng.normal(size=(300, d))  # an encoder that learned nothing
    feats = {"trained": (torch.tensor(xtr, dtype=torch.float32), torch.tensor(xte, dtype=torch.float32)),
             "random_init": (torch.tensor(noise[0], dtype=torch.float32), torch.tensor(noise[1], dtype=torch.float32))}
    ytr_t, yte_t = torch.tensor(ytr), torch.tensor(yte)
    rows = fewshot_eval(feats, ytr_t, yte_t, fractions=(0.05, 0.2), seeds=(0, 1), k=20, temperature=0.1,
                        num_classes=c, weight_decay=1e-2)
    assert len(rows) == 2 * 2 * 2
    mu, sd = xtr.mean(0), xtr.std(0, ddof=1)
    for r in rows:
        if r["encoder"] != "trained":
            continue
        assert r["labels"] == c * round(r["fraction"] * 1000 / c) and r["per_class"] == round(r["fraction"] * 1000 / c)
        for seed, acc in zip((0, 1), r["per_seed"]):
            idx = balanced_label_subset(ytr_t, r["fraction"], seed, c).numpy()
            if r["classifier"] == "knn":
                pred = _numpy_knn(xtr[idx], ytr[idx], xte, min(20, len(idx)), 0.1, c)
                assert acc == pytest.approx(100 * (pred == yte).mean(), abs=1e-4)  # one image is 0.33
            else:
                sk = LogisticRegression(C=1 / (1e-2 * len(idx)), max_iter=5000).fit((xtr[idx] - mu) / sd, ytr[idx])
                assert abs(acc - 100 * (sk.predict((xte - mu) / sd) == yte).mean()) <= 2.0
        assert r["mean"] == pytest.approx(np.mean(r["per_seed"])) and r["std"] == pytest.approx(np.std(r["per_seed"]))
    by = {(r["fraction"], r["classifier"], r["encoder"]): r["mean"] for r in rows}
    for frac in (0.05, 0.2):
        for clf in ("knn", "linear"):
            assert by[(frac, clf, "trained")] > 80 and by[(frac, clf, "random_init")] < 40  # chance is 20


def _bright_dark(n: int, seed: int):
    """Class 0: dark images, class 1: bright ones, with noise: a task a network learns in a few steps."""
    from siamgrad.data.in_memory import ImageDataset

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = torch.where(labels.view(-1, 1, 1, 1) == 1, 180.0, 70.0)
    img = (base + 30 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 255).to(torch.uint8)
    return ImageDataset(img, labels, ["dark", "bright"], "toy")


def test_finetune_learns_a_known_task_and_leaves_the_encoder_alone():
    from siamgrad.eval.finetune import FinetuneSettings, finetune, finetune_augment, top1
    from siamgrad.models.backbones import build_backbone

    torch.manual_seed(0)
    net, dim = build_backbone("tiny")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train, test = _bright_dark(128, 0), _bright_dark(64, 1)
    aug = finetune_augment("digits", 16, (0.5,) * 3, (0.25,) * 3)
    s = FinetuneSettings(epochs=3, batch_size=32, lr=0.05, seed=0)
    res = finetune(net, dim, train, test, aug, mean=(0.5,) * 3, std=(0.25,) * 3, size=16, settings=s,
                   say=lambda m: None)
    assert res["steps"] == 3 * 4 and res["test_top1"] >= 95.0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    again = finetune(net, dim, train, test, aug, mean=(0.5,) * 3, std=(0.25,) * 3, size=16, settings=s,
                     say=lambda m: None)
    assert again["test_top1"] == res["test_top1"] and again["train_top1"] == res["train_top1"]
    # top1 against a direct count: a model that answers "bright" for every image is right on half
    always = nn.Sequential(nn.Flatten(), nn.LazyLinear(2))
    with torch.no_grad():
        always(torch.zeros(1, 3, 16, 16))
        always[1].weight.zero_()
        always[1].bias.copy_(torch.tensor([0.0, 1.0]))
    assert top1(always, test.images, test.labels, (0.5,) * 3, (0.25,) * 3, 16, device=torch.device("cpu")) == 50.0
    # the fine-tuning views: the crop and flip of the preset, no colour
    r = aug.recipes[0]
    assert aug.n_views == 1 and r.jitter_p == r.gray_p == r.blur_p == r.solarize_p == 0.0 and r.flip_p == 0.0


@pytest.fixture()
def digits_run(tmp_path):
    """A digits run folder as the trainer leaves it: a checkpoint of a tiny backbone and results.json."""
    from siamgrad.checkpoint import save_checkpoint
    from siamgrad.config import build_config, resolve, to_dict
    from siamgrad.data.datasets import load_dataset
    from siamgrad.data.in_memory import channel_stats
    from siamgrad.methods.from_config import build_method

    cfg = resolve(build_config(["backbone=tiny", "method.proj_hidden_dim=32", "method.proj_output_dim=16",
                                "eval.knn_k=20", "threads=1"]))
    torch.manual_seed(3)
    method = build_method(cfg)
    mean, std = channel_stats(load_dataset("digits", None, "train"))
    run = tmp_path / "run"
    save_checkpoint({"config": to_dict(cfg), "step": 11, "total_steps": 11, "method": method.state_dict(),
                     "mean": list(mean), "std": list(std), "image_size": 16}, run / "latest.pt")
    (run / "results.json").write_text(json.dumps({"knn_accuracy": 50.0, "step": 11}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 11, "knn_acc": 50.0}) + "\n")
    return run


def test_eval_fewshot_and_finetune_on_the_command_line_merge_into_results(digits_run, capsys):
    from siamgrad.cli import main
    from siamgrad.data.datasets import load_dataset
    from siamgrad.report.html import analyze_run

    assert main(["eval", "fewshot", str(digits_run), "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "1% (" in out and "10% (" in out and "raw pixels" in out
    res = json.loads((digits_run / "results.json").read_text())
    assert res["knn_accuracy"] == 50.0  # the trainer's figures stay
    fs = res["eval"]["fewshot"]
    n_train, n_test = len(load_dataset("digits", None, "train")), len(load_dataset("digits", None, "test"))
    assert fs["split"] == "test" and fs["train_images"] == n_train and fs["eval_images"] == n_test
    assert fs["seeds"] == [0, 1] and len(fs["rows"]) == 2 * 2 * 3
    assert fs["command"] == f"siamgrad eval fewshot {digits_run} --seeds 2"
    assert all(0 <= r["mean"] <= 100 and len(r["per_seed"]) == 2 for r in fs["rows"])

    assert main(["eval", "fewshot", str(digits_run), "--seeds", "1", "--split", "val", "--no-baselines"]) == 0
    val = json.loads((digits_run / "results.json").read_text())["eval"]["fewshot@val"]
    assert val["eval_images"] + val["train_images"] == n_train  # carved from the training images
    assert abs(val["eval_images"] - 0.2 * n_train) <= 10 and {r["encoder"] for r in val["rows"]} == {"trained"}

    assert main(["eval", "finetune", str(digits_run), "--epochs", "1", "--no-baselines"]) == 0
    ft = json.loads((digits_run / "results.json").read_text())["eval"]["finetune"]
    assert ft["epochs"] == 1 and 0 <= ft["finetune_top1"] <= 100 and ft["seed"] == 0
    assert set(json.loads((digits_run / "results.json").read_text())["eval"]) == {"fewshot", "fewshot@val", "finetune"}

    page = analyze_run(digits_run, embedding=False).read_text()
    assert "<h2>Evaluations</h2>" in page and "fine-tune (1 epochs)" in page
    row = next(r for r in fs["rows"] if r["fraction"] == 0.1 and r["classifier"] == "linear" and r["encoder"] == "trained")
    assert f"{row['mean']:.2f} ± {row['std']:.2f}" in page
    assert f"{ft['finetune_top1']:.2f}" in page


def test_eval_refuses_settings_it_would_ignore(digits_run, capsys):
    from siamgrad.cli import main

    assert main(["eval", "fewshot", str(digits_run), "backbone=resnet18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backbone" in err[0]
    assert main(["eval", "finetune", str(digits_run), "--epochs", "0"]) == 2
