"""Where a run's numbers go: JSON lines (``metrics.jsonl``) and, when installed, TensorBoard.

Rank 0 writes; the other ranks get a :class:`NullMetrics`. Reading the records back is
:func:`siamgrad.report.metrics.read_metrics`, the one reader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from siamgrad import checkpoint as ckpt
from siamgrad.report.metrics import read_metrics


class MetricsLog:
    """Metrics as JSON lines (``metrics.jsonl``) and, when available, TensorBoard scalars."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception:  # tensorboard not installed: JSON lines only
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record.get("step", 0)
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class NullMetrics:
    """The metrics sink of ranks other than 0: writes nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def trim_metrics(run_dir: Path, step: int, drop_evals_at: int | None = None) -> None:
    """Drop the records after ``step`` (written after the checkpoint a resumed run starts from), and
    the kNN records at step ``drop_evals_at`` (an evaluation the resumed run makes again)."""
    p = run_dir / "metrics.jsonl"
    if not p.is_file():
        return

    def kept(r: dict) -> bool:
        s = r.get("step")
        if not isinstance(s, (int, float)):
            return True
        return s <= step and not (s == drop_evals_at and "knn_acc" in r)

    keep = [r for r in read_metrics(run_dir) if kept(r)]
    ckpt.atomic_write_text(p, "".join(json.dumps(r) + "\n" for r in keep))
