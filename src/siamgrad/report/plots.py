"""The plots of a run's report and of a comparison of runs.

Plots use matplotlib's object-oriented API on the Agg canvas (no pyplot, no global backend
change, safe in headless processes). Every ``plot_*`` function takes
``path=None`` for the figure itself instead of a file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from siamgrad.report.rundata import (RunData, collapse_events, collapse_thresholds, is_number, last_value,
                                     run_summary, why_no_evaluation)

__all__ = ["compare_embeddings", "compare_plot", "gradient_form_is_exact", "plot_embedding", "plot_gradients",
           "plot_knn", "plot_loss", "plot_rank", "plot_spectrum"]

_SPECTRUM_FLOOR = 1e-12  # eigenvalues are clamped to this on log axes
_MAX_SPECTRA = 24  # at most this many spectra drawn per panel (evenly spaced in time)


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


def plot_title(run: "RunData") -> str:
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
    ax.set_title(f"Training loss - {plot_title(run)}")
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
    ax.set_title(f"Evaluation - {plot_title(run)}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


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
    fig.suptitle(f"Eigen-spectra over training - {plot_title(run)}")
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
        fig.suptitle(f"Gradient decomposition - {plot_title(run)}")
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
    fig.suptitle(f"Gradient decomposition - {plot_title(run)}")
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
    width = last_value(run, "diag/width")
    if width:
        a1.axhline(width, color="0.4", ls="--", lw=1, label=f"width D = {int(width)}")
        frac, _ = collapse_thresholds(run)
        thr = frac * width
        a1.axhline(thr, color="tab:red", ls=":", lw=1.2,
                   label=f"dimensional-collapse threshold (diag.dim_rank_frac {frac:g} x D = {thr:.1f})")
    for i, e in enumerate(collapse_events(run)):
        if is_number(e["first_step"]) and is_number(e["last_step"]):
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
    fig.suptitle(f"Feature rank and collapse indicators - {plot_title(run)}")
    return _save(fig, path)


def plot_embedding(emb: dict[str, Any], path: Path, title: str) -> Path:
    """The t-SNE picture of one run's test features (or a note saying why there is none)."""
    from siamgrad.report.embedding import draw_embedding

    fig, (ax,) = _figure(width=6.0, height=4.8)
    draw_embedding(ax, emb, title)
    return _save(fig, path)


def compare_plot(runs: list[RunData], labels: list[str], key: str, path: Path, title: str, ylabel: str,
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
