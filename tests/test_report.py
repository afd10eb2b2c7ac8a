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
from siamgrad.report import plots, rundata
from siamgrad.errors import SiamgradError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _spectrum(width: int, decay: float) -> list[float]:
    s = np.exp(-decay * np.arange(width))
    return list(s / s.sum())


def _rankme(p: list[float]) -> float:
    q = np.asarray(p) + 1e-7
    return float(np.exp(-(q * np.log(q)).sum()))


def write_run(root: Path, name: str, *, method: str, collapse: bool, diagnostics: bool = True,
              results: bool = True, width: int = 32, steps: int = 200, steps_per_epoch: int = 20,
              dim_rank_frac: float | None = 0.05, exact: bool = False, data: dict | None = None) -> Path:
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
                "grad/lambda_eff": 100.0 * (1 + 1e-9 * t) if exact else 100.0 + 5 * t,
                "grad/cos_unified": 1.0 - 1e-12 if exact else 0.99,
            })
        if s % steps_per_epoch == 0:
            acc = 80.0 - 40.0 * math.exp(-s / 60) if not collapse else 30.0 - 5 * s / steps
            knn.append(acc)
            recs.append({"step": s, "epoch": s // steps_per_epoch, "knn_acc": acc, "online_probe_acc": acc - 2})
    with open(d / "metrics.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
        f.write('{"step": 205, "loss": 0.')  # a torn last line (crash mid-write)
    cfg = {"method": {"name": method, "lam": 100.0}, "data": data or {"name": "digits"},
           "epochs": steps // steps_per_epoch, "batch_size": 64, "optim": {"lr": 0.03}}
    if dim_rank_frac is not None:
        cfg["diag"] = {"dim_rank_frac": dim_rank_frac, "patience": 3}
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
    names = ["loss.png", "knn.png", "spectrum.png", "gradients.png", "rank.png", "embedding.png"]
    for n in names:
        check_png(out / n, min_colored=0 if n == "embedding.png" else 200)  # no checkpoint: a note
    page = page_path.read_text()
    images = embedded_images(page)
    assert len(images) == 6
    assert {img for img in images} == {(out / n).read_bytes() for n in names}
    # final numbers from results.json (last kNN = 80 - 40 exp(-200/60))
    final = 80.0 - 40.0 * math.exp(-200 / 60)
    assert f"{final:.2f}" in page
    assert "21.25" in page and "35.50" in page  # random-init and raw-pixel baselines
    assert "none detected" in page
    assert "<td>method.name</td><td>unigrad</td>" in page  # the config table


def test_analyze_collapsing_run_reports_the_collapse(runs):
    page = report.analyze_run(runs["collapsing"]).read_text()
    run = rundata.load_run(runs["collapsing"])
    events = rundata.collapse_events(run)
    # independent replay: rank < 0.05 * 32 = 1.6 for 3 consecutive checks
    ranks = [(r["step"], r["diag/eff_rank"]) for r in run.records if "diag/eff_rank" in r]
    below = [s for s, v in ranks if v < 0.05 * 32]
    assert below, "the synthetic run should fall below the threshold"
    first_flag = below[2]  # patience 3, the sub-threshold checks are consecutive here
    assert [e["kind"] for e in events] == ["dimensional"]
    assert events[0]["first_step"] == first_flag and events[0]["last_step"] == ranks[-1][0]
    assert "dimensional collapse" in page
    # no results.json: numbers come from the records
    summary = rundata.run_summary(run)
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
    assert len(embedded_images(page)) == 3  # loss, kNN and the embedding panel (a note: no checkpoint)
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
    events = rundata.collapse_events(rundata.load_run(d))
    assert [(e["kind"], e["first_step"], e["last_step"]) for e in events] == [
        ("dimensional", 20, 30), ("complete", 50, 50)]


def test_compare_two_runs(runs, tmp_path):
    page_path = report.compare_runs([runs["healthy"], runs["collapsing"]], tmp_path / "cmp")
    out = tmp_path / "cmp"
    assert page_path == out / "compare.html"
    for n in ("compare_loss.png", "compare_knn.png", "compare_rank.png"):
        check_png(out / n)
    # diagnostic records carry no epoch: they are placed at step / steps_per_epoch (20 here)
    xs, _ = rundata.load_run(runs["healthy"]).series("diag/eff_rank", x="epoch")
    assert xs == [s / 20 for s in range(20, 201, 20)]
    page = page_path.read_text()
    assert len(embedded_images(page)) == 4  # loss, kNN, rank and the embeddings side by side
    md = (out / "compare.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| healthy") or line.startswith("| collapsing")]
    assert len(rows) == 2
    healthy = [c.strip() for c in rows[0].strip("|").split("|")]
    collapsing = [c.strip() for c in rows[1].strip("|").split("|")]
    final_h = 80.0 - 40.0 * math.exp(-200 / 60)
    assert healthy[1] == "unigrad" and healthy[2] == "digits" and healthy[3] == f"{final_h:.2f}"
    assert healthy[5] == "21.25"
    assert healthy[6] == f"{_rankme(_spectrum(32, 0.3)):.2f}" and healthy[7] == "none"
    assert collapsing[1] == "simsiam" and collapsing[7].startswith("dimensional")
    assert "compare_loss.png" in md and "compare_embedding.png" in md
    for cell in healthy[2:7] + collapsing[2:7]:
        assert cell in page


# --------------------------------------------------------------------------------------------
# report visuals: thresholds from the run's config, notes that say what is missing, readable panels


def test_rank_threshold_and_collapse_replay_follow_the_runs_dim_rank_frac(tmp_path):
    for frac in (0.05, 0.1):
        d = write_run(tmp_path, f"c{frac}", method="simsiam", collapse=True, results=False, dim_rank_frac=frac)
        run = rundata.load_run(d)
        ranks = [(r["step"], r["diag/eff_rank"]) for r in run.records if "diag/eff_rank" in r]
        below = [s for s, v in ranks if v < frac * 32]
        assert rundata.collapse_events(run)[0]["first_step"] == below[2]
        fig = plots.plot_rank(run, None)
        thresholds = [ln for ln in fig.axes[0].get_lines() if "threshold" in str(ln.get_label())]
        assert len(thresholds) == 1 and thresholds[0].get_ydata()[0] == pytest.approx(frac * 32)
        assert f"diag.dim_rank_frac {frac:g}" in thresholds[0].get_label()
    # the two thresholds flag the collapse at different steps: the figure really follows the config
    e05 = rundata.collapse_events(rundata.load_run(tmp_path / "c0.05"))[0]["first_step"]
    e10 = rundata.collapse_events(rundata.load_run(tmp_path / "c0.1"))[0]["first_step"]
    assert e10 < e05


def test_loss_panel_is_solid_and_the_lr_gets_a_short_panel_of_its_own(runs, tmp_path):
    fig = plots.plot_loss(rundata.load_run(runs["healthy"]), None)
    loss_ax, lr_ax = fig.axes
    assert lr_ax.get_position().height < 0.4 * loss_ax.get_position().height
    assert [ln.get_label() for ln in lr_ax.get_lines()] and not any("lr" in str(ln.get_label()) for ln in loss_ax.get_lines())
    ema = [ln for ln in loss_ax.get_lines() if "EMA" in str(ln.get_label())]
    assert ema and (ema[0].get_alpha() in (None, 1.0)) and ema[0].get_linewidth() >= 2
    # a short run (few records, no moving average): the loss itself is drawn solid
    d = write_run(tmp_path, "short", method="unigrad", collapse=False, steps=20, steps_per_epoch=20)
    (line,) = plots.plot_loss(rundata.load_run(d), None).axes[0].get_lines()
    assert line.get_alpha() in (None, 1.0) and line.get_linewidth() >= 2


def _texts(ax) -> str:
    return " ".join(t.get_text() for t in ax.texts)


def test_gradient_panels_say_exact_when_the_method_is_its_unified_form(tmp_path, runs):
    d = write_run(tmp_path, "uni", method="unigrad", collapse=False, exact=True)
    fig = plots.plot_gradients(rundata.load_run(d), None)
    _, lam_ax, cos_ax = fig.axes
    assert "exact for this method" in _texts(lam_ax) and "lambda = 100" in _texts(lam_ax)
    assert "exact for this method" in _texts(cos_ax) and not lam_ax.get_lines() and not cos_ax.get_lines()
    # a method whose gradient differs from its form keeps its curves
    fig = plots.plot_gradients(rundata.load_run(runs["healthy"]), None)
    assert fig.axes[1].get_lines() and "exact" not in _texts(fig.axes[1])
    check_png(plots.plot_gradients(rundata.load_run(d), tmp_path / "g.png"))


def _image_folder(root: Path, classes: bool, test_split: bool) -> Path:
    for split in (["train", "test"] if test_split else [None]):
        base = root if split is None else root / split
        for c in (["a", "b"] if classes else [None]):
            folder = base if c is None else base / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * i + 20, dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("classes,test_split,expected", [
    (True, False, "has class labels but no 'test' split"),
    (False, False, "have no class labels"),
])
def test_knn_panel_says_what_the_image_folder_lacks(tmp_path, classes, test_split, expected):
    folder = _image_folder(tmp_path / "imgs", classes, test_split)
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 1.0}) + "\n")
    (d / "config.yaml").write_text(yaml.safe_dump({"data": {"name": "imagefolder", "root": str(folder),
                                                            "test_split": "test"}}))
    run = rundata.load_run(d)
    assert expected in rundata.why_no_evaluation(run)
    fig = plots.plot_knn(run, None)
    assert "labels needed" not in _texts(fig.axes[0]) and "no kNN" in _texts(fig.axes[0])


def test_compare_draws_one_epoch_runs_as_marked_lines_and_names_the_dataset(tmp_path, runs):
    one = write_run(tmp_path, "one-epoch", method="unigrad", collapse=False, steps=20, steps_per_epoch=20,
                    data={"name": "cifar10", "root": "/data/cifar10-subset", "fraction": 0.5})
    rs = [rundata.load_run(runs["healthy"]), rundata.load_run(one)]
    fig = plots.compare_plot(rs, ["healthy", "one-epoch"], "knn_acc", None, "kNN", "top-1", "epoch",
                               start="random_knn")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    single = lines["one-epoch"]
    assert single.get_marker() == "o" and len(single.get_xdata()) == 1
    # its curve starts at the random-init encoder's kNN at epoch 0, joined to its one evaluation
    joins = [ln for ln in fig.axes[0].get_lines() if list(ln.get_xdata()) == [0.0, 1.0]]
    assert any(list(ln.get_ydata()) == [21.25, single.get_ydata()[0]] for ln in joins)
    assert rundata.run_summary(rs[1])["dataset"] == "cifar10 (cifar10-subset), 50% of the images"
    page = report.compare_runs([runs["healthy"], one], tmp_path / "cmp", embedding=False).read_text()
    assert "<th>dataset</th>" in page and "cifar10 (cifar10-subset), 50% of the images" in page


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory):
    """A digits run folder with a real checkpoint (tiny backbone), as the trainer writes it."""
    import torch

    from siamgrad.checkpoint import save_checkpoint
    from siamgrad.config import build_config, resolve, to_dict
    from siamgrad.data.datasets import load_dataset
    from siamgrad.data.in_memory import channel_stats
    from siamgrad.methods.from_config import build_method

    cfg = resolve(build_config(["backbone=tiny", "method.proj_hidden_dim=32", "method.proj_output_dim=16"]))
    torch.manual_seed(0)
    method = build_method(cfg)
    mean, std = channel_stats(load_dataset("digits", None, "train"))
    d = write_run(tmp_path_factory.mktemp("ck"), "ck", method="unigrad", collapse=False)
    save_checkpoint({"config": to_dict(cfg), "step": 9, "total_steps": 9, "method": method.state_dict(),
                     "mean": list(mean), "std": list(std), "image_size": 16}, d / "latest.pt")
    return d


def test_embedding_of_test_features_from_the_checkpoint(checkpoint_run, tmp_path):
    import torch

    from siamgrad.data.datasets import load_dataset
    from siamgrad.report.embedding import compute_embedding

    test = load_dataset("digits", None, "test")
    emb = compute_embedding(checkpoint_run, tmp_path, max_points=300, seed=0)
    assert emb["points"] == 300 and emb["total"] == len(test) and len(emb["xy"]) == 300
    idx = torch.sort(torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:300]).values
    assert emb["labels"] == test.labels[idx].tolist() and emb["classes"] == test.classes
    xy = np.asarray(emb["xy"])
    lab = np.asarray(emb["labels"])
    dist = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    one_nn = (lab[dist.argmin(1)] == lab).mean()
    assert one_nn > 0.5  # neighbourhoods keep classes (chance: 0.1)
    stamp = (tmp_path / "embedding.json").stat().st_mtime_ns
    assert compute_embedding(checkpoint_run, tmp_path, max_points=300, seed=0)["xy"] == emb["xy"]  # the cache
    assert (tmp_path / "embedding.json").stat().st_mtime_ns == stamp
    other = compute_embedding(checkpoint_run, tmp_path / "o", max_points=300, seed=1)
    assert other["xy"] != emb["xy"]


def test_report_puts_the_embedding_beside_the_spectrum(checkpoint_run):
    page = report.analyze_run(checkpoint_run).read_text()
    check_png(checkpoint_run / "report" / "embedding.png")
    row = page[page.index('<div class="row">'):]
    row = row[: row.index("</div></div>") + 12]
    assert row.count("<img") == 2 and 't-SNE of test features' in row and "Eigen-spectrum" in row
    page2 = report.compare_runs([checkpoint_run, checkpoint_run.parent / "ck"], checkpoint_run.parent / "cmp").read_text()
    assert "Test-feature embeddings" in page2
    check_png(checkpoint_run.parent / "cmp" / "compare_embedding.png")


def test_train_summary_says_what_each_number_means(tmp_path):
    from siamgrad.report.summary import train_summary

    d = tmp_path / "digits"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump({"data": {"name": "digits", "test_split": "test"},
                                                   "eval": {"knn_k": 200}}))
    text = train_summary(d, 87.80, 71.84, 94.24)
    first, *rest = text.splitlines()
    assert first.startswith("kNN top-1: trained 87.80% | random-init 71.84% | raw pixels 94.24%")
    body = "\n".join(rest)
    assert f"{87.80 - 71.84:+.2f} points" in body and "what pretraining learned" in body
    assert "nearly separable in pixel space" in body and "gain over random init is the" in body
    assert str(d) in text.splitlines()[-1]
    c = tmp_path / "cifar"
    c.mkdir()
    (c / "config.yaml").write_text(yaml.safe_dump({"data": {"name": "cifar10"}}))
    assert "3.00 points above them" in train_summary(c, 38.0, 28.5, 35.0)
    below = train_summary(c, 30.0, 31.0, 35.0)
    assert "5.00 points above the encoder" in below and "-1.00 points, pretraining has not helped yet" in below
    assert "separable" not in below
    assert train_summary(c, None, 31.0, 35.0, stopped_early=True).count("\n") == 1


def test_digits_summary_adds_few_label_and_linear_figures_and_reuses_them(checkpoint_run, tmp_path):
    import shutil

    from siamgrad.report.summary import train_summary

    d = tmp_path / "demo"
    d.mkdir()
    shutil.copy(checkpoint_run / "latest.pt", d / "latest.pt")
    (d / "config.yaml").write_text(yaml.safe_dump({"data": {"name": "digits"}}))
    (d / "results.json").write_text(json.dumps({"step": 9, "knn_accuracy": 70.0}))
    text = train_summary(d, 70.0, 60.0, 94.0, demo=True)
    res = json.loads((d / "results.json").read_text())
    few = [r for r in res["eval"]["fewshot"]["rows"] if r["classifier"] == "knn"]
    assert {r["encoder"] for r in few} == {"trained", "random_init", "raw_pixels"}
    assert all(r["fraction"] == 0.01 and r["per_class"] == 1 for r in few)
    line = next(ln for ln in text.splitlines() if ln.startswith("with few labels"))
    for r in few:
        assert f"{r['mean']:.2f}%" in line
    lin = res["eval"]["linear"]
    line = next(ln for ln in text.splitlines() if ln.startswith("linear probe top-1"))
    assert f"trained {lin['linear_test_top1']:.2f}%" in line and f"raw pixels {lin['linear_test_top1_raw_pixels']:.2f}%" in line
    stamp = (d / "results.json").stat().st_mtime_ns
    assert train_summary(d, 70.0, 60.0, 94.0, demo=True) == text  # read back, not recomputed
    assert (d / "results.json").stat().st_mtime_ns == stamp
