"""Where a run's numbers go: JSON lines (``metrics.jsonl``), TensorBoard when installed, and
Weights & Biases with ``log.wandb=true`` (:class:`WandbSink`; ``WANDB_MODE=offline`` keeps it on
disk, ``wandb sync`` uploads it later).

Rank 0 writes; the other ranks get a :class:`NullMetrics`. Reading the records back is
:func:`siamgrad.report.metrics.read_metrics`, the one reader.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from siamgrad import checkpoint as ckpt
from siamgrad.config import Config, to_dict
from siamgrad.errors import ConfigError
from siamgrad.report.metrics import read_metrics


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class WandbSink:
    """The numeric values of every record, logged to a Weights & Biases run at the record's step.

    The W&B run is named after the run folder, keeps its files in ``RUN/wandb/``, carries the
    resolved config, and has an id fixed by the run folder's path, so a resumed run continues it.
    """

    def __init__(self, run_dir: Path, cfg: Config):
        try:
            import wandb  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("log.wandb=true needs the wandb package: pip install 'siamgrad[wandb]' "
                              "(or set log.wandb=false)") from None
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=cfg.log.wandb_project, name=run_dir.name, id=run_id, resume="allow",
                              dir=str(run_dir), config=to_dict(cfg))

    def write(self, record: dict[str, Any]) -> None:
        values = _scalars(record)
        if values:
            self.run.log(values, step=int(record.get("step", 0)))

    def close(self) -> None:
        self.run.finish()


class MetricsLog:
    """Metrics as JSON lines (``metrics.jsonl``), TensorBoard scalars when available, and W&B
    when ``cfg.log.wandb``."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, cfg: Config | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.wandb = WandbSink(run_dir, cfg) if cfg is not None and cfg.log.wandb else None
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
            for k, v in _scalars(record).items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.write(record)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close()


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
