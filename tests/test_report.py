"""Run reports and comparisons from synthetic run folders."""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from siamgrad.report import html as report
from siamgrad.errors import SiamgradError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _spectrum(width: int, decay: float) -> list[float]:
    s = np.exp(-decay * np.arange(width))
    return list(s / s.sum())


def _rankme(p: list[float]) -> float:
    q = np.asarray(p) + 1e-7
    return float(np.exp(-(q * np.log(q)).sum()))


def write_run(root: Path, name: str, *, method: str, collapse: bool, diagnostics: bool = True,
              results: bool = True, width: int = 32, steps: int = 200, steps_per_epoch: int = 20) -> Path:
    """A run folder like the trainer writes; the collapsing run's spectrum concentrates on few directions."""
    d = root / name
    d.mkdir(parents=True)
    recs: list[dict] = [{"step": 0, "epoch": 0, "random_knn": 21.25, "raw_pixel_knn": 35.5}]
    knn = []
    for s in range(5, steps + 1, 5):
        loss = 1.0 - s / (2 * steps) if collapse else 2.0 * math.exp(-s / 80) + 0.4
        recs.append({"step": s, "epoch": s / steps_per_epoch, "loss": loss, "lr": 0.03, "images_per_s": 1000.0 + s})
        if diagnostics and s % 20 == 0:
            t = s / steps
            spec = _spectrum(width, 0.3 + 8 * t if collapse else 0.3)
            recs.append({
                "step": s, "diag/width": width, "diag/eff_rank": _rankme(spec),
                "diag/std_mean": (1 - 0.9 * t) / math.sqrt(width) if collapse else 0.9 / math.sqrt(width),
                "diag/std_ratio": (1 - 0.9 * t) if collapse else 0.9, "diag/spec_top1_frac": spec[0],
                "diag/spectrum": spec, "diag/pred_align": 0.6 + 0.3 * t,
                "grad/true_norm": 1.2, "grad/pos_norm": 1.0, "grad/neg_norm": 0.4 + t, "grad/lambda": 100.0,
                "grad/lambda_eff": 100.0 + 5 * t, "grad/cos_unified": 0.99,
            })
        if s % steps_per_epoch == 0:
            acc = 80.0 - 40.0 * math.exp(-s / 60) if not collapse else 30.0 - 5 * s / steps
            knn.append(acc)
            recs.append({"step": s, "epoch": s // steps_per_epoch, "knn_acc": acc, "online_probe_acc": acc - 2})
    with open(d / "metrics.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
        f.write('{"step": 205, "loss": 0.')  # a torn last line (crash mid-write)
    cfg = {"method": {"name": method, "lam": 100.0}, "data": {"name": "digits"}, "epochs": steps // steps_per_epoch,
           "batch_size": 64, "optim": {"lr": 0.03}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    if results:
        (d / "results.json").write_text(json.dumps({
            "step": steps, "knn_accuracy": knn[-1], "best_knn_accuracy": max(knn), "random_init_knn_accuracy": 21.25,
            "raw_pixel_knn_accuracy": 35.5, "final_loss": recs[-2].get("loss", 0.0)}))
    return d


def check_png(path: Path, min_bytes: int = 5000, min_colored: int = 200) -> tuple[int, int]:
    """A real, non-blank PNG: signature, IHDR size, decodes, many distinct colors, and (unless a
    "no data" panel is expected, ``min_colored=0``) at least ``min_colored`` strongly colored pixels:
    plotted lines are colored, axes and text are gray."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert w >= 300 and h >= 200
    assert len(data) > min_bytes
    with Image.open(path) as im:
        im.load()
        assert im.size == (w, h)
        rgb = np.asarray(im.convert("RGB")).astype(int)
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, lines, antialiasing: not a blank canvas
    saturation = np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2]) + np.abs(rgb[..., 0] - rgb[..., 2])
    assert int((saturation > 80).sum()) >= min_colored, f"{path.name}: no plotted data"
    return w, h


def embedded_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "healthy": write_run(root, "healthy", method="unigrad", collapse=False),
        "collapsing": write_run(root, "collapsing", method="simsiam", collapse=True, results=False),
        "plain": write_run(root, "plain", method="byol", collapse=False, diagnostics=False),
    }


def test_analyze_healthy_run_writes_all_plots_and_embeds_them(runs):
    page_path = report.analyze_run(runs["healthy"])
    out = runs["healthy"] / "report"
    assert page_path == out / "report.html"
    names = ["loss.png", "knn.png", "spectrum.png", "gradients.png", "rank.png"]
    for n in names:
        check_png(out / n)
    page = page_path.read_text()
    images = embedded_images(page)
    assert len(images) == 5
    assert {img for img in images} == {(out / n).read_bytes() for n in names}
    # final numbers from results.json (last kNN = 80 - 40 exp(-200/60))
    final = 80.0 - 40.0 * math.exp(-200 / 60)
    assert f"{final:.2f}" in page
    assert "21.25" in page and "35.50" in page  # random-init and raw-pixel baselines
    assert "none detected" in page
    assert "<td>method.name</td><td>unigrad</td>" in page  # the config table


def test_analyze_collapsing_run_reports_the_collapse(runs):
    page = report.analyze_run(runs["collapsing"]).read_text()
    run = report.load_run(runs["collapsing"])
    events = report.collapse_events(run)
    # independent replay: rank < 0.05 * 32 = 1.6 for 3 consecutive checks
    ranks = [(r["step"], r["diag/eff_rank"]) for r in run.records if "diag/eff_rank" in r]
    below = [s for s, v in ranks if v < 0.05 * 32]
    assert below, "the synthetic run should fall below the threshold"
    first_flag = below[2]  # patience 3, the sub-threshold checks are consecutive here
    assert [e["kind"] for e in events] == ["dimensional"]
    assert events[0]["first_step"] == first_flag and events[0]["last_step"] == ranks[-1][0]
    assert "dimensional collapse" in page
    # no results.json: numbers come from the records
    summary = report.run_summary(run)
    knn = [r["knn_acc"] for r in run.records if "knn_acc" in r]
    assert summary["final_knn"] == pytest.approx(knn[-1]) and summary["best_knn"] == pytest.approx(max(knn))
    assert summary["random_knn"] == 21.25
    assert summary["final_eff_rank"] == pytest.approx(ranks[-1][1])
    assert f"{knn[-1]:.2f}" in page


def test_run_without_diagnostics_still_gets_loss_and_knn(runs):
    page = report.analyze_run(runs["plain"]).read_text()
    out = runs["plain"] / "report"
    check_png(out / "loss.png")
    check_png(out / "knn.png")
    for n in ("spectrum.png", "gradients.png", "rank.png"):
        assert not (out / n).exists()
    assert len(embedded_images(page)) == 2
    assert "no feature diagnostics recorded" in page


def test_sparse_records_do_not_crash(tmp_path):
    d = tmp_path / "sparse"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 0, "epoch": 0}\n{"step": 3, "diag/spectrum": [1.0, 0.0]}\nnot json\n')
    page = report.analyze_run(d, out_dir=tmp_path / "out").read_text()
    check_png(tmp_path / "out" / "loss.png", min_bytes=2000, min_colored=0)  # "no data" panels
    check_png(tmp_path / "out" / "knn.png", min_bytes=2000, min_colored=0)
    check_png(tmp_path / "out" / "spectrum.png")
    assert "no config.yaml" in page


def test_missing_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(SiamgradError, match="does not exist"):
        report.analyze_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SiamgradError, match="metrics.jsonl"):
        report.analyze_run(tmp_path / "empty")
    with pytest.raises(SiamgradError):
        report.compare_runs([], tmp_path / "cmp")


def test_logged_collapse_messages_form_episodes(tmp_path):
    d = tmp_path / "logged"
    d.mkdir()
    recs = [
        {"step": 10, "diag/eff_rank": 1.1},
        {"step": 20, "diag/eff_rank": 1.1, "diag/collapse": "dimensional collapse at step 20: ..."},
        {"step": 30, "diag/eff_rank": 1.1, "diag/collapse": "dimensional collapse at step 30: ..."},
        {"step": 40, "diag/eff_rank": 9.0},
        {"step": 50, "diag/std_mean": 0.0, "diag/collapse": "complete collapse at step 50: ..."},
    ]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    events = report.collapse_events(report.load_run(d))
    assert [(e["kind"], e["first_step"], e["last_step"]) for e in events] == [
        ("dimensional", 20, 30), ("complete", 50, 50)]


def test_compare_two_runs(runs, tmp_path):
    page_path = report.compare_runs([runs["healthy"], runs["collapsing"]], tmp_path / "cmp")
    out = tmp_path / "cmp"
    assert page_path == out / "compare.html"
    for n in ("compare_loss.png", "compare_knn.png", "compare_rank.png"):
        check_png(out / n)
    # diagnostic records carry no epoch: they are placed at step / steps_per_epoch (20 here)
    xs, _ = report.load_run(runs["healthy"]).series("diag/eff_rank", x="epoch")
    assert xs == [s / 20 for s in range(20, 201, 20)]
    page = page_path.read_text()
    assert len(embedded_images(page)) == 3
    md = (out / "compare.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| healthy") or line.startswith("| collapsing")]
    assert len(rows) == 2
    healthy = [c.strip() for c in rows[0].strip("|").split("|")]
    collapsing = [c.strip() for c in rows[1].strip("|").split("|")]
    final_h = 80.0 - 40.0 * math.exp(-200 / 60)
    assert healthy[1] == "unigrad" and healthy[2] == f"{final_h:.2f}" and healthy[4] == "21.25"
    assert healthy[5] == f"{_rankme(_spectrum(32, 0.3)):.2f}" and healthy[6] == "none"
    assert collapsing[1] == "simsiam" and collapsing[6].startswith("dimensional")
    assert "compare_loss.png" in md
    for cell in healthy[2:6] + collapsing[2:6]:
        assert cell in page
