"""The lines ``siamgrad train`` ends with: the three kNN figures, what each one means, and what
the run shows.

The learned encoder is judged against the same network before training (random init): the gap
is what pretraining learned. Raw pixels are a reference whose strength depends on the data: on
the embedded 8x8 digits kNN on pixels is nearly perfect already, so a newcomer must not read
"the encoder loses to pixels" as "self-supervised learning does not work". For the digits the
summary therefore adds two protocols chosen on a validation split (docs/evaluation.md) where the
encoder's value shows: kNN with 1% of the labels (one image per class) and the linear probe,
each beside the random-init encoder and raw pixels (:func:`demo_figures`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}%"


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        import yaml

        loaded = yaml.safe_load((run_dir / "config.yaml").read_text())
        return loaded if isinstance(loaded, dict) else {}
    except Exception:  # no or damaged config: the summary still prints the numbers
        return {}


DEMO_FRACTION = 0.01


def demo_figures(run_dir: Path) -> dict[str, dict[str, float]]:
    """``{"few": {...}, "linear": {...}}``: test top-1 (%) of the ``trained``, ``random_init`` and
    ``raw_pixels`` encoders with kNN on 1% of the labels (mean of 3 draws; also ``labels`` and
    ``per_class``) and with the linear probe on all labels.

    Taken from the run's results.json when ``siamgrad eval`` already put them there for this
    checkpoint, else computed (:func:`siamgrad.eval.checkpoint.evaluate_checkpoint`) and merged in.
    """
    import json

    from siamgrad.eval.checkpoint import evaluate_checkpoint

    run_dir = Path(run_dir)
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        results = {}
    step = results.get("step")
    evals = results.get("eval") if isinstance(results.get("eval"), dict) else {}

    def current(key: str) -> dict | None:
        e = evals.get(key)
        return e if isinstance(e, dict) and e.get("checkpoint_step") == step and step is not None else None

    say = lambda msg: None  # noqa: E731 - the summary prints the figures itself
    few = current("fewshot")
    rows = [r for r in (few or {}).get("rows", []) if r.get("fraction") == DEMO_FRACTION and r.get("classifier") == "knn"]
    if len(rows) < 3:
        rows = [r for r in evaluate_checkpoint("fewshot", str(run_dir), fractions=(DEMO_FRACTION,), say=say)["rows"]
                if r["classifier"] == "knn"]
    lin = current("linear") or evaluate_checkpoint("linear", str(run_dir), say=say)
    out = {"few": {r["encoder"]: r["mean"] for r in rows}, "linear": {}}
    out["few"].update(labels=rows[0]["labels"], per_class=rows[0]["per_class"])
    for name, suffix in (("trained", ""), ("random_init", "_random_init"), ("raw_pixels", "_raw_pixels")):
        if isinstance(lin.get("linear_test_top1" + suffix), (int, float)):
            out["linear"][name] = lin["linear_test_top1" + suffix]
    return out


def train_summary(run_dir: Path, trained: float | None, random_init: float | None, raw_pixels: float | None,
                  *, stopped_early: bool = False, demo: bool = False) -> str:
    """The end-of-run text; its first line is ``kNN top-1: trained X% | random-init Y% | raw pixels Z%``.

    ``demo``: for a digits run, add :func:`demo_figures` (computed on first use) and re-render
    the report so that it shows them.
    """
    run_dir = Path(run_dir)
    cfg = _config(run_dir)
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    ev = cfg.get("eval") if isinstance(cfg.get("eval"), dict) else {}
    dataset, split, k = data.get("name"), data.get("test_split", "test"), ev.get("knn_k", 200)
    head = (f"kNN top-1: trained {_pct(trained)} | random-init {_pct(random_init)} | raw pixels {_pct(raw_pixels)}"
            f"  ({split} split, each image labeled by its {k} most similar training images)")
    if stopped_early or trained is None:
        return head + f"\nrun folder: {run_dir}"
    lines = [head, "  trained      the encoder this run learned, without labels"]
    if random_init is not None:
        gain = trained - random_init
        verdict = ("what pretraining learned" if gain > 0 else
                   "pretraining has not helped yet: train longer or check the report")
        lines.append(f"  random-init  the same network before training: {gain:+.2f} points, {verdict}")
    if raw_pixels is not None:
        if dataset == "digits":
            lines.append("  raw pixels   kNN on the pixels themselves: 8x8 digits are nearly separable in pixel space,")
            lines.append("               so pixels are a reference here, not the bar; the gain over random init is the")
            lines.append("               signal (on CIFAR-10 trained encoders pass raw pixels: docs/results.md)")
            fig = _demo(run_dir) if demo else None
            if fig:
                few, lin = fig["few"], fig["linear"]
                lines.append(f"with few labels, kNN top-1: trained {_pct(few.get('trained'))} | random-init "
                             f"{_pct(few.get('random_init'))} | raw pixels {_pct(few.get('raw_pixels'))}  "
                             f"({few['labels']} labeled images, {few['per_class']} per class; mean of 3 draws)")
                if lin:
                    lines.append(f"linear probe top-1:         trained {_pct(lin.get('trained'))} | random-init "
                                 f"{_pct(lin.get('random_init'))} | raw pixels {_pct(lin.get('raw_pixels'))}  "
                                 "(a linear classifier on the frozen features, all labels)")
                lines.append("  " + _demo_verdict(few, lin))
        elif trained >= raw_pixels:
            lines.append(f"  raw pixels   kNN on the pixels themselves: the encoder is {trained - raw_pixels:.2f} points above them")
        else:
            lines.append(f"  raw pixels   kNN on the pixels themselves, {raw_pixels - trained:.2f} points above the encoder: "
                         "it has not yet learned more than the pixels hold (train longer)")
    report = run_dir / "report" / "report.html"
    lines.append(f"run folder: {run_dir}" + (f"  (report: {report})" if report.is_file() else ""))
    return "\n".join(lines)


def _demo(run_dir: Path) -> dict | None:
    """:func:`demo_figures` on rank 0 (None elsewhere, or when they cannot be computed), then the
    report re-rendered when the run has one."""
    import os

    from siamgrad.errors import SiamgradError

    if os.environ.get("RANK", "0") != "0":
        return None
    before = _results_mtime(run_dir)
    try:
        fig = demo_figures(run_dir)
    except SiamgradError:
        return None
    # the figures had to be computed (a run trained before the trainer kept them): the report shows them too
    if _results_mtime(run_dir) != before and (run_dir / "report" / "report.html").is_file():
        from siamgrad.report.html import analyze_run

        analyze_run(run_dir)
    return fig


def _results_mtime(run_dir: Path) -> int | None:
    try:
        return (run_dir / "results.json").stat().st_mtime_ns
    except OSError:
        return None


def _demo_verdict(few: dict, lin: dict) -> str:
    """What the few-label and linear figures show against raw pixels, from the numbers."""
    gaps = []
    for what, d in (("with few labels", few), ("with a linear classifier", lin)):
        t, p = d.get("trained"), d.get("raw_pixels")
        if isinstance(t, (int, float)) and isinstance(p, (int, float)):
            gaps.append((what, t - p))
    wins = [f"{what} ({g:+.2f} points)" for what, g in gaps if g > 0]
    losses = [f"{what} ({g:+.2f} points)" for what, g in gaps if g <= 0]
    if wins and not losses:
        return "the learned features beat the pixels " + " and ".join(wins) + ": what pretraining is for"
    if wins:
        return ("the learned features beat the pixels " + " and ".join(wins) + ", not "
                + " and ".join(losses))
    return "the pixels still win " + " and ".join(losses) + ": train longer (epochs=...)"
