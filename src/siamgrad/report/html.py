r"""Plots and HTML/Markdown reports of training runs (``siamgrad analyze``).

A run folder (written by the trainer) holds ``metrics.jsonl``, ``config.yaml`` and, once
finished, ``results.json``. The records of ``metrics.jsonl`` this module reads (every key is
optional; a missing one only drops the plot or the table cell that needs it):

* training records: ``step``, ``epoch``, ``loss``, ``lr``, ``images_per_s``;
* evaluation records: ``step``, ``epoch``, ``knn_acc``, ``online_probe_acc`` (percent);
* the step-0 record: ``random_knn``, ``raw_pixel_knn`` (percent);
* feature diagnostics (:class:`siamgrad.diagnostics.monitor.TrainingMonitor`, :func:`~siamgrad.diagnostics.monitor.diag_record`):
  ``diag/eff_rank``,
  ``diag/eff_rank_frac``, ``diag/width``, ``diag/std_mean``, ``diag/std_min``, ``diag/std_ratio``,
  ``diag/align``, ``diag/uniform``, ``diag/spec_top1_frac``, ``diag/spec_dims90``,
  ``diag/spectrum`` (list, descending), ``diag/F_spectrum`` (list), ``diag/pred_align``,
  ``diag/collapse`` (a :class:`~siamgrad.diagnostics.monitor.CollapseDetector` message);
* gradient decomposition (:func:`siamgrad.diagnostics.monitor.grad_record`): ``grad/true_norm``,
  ``grad/unified_norm``, ``grad/pos_norm``, ``grad/neg_norm``, ``grad/lambda``,
  ``grad/lambda_eff``, ``grad/scale_eff``, ``grad/cos_unified``, ``grad/cos_fit``,
  ``grad/fit_residual``.

``results.json`` may also hold ``eval`` entries merged by ``siamgrad eval`` (kNN, linear probe,
few labels, fine-tuning; :mod:`siamgrad.eval.checkpoint`), shown in one table; the run's
``config.yaml`` gives the dataset and the collapse thresholds (``diag.dim_rank_frac``,
``diag.patience``) the plots draw.

:func:`analyze_run` writes ``report/{loss,knn,spectrum,embedding,gradients,rank}.png`` and one
self-contained ``report/report.html`` (images embedded as base64); the embedding is a t-SNE of
the test features computed from the run's checkpoint (:mod:`siamgrad.report.embedding`).
:func:`compare_runs` puts several runs on the same axes, their embeddings side by side, and
writes ``compare.html`` and ``compare.md``.

Plots use matplotlib's object-oriented API on the Agg canvas (no pyplot, no global backend
change, safe in headless processes).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from siamgrad.checkpoint import atomic_write_text
from siamgrad.errors import SiamgradError

__all__ = ["RunData", "load_run", "run_summary", "collapse_events", "analyze_run", "compare_runs"]

_SPECTRUM_FLOOR = 1e-12  # eigenvalues are clamped to this on log axes
_MAX_SPECTRA = 24  # at most this many spectra drawn per panel (evenly spaced in time)


# --------------------------------------------------------------------------------------------
# loading


@dataclass
class RunData:
    """Everything a report reads from one run folder."""

    run_dir: Path
    records: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def method(self) -> str:
        m = self.config.get("method")
        if isinstance(m, dict) and m.get("name"):
            return str(m["name"])
        if isinstance(m, str):
            return m
        return "?"

    def steps_per_epoch(self) -> float | None:
        """``step / epoch`` of the last record carrying both (epoch > 0), if any."""
        for r in reversed(self.records):
            s, e = r.get("step"), r.get("epoch")
            if _is_num(s) and _is_num(e) and e > 0 and s > 0:
                return float(s) / float(e)
        return None

    def series(self, key: str, x: str = "step") -> tuple[list[float], list[float]]:
        """``(xs, ys)`` of the records holding a finite number under ``key`` (and under ``x``).

        With ``x="epoch"``, a record without an epoch (diagnostic records) gets ``step / steps_per_epoch``.
        """
        spe = self.steps_per_epoch() if x == "epoch" else None
        xs, ys = [], []
        for r in self.records:
            v, t = r.get(key), r.get(x)
            if not _is_num(t) and spe and _is_num(r.get("step")):
                t = float(r["step"]) / spe
            if _is_num(v) and _is_num(t) and math.isfinite(v):
                xs.append(float(t))
                ys.append(float(v))
        return xs, ys

    def lists(self, key: str) -> list[tuple[float, list[float]]]:
        """``(step, values)`` of the records holding a non-empty list of numbers under ``key``."""
        out = []
        for r in self.records:
            v = r.get(key)
            if isinstance(v, list) and v and all(_is_num(e) for e in v) and _is_num(r.get("step")):
                out.append((float(r["step"]), [float(e) for e in v]))
        return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def config_value(run: "RunData", key: str, default: Any = None) -> Any:
    """The dotted ``key`` of the run's config.yaml (``default`` when absent)."""
    node: Any = run.config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def collapse_thresholds(run: "RunData") -> tuple[float, int]:
    """``(dim_rank_frac, patience)`` the run's collapse detector used: ``diag.*`` of config.yaml,
    else the defaults of :class:`siamgrad.config.DiagConfig` (what the trainer runs with)."""
    from siamgrad.config import DiagConfig

    frac = config_value(run, "diag.dim_rank_frac")
    patience = config_value(run, "diag.patience")
    return (float(frac) if _is_num(frac) else DiagConfig.dim_rank_frac,
            int(patience) if _is_num(patience) else DiagConfig.patience)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a torn last line from a crash
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def load_run(run_dir: str | Path) -> RunData:
    """Read ``metrics.jsonl`` (required), ``config.yaml`` and ``results.json`` (optional) of a run folder."""
    run_dir = Path(run_dir).expanduser()
    metrics = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise SiamgradError(f"run folder '{run_dir}' does not exist; pass a folder written by `siamgrad train`")
    if not metrics.is_file():
        raise SiamgradError(f"'{run_dir}' holds no metrics.jsonl; pass a run folder written by `siamgrad train`")
    config: dict[str, Any] = {}
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            import yaml

            loaded = yaml.safe_load(cfg_path.read_text())
            config = loaded if isinstance(loaded, dict) else {}
        except Exception:  # a damaged config must not stop the report
            config = {}
    results: dict[str, Any] = {}
    res_path = run_dir / "results.json"
    if res_path.is_file():
        try:
            loaded = json.loads(res_path.read_text())
            results = loaded if isinstance(loaded, dict) else {}
        except json.JSONDecodeError:
            results = {}
    return RunData(run_dir, _read_jsonl(metrics), config, results)


# --------------------------------------------------------------------------------------------
# numbers


def _last(run: RunData, key: str) -> float | None:
    _, ys = run.series(key)
    return ys[-1] if ys else None


def _first_record_value(run: RunData, key: str) -> float | None:
    for r in run.records:
        if _is_num(r.get(key)):
            return float(r[key])
    return None


def run_summary(run: RunData) -> dict[str, Any]:
    """Final numbers of a run: results.json first, the metrics records otherwise (``None`` when unknown).

    Keys: ``method``, ``dataset``, ``steps``, ``final_loss``, ``final_knn``, ``best_knn``, ``random_knn``,
    ``raw_pixel_knn``, ``online_probe``, ``images_per_s`` (median), ``final_eff_rank``,
    ``width``, ``final_std_ratio``, ``final_pred_align``, ``final_lambda_eff``,
    ``final_cos_unified``, ``collapse`` (text).
    """
    res = run.results
    _, knn = run.series("knn_acc")
    steps = [r["step"] for r in run.records if _is_num(r.get("step"))]
    _, ips = run.series("images_per_s")

    def pick(res_key: str, fallback: float | None) -> float | None:
        v = res.get(res_key)
        return float(v) if _is_num(v) else fallback

    events = collapse_events(run)
    return {
        "method": run.method,
        "dataset": dataset_label(run),
        "steps": int(max(steps)) if steps else None,
        "final_loss": pick("final_loss", _last(run, "loss")),
        "final_knn": pick("knn_accuracy", knn[-1] if knn else None),
        "best_knn": pick("best_knn_accuracy", max(knn) if knn else None),
        "random_knn": pick("random_init_knn_accuracy", _first_record_value(run, "random_knn")),
        "raw_pixel_knn": pick("raw_pixel_knn_accuracy", _first_record_value(run, "raw_pixel_knn")),
        "online_probe": _last(run, "online_probe_acc"),
        "images_per_s": sorted(ips)[len(ips) // 2] if ips else None,
        "final_eff_rank": _last(run, "diag/eff_rank"),
        "width": _last(run, "diag/width"),
        "final_std_ratio": _last(run, "diag/std_ratio"),
        "final_pred_align": _last(run, "diag/pred_align"),
        "final_lambda_eff": _last(run, "grad/lambda_eff"),
        "final_cos_unified": _last(run, "grad/cos_unified"),
        "collapse": "; ".join(_event_short(e) for e in events) if events else "none",
    }


def dataset_label(run: RunData) -> str | None:
    """``NAME`` of the run's data, with the data folder's name and the fraction used when they say more."""
    name = config_value(run, "data.name")
    if not name:
        return None
    root, frac = config_value(run, "data.root"), config_value(run, "data.fraction")
    label = str(name)
    if root:
        label += f" ({Path(str(root)).name or root})"
    if _is_num(frac) and frac < 1:
        label += f", {100 * frac:g}% of the images"
    return label


def collapse_events(run: RunData) -> list[dict[str, Any]]:
    """Collapse episodes: ``[{"kind", "first_step", "last_step", "message"}]``.

    Uses the ``diag/collapse`` messages the trainer logged when there are any (a diagnostic record
    without one counts as healthy); otherwise replays a
    :class:`~siamgrad.diagnostics.monitor.CollapseDetector` over the ``diag/*``
    records with the run's own ``diag.dim_rank_frac`` and ``diag.patience``. Consecutive reports of
    the same kind form one episode.
    """
    diag = [r for r in run.records
            if isinstance(r.get("diag/collapse"), str) or any(k.startswith("diag/") and _is_num(v) for k, v in r.items())]
    reports: list[tuple[Any, str, str]] = []  # (step, kind or "", message) per diagnostic record
    if any(isinstance(r.get("diag/collapse"), str) for r in diag):
        for r in diag:
            msg = r.get("diag/collapse")
            msg = msg if isinstance(msg, str) else ""
            first_word = msg.split(" ", 1)[0]
            kind = first_word if first_word in ("complete", "dimensional") else ("collapse" if msg else "")
            reports.append((r.get("step"), kind, msg))
    else:
        width = next((int(r["diag/width"]) for r in diag if _is_num(r.get("diag/width"))), None)
        if width is None:
            return []
        from siamgrad.diagnostics.collapse import CollapseDetector

        frac, patience = collapse_thresholds(run)
        det = CollapseDetector(width, dim_rank_frac=frac, patience=patience)
        for r in diag:
            msg = det.check(r)
            reports.append((r.get("step"), det.events[-1][1] if msg else "", msg or ""))
    episodes: list[dict[str, Any]] = []
    prev_kind = ""
    for step, kind, msg in reports:
        if not kind:
            prev_kind = ""
            continue
        if episodes and kind == prev_kind:
            episodes[-1]["last_step"] = step
        else:
            episodes.append({"kind": kind, "first_step": step, "last_step": step, "message": msg})
        prev_kind = kind
    return episodes


def _event_short(e: dict[str, Any]) -> str:
    first, last = e["first_step"], e["last_step"]
    span = f"step {_fmt(first)}" if first == last else f"steps {_fmt(first)}-{_fmt(last)}"
    return f"{e['kind']} ({span})"


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v) or v == 0.0:
            return str(v)
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.{digits}f}"
    return str(v)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


# --------------------------------------------------------------------------------------------
# plots


def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=110, layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path: Path | None):
    """Write ``fig`` to ``path`` and return the path; with ``path=None`` return the figure itself
    (every ``plot_*`` function takes ``None`` for a figure to inspect instead of a file)."""
    if path is None:
        return fig
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _plain_log_ticks(ax) -> None:
    """Log-scale y ticks written as plain numbers (1, 2, 5, 10, 20, ...) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _tidy_linear(ax, *series: Sequence[float], min_rel_span: float = 0.02) -> None:
    """No offset notation on a linear y axis, and a visible span when the values are (nearly) constant."""
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    vals = [v for s in series for v in s if math.isfinite(v)]
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    need = max(min_rel_span * abs(mid), 1e-3) / 2
    if half < need:
        ax.set_ylim(mid - need * 1.5, mid + need * 1.5)


def _title(run: "RunData") -> str:
    return run.name if run.method in ("?", run.name) else f"{run.name} ({run.method})"


def _empty(ax, title: str, note: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _smooth(ys: Sequence[float], span: int) -> list[float]:
    """Exponential moving average with ``alpha = 2 / (span + 1)`` (bias-corrected start)."""
    if span <= 1:
        return list(ys)
    a = 2.0 / (span + 1)
    out, m, w = [], 0.0, 0.0
    for y in ys:
        m = (1 - a) * m + a * y
        w = (1 - a) * w + a
        out.append(m / w)
    return out


def plot_loss(run: RunData, path: Path) -> Path:
    """The loss (raw records and, for long runs, their moving average) over a short learning-rate panel."""
    from matplotlib.figure import Figure

    xs, ys = run.series("loss")
    lx, ly = run.series("lr")
    if not xs:
        fig, (ax,) = _figure()
        _empty(ax, f"Training loss - {run.name}", "no loss records in metrics.jsonl")
        return _save(fig, path)
    fig = Figure(figsize=(6.4, 4.6), dpi=110, layout="constrained")
    if lx:
        ax, axl = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    else:
        ax, axl = fig.add_subplot(1, 1, 1), None
    span = max(1, len(ys) // 20)
    if span > 1:  # many records: the raw ones faint behind their moving average
        ax.plot(xs, ys, color="tab:blue", alpha=0.35, lw=0.9, label="loss (every record)")
        ax.plot(xs, _smooth(ys, span), color="tab:blue", lw=2.2, label=f"loss (EMA, span {span} records)")
    else:
        ax.plot(xs, ys, "o-" if len(xs) <= 30 else "-", color="tab:blue", lw=2, ms=3, label="loss")
    ax.set_ylabel("loss")
    ax.set_title(f"Training loss - {_title(run)}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if axl is not None:
        axl.plot(lx, ly, color="tab:orange", lw=1.2)
        axl.set_ylabel("lr", color="tab:orange")
        axl.tick_params(axis="y", labelsize=7)
        axl.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        axl.grid(alpha=0.3)
        axl.set_xlabel("step")
    else:
        ax.set_xlabel("step")
    return _save(fig, path)


def plot_knn(run: RunData, path: Path) -> Path:
    fig, (ax,) = _figure()
    kx, ky = run.series("knn_acc")
    px, py = run.series("online_probe_acc")
    summary = run_summary(run)
    if not kx and not px and summary["random_knn"] is None and summary["raw_pixel_knn"] is None:
        import textwrap

        _empty(ax, f"kNN accuracy - {run.name}", "\n".join(textwrap.wrap(why_no_evaluation(run), 58)))
        return _save(fig, path)
    if kx:
        ax.plot(kx, ky, "o-", color="tab:green", lw=2, ms=4, label="kNN top-1 (trained)")
    if px:
        ax.plot(px, py, "s--", color="tab:purple", lw=1.5, ms=3, label="online linear probe")
    if summary["random_knn"] is not None:
        ax.axhline(summary["random_knn"], color="tab:red", ls=":", lw=1.5,
                   label=f"random-init encoder ({summary['random_knn']:.1f}%)")
    if summary["raw_pixel_knn"] is not None:
        ax.axhline(summary["raw_pixel_knn"], color="0.4", ls="-.", lw=1.2,
                   label=f"raw pixels ({summary['raw_pixel_knn']:.1f}%)")
    ax.set_xlabel("step")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"Evaluation - {_title(run)}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def why_no_evaluation(run: RunData) -> str:
    """Why a run has no kNN records: what its data lacks (labels, a test split), read from config.yaml."""
    from siamgrad.config import DataConfig
    from siamgrad.eval.checkpoint import why_no_labeled_sets

    name = config_value(run, "data.name")
    if name in ("imagefolder", "shards"):
        d = DataConfig(name=name, root=config_value(run, "data.root"),
                       test_split=config_value(run, "data.test_split", "test"))
        return "no kNN: " + why_no_labeled_sets(d)
    return "no evaluation records in metrics.jsonl (the run ended before its first evaluation)"


def _spectra_panel(fig, ax, spectra: list[tuple[float, list[float]]], title: str) -> None:
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if len(spectra) > _MAX_SPECTRA:
        idx = sorted({round(i * (len(spectra) - 1) / (_MAX_SPECTRA - 1)) for i in range(_MAX_SPECTRA)})
        spectra = [spectra[i] for i in idx]
    steps = [s for s, _ in spectra]
    norm = Normalize(vmin=min(steps), vmax=max(steps) if max(steps) > min(steps) else min(steps) + 1)
    cmap = matplotlib.colormaps["viridis"]
    for step, vals in spectra:
        ys = [max(v, _SPECTRUM_FLOOR) for v in vals]
        ax.plot(range(1, len(ys) + 1), ys, color=cmap(norm(step)), lw=1.3)
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index (descending)")
    ax.set_ylabel(f"eigenvalue (log scale, floor {_SPECTRUM_FLOOR:g})")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="major")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="training step")


def plot_spectrum(run: RunData, path: Path) -> Path | None:
    """Eigen-spectra over time (batch feature correlation; the method's own F when logged). None without data."""
    panels = [(key, title) for key, title in (
        ("diag/spectrum", "Feature correlation spectrum  F = U^T U / N"),
        ("diag/F_spectrum", "Spectrum of the method's moving-average F"),
    ) if run.lists(key)]
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    for ax, (key, title) in zip(axes, panels):
        _spectra_panel(fig, ax, run.lists(key), title)
    fig.suptitle(f"Eigen-spectra over training - {_title(run)}")
    return _save(fig, path)


def plot_gradients(run: RunData, path: Path) -> Path | None:
    """Positive/negative gradient norms, effective lambda and cosine to the unified form. None without data."""
    px, py = run.series("grad/pos_norm")
    nx, ny = run.series("grad/neg_norm")
    tx, ty = run.series("grad/true_norm")
    lx, ly = run.series("grad/lambda_eff")
    l0x, l0y = run.series("grad/lambda")
    cx, cy = run.series("grad/cos_unified")
    fx, fy = run.series("grad/cos_fit")
    if not (px or nx or lx or cx):
        return None
    exact = gradient_form_is_exact(run)
    fig, (a1, a2, a3) = _figure(3, width=5.0)
    if tx:
        a1.plot(tx, ty, color="k", lw=1.5, label="true gradient")
    if px:
        a1.plot(px, py, color="tab:blue", lw=1.5, label="positive part (-u2^m term)")
    if nx:
        a1.plot(nx, ny, color="tab:red", lw=1.5, label="negative part (lambda sum s_v v term)")
    a1.set_yscale("log")
    a1.set_xlabel("step")
    a1.set_ylabel("mean per-sample norm of N dL/dz1 (log)")
    a1.set_title("Gradient parts")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    if exact is not None:
        lam, worst_cos, worst_lam = exact
        _empty(a2, "Balance coefficient lambda",
               f"exact for this method:\nthe true gradient has lambda = {lam:g}\nat every step "
               f"(largest relative deviation {worst_lam:.1e})")
        _empty(a3, "True gradient vs unified form",
               f"exact for this method:\ncos(true, unified form) = 1 at every step\n"
               f"(smallest cosine 1 - {worst_cos:.1e})")
        fig.suptitle(f"Gradient decomposition - {_title(run)}")
        return _save(fig, path)
    if lx:
        a2.plot(lx, ly, color="tab:purple", lw=1.5, label="effective lambda of the true gradient")
    if l0x:
        a2.plot(l0x, l0y, color="0.4", ls="--", lw=1.2, label="lambda of the method's gradient form")
    _tidy_linear(a2, ly, l0y)
    a2.set_xlabel("step")
    a2.set_ylabel("lambda")
    a2.set_title("Balance coefficient lambda")
    a2.grid(alpha=0.3)
    if lx or l0x:
        a2.legend(fontsize=8)
    if cx:
        a3.plot(cx, cy, color="tab:green", lw=1.5, label="cos(true, gradient form)")
    if fx:
        a3.plot(fx, fy, color="tab:olive", lw=1.2, ls="--", label="cos(true, best fit -u2^m + lambda_eff n)")
    if cx or fx:
        a3.axhline(1.0, color="0.5", ls=":", lw=1)
        a3.legend(fontsize=8, loc="best")
    _tidy_linear(a3, cy, fy, [1.0])
    a3.set_xlabel("step")
    a3.set_ylabel("cosine similarity")
    a3.set_title("True gradient vs unified form")
    a3.grid(alpha=0.3)
    fig.suptitle(f"Gradient decomposition - {_title(run)}")
    return _save(fig, path)


def gradient_form_is_exact(run: RunData, tol: float = 1e-5) -> tuple[float, float, float] | None:
    """``(lambda, 1 - min cosine, max |lambda_eff / lambda - 1|)`` when the true gradient equals
    the unified form at every logged step (UniGrad: its loss is written in that form), else None."""
    _, cy = run.series("grad/cos_unified")
    _, ly = run.series("grad/lambda_eff")
    _, l0 = run.series("grad/lambda")
    if not cy or not ly or not l0 or len(ly) != len(l0) or any(v == 0 for v in l0):
        return None
    worst_cos = max(1.0 - c for c in cy)
    worst_lam = max(abs(a / b - 1.0) for a, b in zip(ly, l0))
    if worst_cos > tol or worst_lam > tol or max(l0) - min(l0) > tol * abs(l0[0]):
        return None
    return l0[0], max(worst_cos, 0.0), worst_lam


def plot_rank(run: RunData, path: Path) -> Path | None:
    """Effective rank (with the width and the collapse threshold) and spread/alignment measures. None without data."""
    rx, ry = run.series("diag/eff_rank")
    sx, sy = run.series("diag/std_ratio")
    ax_, ay = run.series("diag/pred_align")
    tx, ty = run.series("diag/spec_top1_frac")
    if not (rx or sx or ax_):
        return None
    fig, (a1, a2) = _figure(2, width=5.6)
    if rx:
        a1.plot(rx, ry, "o-", color="tab:blue", lw=1.5, ms=3, label="effective rank (RankMe)")
    width = _last(run, "diag/width")
    if width:
        a1.axhline(width, color="0.4", ls="--", lw=1, label=f"width D = {int(width)}")
        frac, _ = collapse_thresholds(run)
        thr = frac * width
        a1.axhline(thr, color="tab:red", ls=":", lw=1.2,
                   label=f"dimensional-collapse threshold (diag.dim_rank_frac {frac:g} x D = {thr:.1f})")
    for i, e in enumerate(collapse_events(run)):
        if _is_num(e["first_step"]) and _is_num(e["last_step"]):
            lo, hi = float(e["first_step"]), float(e["last_step"])
            for a in (a1, a2):
                a.axvspan(lo, hi if hi > lo else lo + 1e-9, color="tab:red", alpha=0.08,
                          label=f"{e['kind']} collapse detected" if (i == 0 and a is a1) else None)
    a1.set_yscale("log")
    _plain_log_ticks(a1)
    a1.set_xlabel("step")
    a1.set_ylabel("effective rank (log)")
    a1.set_title("Effective rank of normalized features")
    a1.grid(alpha=0.3, which="both")
    a1.legend(fontsize=8)
    if sx:
        a2.plot(sx, sy, color="tab:orange", lw=1.5, label="per-dim std x sqrt(D)  (1 = uniform)")
    if tx:
        a2.plot(tx, ty, color="tab:brown", lw=1.2, ls="--", label="top eigenvalue / trace of F")
    if ax_:
        a2.plot(ax_, ay, color="tab:cyan", lw=1.5, label="predictor / F eigenspace alignment")
    a2.set_ylim(bottom=0)
    a2.set_xlabel("step")
    a2.set_ylabel("value")
    a2.set_title("Spread and alignment")
    a2.grid(alpha=0.3)
    a2.legend(fontsize=8)
    fig.suptitle(f"Feature rank and collapse indicators - {_title(run)}")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# HTML


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
    """An HTML table; numbers are formatted by :func:`_fmt` unless ``raw`` (then ``str``)."""
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for v in row:
            cls = ' class="num"' if _is_num(v) else ""
            text = ("null" if v is None else str(v)) if raw else _fmt(v)
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


def plot_embedding(emb: dict[str, Any], path: Path, title: str) -> Path:
    """The t-SNE picture of one run's test features (or a note saying why there is none)."""
    from siamgrad.report.embedding import draw_embedding

    fig, (ax,) = _figure(width=6.0, height=4.8)
    draw_embedding(ax, emb, title)
    return _save(fig, path)


def _pct(v: Any) -> str:
    return "" if v is None else _fmt(v)


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
            if protocol == "finetune" and _is_num(e.get("epochs")):
                label += f" ({e['epochs']} epochs)"
            rows.append([label, split, _pct(e.get(k)), _pct(e.get(k + "_random_init")), _pct(e.get(k + "_raw_pixels")),
                         step, cmd])
        elif protocol == "fewshot":
            cells: dict[tuple, dict[str, str]] = {}
            for r in e.get("rows") or []:
                if isinstance(r, dict) and _is_num(r.get("mean")):
                    label = (f"{100 * r['fraction']:g}% labels ({r['labels']}), "
                             f"{'kNN' if r['classifier'] == 'knn' else 'linear'}")
                    cells.setdefault((label,), {})[r["encoder"]] = f"{r['mean']:.2f} ± {r.get('std', 0.0):.2f}"
            for (label,), c in cells.items():
                rows.append([label, split, c.get("trained", ""), c.get("random_init", ""), c.get("raw_pixels", ""),
                             step, cmd])
    return rows


def analyze_run(run_dir: str | Path, out_dir: str | Path | None = None, embedding: bool = True) -> Path:
    """Write the plots and ``report.html`` of one run; returns the path of ``report.html``.

    ``out_dir`` defaults to ``run_dir/report``. Always writes ``loss.png`` and ``knn.png`` (a
    "no data" panel when the records lack them); ``spectrum.png``, ``gradients.png`` and
    ``rank.png`` only when the run logged the diagnostics they need; with ``embedding``,
    ``embedding.png``: t-SNE of the test features from the run's checkpoint
    (:mod:`siamgrad.report.embedding`; a note when there is no checkpoint or labeled test split).
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = run_summary(run)
    spectrum = plot_spectrum(run, out / "spectrum.png")
    emb_png = None
    if embedding:
        from siamgrad.report.embedding import compute_embedding

        emb = compute_embedding(run.run_dir, out)
        emb_png = plot_embedding(emb, out / "embedding.png", f"Test features, t-SNE - {_title(run)}")
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


def _compare_plot(runs: list[RunData], labels: list[str], key: str, path: Path, title: str, ylabel: str,
                  x: str, smooth: bool = False, log: bool = False, marker: str = "o",
                  start: str | None = None) -> Path:
    """One line per run; markers on every point (a run with a single record still shows as a
    marked point). ``start``: a :func:`run_summary` key drawn as the run's value at x = 0 (the
    random-init encoder's kNN is the trained curve's own starting point), as a hollow marker."""
    import matplotlib

    fig, (ax,) = _figure(width=7.2, height=4.6)
    colors = matplotlib.colormaps["tab10"]
    drawn = 0
    for i, (run, label) in enumerate(zip(runs, labels)):
        xs, ys = run.series(key, x=x)
        if not xs:
            continue
        color = colors(i % 10)
        first = run_summary(run)[start] if start else None
        if first is not None and xs[0] > 0:
            ax.plot([0.0, xs[0]], [first, ys[0]], ":", color=color, lw=1.4)
            ax.plot([0.0], [first], marker, mfc="white", mec=color, ms=6)
        if smooth and len(ys) > 20:
            ax.plot(xs, ys, color=color, alpha=0.25, lw=1)
            ys = _smooth(ys, len(ys) // 20)
            ax.plot(xs, ys, "-", color=color, lw=2, label=label)
        else:
            ax.plot(xs, ys, marker + "-", color=color, lw=1.8, ms=4 if len(xs) > 40 else 6, label=label)
        drawn += 1
    if start and drawn:
        ax.plot([], [], marker, mfc="white", mec="0.3", ls=":", color="0.3", label="random-init encoder (x = 0)")
    if not drawn:
        _empty(ax, title, f"no '{key}' records in any run")
        return _save(fig, path)
    if log:
        ax.set_yscale("log")
        _plain_log_ticks(ax)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


_COMPARE_COLUMNS = [("method", "method"), ("dataset", "dataset"), ("final_knn", "final kNN (%)"), ("best_knn", "best kNN (%)"),
                    ("random_knn", "random-init kNN (%)"), ("final_eff_rank", "final eff. rank"),
                    ("collapse", "collapse")]


def compare_embeddings(runs: list[RunData], labels: list[str], path: Path) -> Path:
    """Every run's t-SNE picture of its test features, side by side (three per row)."""
    from matplotlib.figure import Figure

    from siamgrad.report.embedding import compute_embedding, draw_embedding

    ncols = min(3, len(runs))
    nrows = math.ceil(len(runs) / ncols)
    fig = Figure(figsize=(5.0 * ncols + 1.2, 4.4 * nrows), dpi=110, layout="constrained")
    for i, (run, label) in enumerate(zip(runs, labels)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        draw_embedding(ax, compute_embedding(run.run_dir), label, legend=(i % ncols == ncols - 1 or i == len(runs) - 1))
    return _save(fig, path)


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
    x = "epoch" if all(all(_is_num(r.get("epoch")) for r in run.records if "loss" in r) for run in runs) else "step"
    pngs = [
        ("Loss", _compare_plot(runs, labels, "loss", out / "compare_loss.png", "Training loss (EMA-smoothed)",
                               "loss", x, smooth=True)),
        ("kNN accuracy", _compare_plot(runs, labels, "knn_acc", out / "compare_knn.png", "kNN top-1 accuracy",
                                       "top-1 accuracy (%)", x, marker="o", start="random_knn")),
        ("Effective rank", _compare_plot(runs, labels, "diag/eff_rank", out / "compare_rank.png",
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
        return _fmt(v).replace("|", "\\|")

    md = ["# siamgrad comparison", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows]
    for title, path in pngs:
        md += ["", f"## {title}", "", f"![{title}]({path.name})"]
    _write(out / "compare.md", "\n".join(md) + "\n")
    return page
