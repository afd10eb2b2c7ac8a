r"""The HTML and Markdown reports of training runs (``siamgrad analyze``, ``siamgrad compare``).

A run is read by :mod:`siamgrad.report.rundata` (the records it uses are listed there) and drawn by
:mod:`siamgrad.report.plots`. :func:`analyze_run` writes ``report/{loss,knn,spectrum,embedding,gradients,rank}.png`` and one
self-contained ``report/report.html`` (images embedded as base64); the embedding is a t-SNE of
the test features computed from the run's checkpoint (:mod:`siamgrad.report.embedding`).
:func:`compare_runs` puts several runs on the same axes, their embeddings side by side, and
writes ``compare.html`` and ``compare.md``.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Iterable, Sequence

from siamgrad.checkpoint import atomic_write_text
from siamgrad.errors import SiamgradError
from siamgrad.report.plots import (compare_embeddings, compare_plot, plot_embedding, plot_gradients, plot_knn,
                                   plot_loss, plot_rank, plot_spectrum, plot_title)
from siamgrad.report.rundata import (RunData, collapse_events, config_value, fmt_value, is_number, load_run,
                                     run_summary)

__all__ = ["analyze_run", "compare_runs", "evaluation_rows"]


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:.9em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.note{color:#666;font-size:.9em}
.warn{color:#a40000}
.row{display:flex;gap:8px;align-items:flex-start}.row .wide{flex:2 1 0;min-width:0}.row .narrow{flex:1 1 0;min-width:0}
code{font-size:.9em}
"""


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], raw: bool = False) -> str:
    """An HTML table; numbers are formatted by :func:`fmt_value` unless ``raw`` (then ``str``)."""
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for v in row:
            cls = ' class="num"' if is_number(v) else ""
            text = ("null" if v is None else str(v)) if raw else fmt_value(v)
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


_SUMMARY_ROWS = [
    ("method", "method"),
    ("dataset", "dataset"),
    ("steps", "steps"),
    ("final_knn", "final kNN top-1 (%)"),
    ("best_knn", "best kNN top-1 (%)"),
    ("random_knn", "random-init encoder kNN (%)"),
    ("raw_pixel_knn", "raw-pixel kNN (%)"),
    ("online_probe", "online linear probe (%)"),
    ("final_loss", "final loss"),
    ("images_per_s", "images/s (median)"),
    ("final_eff_rank", "final effective rank"),
    ("width", "feature width D"),
    ("final_std_ratio", "final per-dim std x sqrt(D)"),
    ("final_pred_align", "final predictor/F alignment"),
    ("final_lambda_eff", "final effective lambda"),
    ("final_cos_unified", "final cos(true, unified)"),
    ("collapse", "collapse"),
]


def _write(path: Path, text: str) -> None:
    """Atomic write, readable by all like the PNGs beside it (the temporary file is private)."""
    import os

    atomic_write_text(path, text)
    os.chmod(path, 0o644)


def _page(title: str, body: list[str]) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _pct(v: Any) -> str:
    return "" if v is None else fmt_value(v)


def evaluation_rows(run: RunData) -> list[list[Any]]:
    """One row per evaluation the run holds: ``[protocol, split, trained, random-init, raw pixels, step, command]``.

    The end-of-training kNN and online probe come from results.json / the records; the rest from
    the ``eval`` entries ``siamgrad eval`` merged into results.json.
    """
    summ = run_summary(run)
    rows: list[list[Any]] = []
    if summ["final_knn"] is not None:
        rows.append(["kNN, end of training", config_value(run, "data.test_split", "test"), _pct(summ["final_knn"]),
                     _pct(summ["random_knn"]), _pct(summ["raw_pixel_knn"]), summ["steps"], "siamgrad train"])
    if summ["online_probe"] is not None:
        rows.append(["online linear probe", config_value(run, "data.test_split", "test"), _pct(summ["online_probe"]),
                     "", "", summ["steps"], "siamgrad train"])
    evals = run.results.get("eval") if isinstance(run.results.get("eval"), dict) else {}
    keys = {"knn": ("knn_top1", "kNN"), "linear": ("linear_test_top1", "linear probe"),
            "finetune": ("finetune_top1", "fine-tune")}
    for name, e in evals.items():
        if not isinstance(e, dict):
            continue
        protocol, split, step, cmd = e.get("protocol", name), e.get("split", "test"), e.get("checkpoint_step"), e.get("command", "")
        if protocol in keys:
            k, label = keys[protocol]
            if protocol == "linear" and f"linear_{split}_top1" in e:  # named by its split (older entries: test)
                k = f"linear_{split}_top1"
            if protocol == "finetune" and is_number(e.get("epochs")):
                label += f" ({e['epochs']} epochs)"
            rows.append([label, split, _pct(e.get(k)), _pct(e.get(k + "_random_init")), _pct(e.get(k + "_raw_pixels")),
                         step, cmd])
        elif protocol == "fewshot":
            cells: dict[tuple, dict[str, str]] = {}
            for r in e.get("rows") or []:
                if isinstance(r, dict) and is_number(r.get("mean")):
                    label = (f"{100 * r['fraction']:g}% labels ({r['labels']}), "
                             f"{'kNN' if r['classifier'] == 'knn' else 'linear'}")
                    cells.setdefault((label,), {})[r["encoder"]] = f"{r['mean']:.2f} ± {r.get('std', 0.0):.2f}"
            for (label,), c in cells.items():
                rows.append([label, split, c.get("trained", ""), c.get("random_init", ""), c.get("raw_pixels", ""),
                             step, cmd])
    return rows


def analyze_run(run_dir: str | Path, out_dir: str | Path | None = None, embedding: bool = True,
                test_features: tuple | None = None) -> Path:
    """Write the plots and ``report.html`` of one run; returns the path of ``report.html``.

    ``out_dir`` defaults to ``run_dir/report``. Always writes ``loss.png`` and ``knn.png`` (a
    "no data" panel when the records lack them); ``spectrum.png``, ``gradients.png`` and
    ``rank.png`` only when the run logged the diagnostics they need; with ``embedding``,
    ``embedding.png``: t-SNE of the test features from the run's checkpoint
    (:mod:`siamgrad.report.embedding`; a note when there is no checkpoint or labeled test split).
    ``test_features``: ``(features, labels, classes)`` of the whole test split from the caller's
    memory (the trainer's last kNN), so that the embedding reads no checkpoint and no data.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = run_summary(run)
    spectrum = plot_spectrum(run, out / "spectrum.png")
    emb_png = None
    if embedding:
        from siamgrad.report.embedding import compute_embedding

        emb = compute_embedding(run.run_dir, out, given=test_features)
        emb_png = plot_embedding(emb, out / "embedding.png", f"Test features, t-SNE - {plot_title(run)}")
    plots: list[tuple[str, Path | None, str]] = [
        ("Loss", plot_loss(run, out / "loss.png"), ""),
        ("kNN accuracy", plot_knn(run, out / "knn.png"), ""),
        ("Effective rank and collapse", plot_rank(run, out / "rank.png"),
         "no diag/* records: log siamgrad.diagnostics.monitor.TrainingMonitor records to see rank and spread"),
        ("Gradient decomposition", plot_gradients(run, out / "gradients.png"),
         "no grad/* records: log siamgrad.diagnostics.monitor.TrainingMonitor records to see the gradient decomposition"),
    ]
    events = collapse_events(run)
    body = [f"<h1>siamgrad run report: {html.escape(run.name)}</h1>",
            f"<p class=\"note\">folder: {html.escape(str(run.run_dir))} &middot; {len(run.records)} metric records</p>",
            "<h2>Final numbers</h2>",
            _table(["quantity", "value"], [(label, summary[k]) for k, label in _SUMMARY_ROWS])]
    evals = evaluation_rows(run)
    if evals:
        body += ["<h2>Evaluations</h2>",
                 "<p class=\"note\">top-1 accuracy (%); few-label rows: mean ± std over the label draws. "
                 "The random-init encoder and raw pixels are scored by the same protocol. "
                 "Protocols: docs/evaluation.md; more: <code>siamgrad eval knn|linear|fewshot|finetune RUN</code></p>",
                 _table(["protocol", "split", "trained", "random-init", "raw pixels", "step", "command"], evals)]
    body.append("<h2>Collapse events</h2>")
    if events:
        body.append(_table(["kind", "first step", "last step", "detail"],
                           [(e["kind"], e["first_step"], e["last_step"], e["message"]) for e in events]))
    else:
        has_diag = any(k.startswith("diag/") for r in run.records for k in r)
        body.append("<p>none detected</p>" if has_diag else
                    "<p class=\"note\">no feature diagnostics recorded, collapse not checked</p>")
    for title, path, missing in plots[:2]:
        body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(_img_tag(path, title) if path is not None else f"<p class=\"note\">{html.escape(missing)}</p>")
    body.append("<h2>Eigen-spectrum and test-feature embedding</h2>" if emb_png else "<h2>Eigen-spectrum</h2>")
    side = []
    side.append(f'<div class="wide">{_img_tag(spectrum, "Eigen-spectrum")}</div>' if spectrum is not None else
                "<p class=\"note\">no diag/spectrum records: log siamgrad.diagnostics.monitor.TrainingMonitor "
                "records to see the spectrum</p>")
    if emb_png is not None:
        side.append(f'<div class="narrow">{_img_tag(emb_png, "t-SNE of test features")}</div>')
    body.append('<div class="row">' + "".join(side) + "</div>")
    if emb_png is not None:
        body.append("<p class=\"note\">t-SNE keeps neighbourhoods, not distances: separated single-colour clusters "
                    "mean nearby features share a class (what kNN rewards); cluster sizes and gaps mean little.</p>")
    for title, path, missing in plots[2:]:
        body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(_img_tag(path, title) if path is not None else f"<p class=\"note\">{html.escape(missing)}</p>")
    body.append("<h2>Configuration</h2>")
    if run.config:
        body.append(_table(["key", "value"], _flatten(run.config), raw=True))
    else:
        body.append("<p class=\"note\">no config.yaml in the run folder</p>")
    report = out / "report.html"
    _write(report, _page(f"siamgrad report: {run.name}", body))
    return report


# --------------------------------------------------------------------------------------------
# comparing runs


def _labels(runs: list[RunData]) -> list[str]:
    names = [r.name for r in runs]
    return [f"{r.name} ({r.method})" if r.method != "?" and r.method not in r.name else r.name for r in runs] \
        if len(set(names)) == len(names) else [f"{r.run_dir} ({r.method})" for r in runs]


_COMPARE_COLUMNS = [("method", "method"), ("dataset", "dataset"), ("final_knn", "final kNN (%)"), ("best_knn", "best kNN (%)"),
                    ("random_knn", "random-init kNN (%)"), ("final_eff_rank", "final eff. rank"),
                    ("collapse", "collapse")]


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, embedding: bool = True) -> Path:
    """Put several runs on the same plots and tabulate them; returns the path of ``compare.html``.

    Writes ``compare_loss.png``, ``compare_knn.png``, ``compare_rank.png``, with ``embedding``
    ``compare_embedding.png`` (each run's t-SNE of its test features, side by side),
    ``compare.html`` (images embedded) and ``compare.md`` (images linked, table in Markdown) into ``out_dir``.
    The x axis is the epoch when every run's records carry one (runs with different batch sizes
    line up), the step otherwise.
    """
    if not run_dirs:
        raise SiamgradError("compare needs at least one run folder; pass run folders written by `siamgrad train`")
    runs = [load_run(d) for d in run_dirs]
    labels = _labels(runs)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    x = "epoch" if all(all(is_number(r.get("epoch")) for r in run.records if "loss" in r) for run in runs) else "step"
    pngs = [
        ("Loss", compare_plot(runs, labels, "loss", out / "compare_loss.png", "Training loss (EMA-smoothed)",
                               "loss", x, smooth=True)),
        ("kNN accuracy", compare_plot(runs, labels, "knn_acc", out / "compare_knn.png", "kNN top-1 accuracy",
                                       "top-1 accuracy (%)", x, marker="o", start="random_knn")),
        ("Effective rank", compare_plot(runs, labels, "diag/eff_rank", out / "compare_rank.png",
                                         "Effective rank of normalized features (RankMe)", "effective rank (log)",
                                         x, log=True, marker="o")),
    ]
    if embedding:
        pngs.append(("Test-feature embeddings (t-SNE)", compare_embeddings(runs, labels, out / "compare_embedding.png")))
    summaries = [run_summary(r) for r in runs]
    header = ["run"] + [label for _, label in _COMPARE_COLUMNS]
    rows = [[lab] + [s[k] for k, _ in _COMPARE_COLUMNS] for lab, s in zip(labels, summaries)]
    body = [f"<h1>siamgrad comparison of {len(runs)} runs</h1>", "<h2>Summary</h2>", _table(header, rows)]
    for title, path in pngs:
        body += [f"<h2>{html.escape(title)}</h2>", _img_tag(path, title)]
    page = out / "compare.html"
    _write(page, _page("siamgrad comparison", body))

    def md_cell(v: Any) -> str:
        return fmt_value(v).replace("|", "\\|")

    md = ["# siamgrad comparison", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
    for title, path in pngs:
        md += ["", f"## {title}", "", f"![{title}]({path.name})"]
    _write(out / "compare.md", "\n".join(md) + "\n")
    return page
