r"""One training run as a report reads it (:class:`RunData`), and the numbers drawn from it.

A run folder (written by the trainer) holds ``metrics.jsonl``, ``config.yaml`` and, once
finished, ``results.json``. The records of ``metrics.jsonl`` a report reads (every key is
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
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siamgrad.errors import SiamgradError
from siamgrad.report.metrics import read_metrics

__all__ = ["RunData", "collapse_events", "collapse_thresholds", "config_value", "dataset_label", "fmt_value",
           "is_number", "last_value", "load_run", "run_summary", "why_no_evaluation"]


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
            if is_number(s) and is_number(e) and e > 0 and s > 0:
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
            if not is_number(t) and spe and is_number(r.get("step")):
                t = float(r["step"]) / spe
            if is_number(v) and is_number(t) and math.isfinite(v):
                xs.append(float(t))
                ys.append(float(v))
        return xs, ys

    def lists(self, key: str) -> list[tuple[float, list[float]]]:
        """``(step, values)`` of the records holding a non-empty list of numbers under ``key``."""
        out = []
        for r in self.records:
            v = r.get(key)
            if isinstance(v, list) and v and all(is_number(e) for e in v) and is_number(r.get("step")):
                out.append((float(r["step"]), [float(e) for e in v]))
        return out


def is_number(v: Any) -> bool:
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
    return (float(frac) if is_number(frac) else DiagConfig.dim_rank_frac,
            int(patience) if is_number(patience) else DiagConfig.patience)


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
    return RunData(run_dir, [r for r in read_metrics(run_dir) if isinstance(r, dict)], config, results)


def last_value(run: RunData, key: str) -> float | None:
    _, ys = run.series(key)
    return ys[-1] if ys else None


def _first_record_value(run: RunData, key: str) -> float | None:
    for r in run.records:
        if is_number(r.get(key)):
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
    steps = [r["step"] for r in run.records if is_number(r.get("step"))]
    _, ips = run.series("images_per_s")

    def pick(res_key: str, fallback: float | None) -> float | None:
        v = res.get(res_key)
        return float(v) if is_number(v) else fallback

    events = collapse_events(run)
    return {
        "method": run.method,
        "dataset": dataset_label(run),
        "steps": int(max(steps)) if steps else None,
        "final_loss": pick("final_loss", last_value(run, "loss")),
        "final_knn": pick("knn_accuracy", knn[-1] if knn else None),
        "best_knn": pick("best_knn_accuracy", max(knn) if knn else None),
        "random_knn": pick("random_init_knn_accuracy", _first_record_value(run, "random_knn")),
        "raw_pixel_knn": pick("raw_pixel_knn_accuracy", _first_record_value(run, "raw_pixel_knn")),
        "online_probe": last_value(run, "online_probe_acc"),
        "images_per_s": sorted(ips)[len(ips) // 2] if ips else None,
        "final_eff_rank": last_value(run, "diag/eff_rank"),
        "width": last_value(run, "diag/width"),
        "final_std_ratio": last_value(run, "diag/std_ratio"),
        "final_pred_align": last_value(run, "diag/pred_align"),
        "final_lambda_eff": last_value(run, "grad/lambda_eff"),
        "final_cos_unified": last_value(run, "grad/cos_unified"),
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
    if is_number(frac) and frac < 1:
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
            if isinstance(r.get("diag/collapse"), str) or any(k.startswith("diag/") and is_number(v) for k, v in r.items())]
    reports: list[tuple[Any, str, str]] = []  # (step, kind or "", message) per diagnostic record
    if any(isinstance(r.get("diag/collapse"), str) for r in diag):
        for r in diag:
            msg = r.get("diag/collapse")
            msg = msg if isinstance(msg, str) else ""
            first_word = msg.split(" ", 1)[0]
            kind = first_word if first_word in ("complete", "dimensional") else ("collapse" if msg else "")
            reports.append((r.get("step"), kind, msg))
    else:
        width = next((int(r["diag/width"]) for r in diag if is_number(r.get("diag/width"))), None)
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
    span = f"step {fmt_value(first)}" if first == last else f"steps {fmt_value(first)}-{fmt_value(last)}"
    return f"{e['kind']} ({span})"


def fmt_value(v: Any, digits: int = 2) -> str:
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
