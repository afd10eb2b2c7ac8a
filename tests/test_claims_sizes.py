"""Every size of the claims runs end to end: ``siamgrad reproduce claims size=S smoke=true`` trains a step
or two of a tiny network per run on tiny files in the real on-disk formats (CIFAR-10's python batches,
STL-10's binary layout, an image folder standing in for ImageNet), each grid on its own dataset through
``root.NAME=PATH``, and writes its page."""

import pickle
from pathlib import Path

import numpy as np
import pytest

from siamgrad.config import build_config
from siamgrad.experiments import claims as C
from siamgrad.experiments import grids


def _cifar10(root: Path, n: int = 12) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [i % 3 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    return root


def _stl10(root: Path, n: int = 16) -> Path:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split in ("train", "test", "unlabeled"):
        images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        # column-major planes, as the official files store them
        (folder / f"{split}_X.bin").write_bytes(b"".join(np.asarray(im[c]).flatten(order="F").tobytes()
                                                         for im in images for c in range(3)))
    for split in ("train", "test"):
        (folder / f"{split}_y.bin").write_bytes(bytes([1 + i % 3 for i in range(n)]))
    return root


def _image_folder(root: Path, n: int = 6) -> Path:
    from PIL import Image

    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    return [f"root.cifar10={_cifar10(tmp / 'c10')}", f"root.stl10={_stl10(tmp / 'stl')}",
            f"root.imagefolder={_image_folder(tmp / 'inet')}"]


@pytest.mark.parametrize("size", ["paper", "gpu"])  # cpu24, cpu: every run built below; the same code path
def test_every_claim_runs_end_to_end_at_the_size_in_smoke_mode(size, roots, tmp_path):
    doc = tmp_path / "claims.md"
    C.run_claims([f"size={size}", "smoke=true", "seeds=1", *roots, f"doc={doc}"], out_dir=str(tmp_path / "runs"),
                 log=False)
    text = doc.read_text()
    assert all(f"| ({cl.key}) " in text for cl in C.CLAIMS)
    need = C.claim_runs([cl.at(size) for cl in C.CLAIMS])
    for g, labels in need.items():
        rows = (tmp_path / "runs" / f"{g}-{size}" / "results.csv").read_text()
        assert all(f"\n{label},0," in rows for label in labels), (g, labels)
        assert "failed" not in rows, g


def test_every_claims_run_builds_at_every_size():
    """The sizes not trained above: every run the claims read resolves to a valid config."""
    for size in ("cpu", "cpu24", "gpu", "paper"):
        claims = [cl.at(size) for cl in C.CLAIMS]
        for g, labels in C.claim_runs(claims).items():
            exp = grids.find(g)
            runs = dict(exp.runs_for(size))
            for label in labels:
                assert label in runs, (size, g, label)
                build_config([*exp.sizes[size], *runs[label]])


def test_root_settings_name_a_dataset(tmp_path):
    from siamgrad.errors import ConfigError
    from siamgrad.experiments import runner

    with pytest.raises(ConfigError, match="root.NAME=PATH with NAME one of"):
        runner._split_roots(["root.imagenet=/x"])
    assert runner._split_roots(["root.stl10=/s", "epochs=1"]) == ({"stl10": "/s"}, ["epochs=1"])


def test_a_grid_plots_the_learning_curves_of_its_runs(tmp_path):
    import json

    from siamgrad.experiments import runner

    rows = []
    for label in ("a", "b"):
        for seed in (0, 1):
            folder = tmp_path / f"{label}-s{seed}"
            folder.mkdir()
            recs = [{"step": 1, "loss": 1.0}] + [{"step": 10 * e, "epoch": e, "knn_acc": 30.0 + e + seed} for e in (4, 8)]
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
            rows.append({"run": label, "seed": seed})
    assert runner._plot_curves(tmp_path / "curves.png", tmp_path, "toy", "cpu24", rows)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # one evaluation per run: no curve to draw, nothing written
    assert not runner._plot_curves(tmp_path / "none.png", tmp_path, "toy", "cpu24", [{"run": "c", "seed": None}])
    assert not (tmp_path / "none.png").exists()
