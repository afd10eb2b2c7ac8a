"""The benchmark scripts run end to end on a tiny dataset (their figures are not checked here)."""

import sys
from pathlib import Path

from test_data import write_cifar10_python

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_time_to_knn_trains_both_sides_and_prints_the_ratio(tmp_path, capsys):
    import bench_time_to_knn

    write_cifar10_python(tmp_path / "cifar-10-batches-py", sizes=(16, 16, 16, 16, 16), n_test=16)
    tiny = ["backbone=tiny", "batch_size=16", "eval.knn_k=5", "method.proj_hidden_dim=32",
            "method.proj_output_dim=16"]
    rc = bench_time_to_knn.main(["--data-root", str(tmp_path), "--target", "0", "--max-epochs", "1",
                                 "--threads", "1", "--workers", "0", *(x for s in tiny for x in ("--set", s))])
    out = capsys.readouterr().out
    assert rc == 0
    assert "epoch 1 siamgrad: kNN" in out and "epoch 1 peer: kNN" in out
    assert "time_ratio=" in out and "time_ratio=nan" not in out
