"""The lines ``siamgrad train`` ends with: the three kNN figures, what each one means, and what
the run shows.

The learned encoder is judged against the same network before training (random init): the gap
is what pretraining learned. Raw pixels are a reference whose strength depends on the data: on
the embedded 8x8 digits they are nearly separable already, so a newcomer must not read "the
encoder loses to pixels" as "self-supervised learning does not work" (docs/evaluation.md).
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


def train_summary(run_dir: Path, trained: float | None, random_init: float | None, raw_pixels: float | None,
                  *, stopped_early: bool = False) -> str:
    """The end-of-run text; its first line is ``kNN top-1: trained X% | random-init Y% | raw pixels Z%``."""
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
        elif trained >= raw_pixels:
            lines.append(f"  raw pixels   kNN on the pixels themselves: the encoder is {trained - raw_pixels:.2f} points above them")
        else:
            lines.append(f"  raw pixels   kNN on the pixels themselves, {raw_pixels - trained:.2f} points above the encoder: "
                         "it has not yet learned more than the pixels hold (train longer)")
    report = run_dir / "report" / "report.html"
    lines.append(f"run folder: {run_dir}" + (f"  (report: {report})" if report.is_file() else ""))
    return "\n".join(lines)
