"""A run's folder: where it is, whether it resumes, and its checkpoints, config and results.

Layout: ``config.yaml`` (the resolved config), ``metrics.jsonl`` and ``tb/``, ``latest.pt``
(with ``latest.prev.pt``, the one it replaced) and ``best.pt``, ``results.json`` once finished,
``report/``. Only rank 0 writes; every rank knows the paths.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from siamgrad import checkpoint as ckpt
from siamgrad.config import Config, dump_yaml
from siamgrad.errors import ConfigError
from siamgrad.train.metrics import MetricsLog, NullMetrics, trim_metrics


class RunFolder:
    """The folder of one configured run (``out_dir/run_name``; a name is made up when none is set)."""

    def __init__(self, cfg: Config, *, is_main: bool = True):
        name = cfg.run_name or f"{cfg.method.get('name')}-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.path = Path(cfg.out_dir).expanduser() / name
        self.cfg, self.is_main = cfg, is_main
        self.latest = self.path / "latest.pt"
        if cfg.resume is True and not self.has_checkpoint():
            raise ConfigError(f"resume=true but '{self.path}' holds no checkpoint; check run_name/out_dir")
        if cfg.resume is False and self.latest.exists():
            raise ConfigError(
                f"run folder '{self.path}' already holds a checkpoint; use resume=true or another run_name"
            )

    def has_checkpoint(self) -> bool:
        return self.latest.exists() or ckpt.previous_path(self.latest).exists()

    def latest_or_none(self) -> str:
        """The latest checkpoint's path for a message, or ``none yet``."""
        return str(self.latest) if self.latest.exists() else "none yet"

    def load_latest(self, device: torch.device) -> tuple[dict, Path, list[str]] | None:
        """The latest checkpoint (or its predecessor when damaged) unless ``resume=false``.

        Returns ``(state, path used, warnings)`` or ``None`` when there is nothing to resume.
        """
        if self.cfg.resume is False or not self.has_checkpoint():
            return None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state, used = ckpt.load_with_fallback(self.latest, map_location=device)
        return state, used, [str(w.message) for w in caught]

    def finished_results(self) -> dict[str, Any] | None:
        """``results.json`` of a finished run, else ``None``."""
        done = self.path / "results.json"
        return json.loads(done.read_text()) if done.is_file() else None

    def open(self, cfg: Config, *, resumed_at: int | None, final: bool = False) -> MetricsLog | NullMetrics:
        """Create the folder, write ``config.yaml`` and open the metrics (rank 0; a no-op sink elsewhere).

        Temporaries of writes cut short by a kill are removed. A resumed run first drops the metric
        records written after its checkpoint (``final``: the checkpoint is the last step's, whose
        final evaluation runs again, so its kNN record goes too); a run starting afresh drops those
        of an earlier attempt that died before its first checkpoint.
        """
        if not self.is_main:
            return NullMetrics()
        ckpt.make_dir(self.path)  # a read-only or full out_dir: one line
        ckpt.remove_stale_temps(self.path)
        ckpt.atomic_write_text(self.path / "config.yaml", dump_yaml(cfg))
        if resumed_at is None:
            trim_metrics(self.path, -1)
        else:
            trim_metrics(self.path, resumed_at, drop_evals_at=resumed_at if final else None)
        return MetricsLog(self.path, cfg=cfg)

    def close(self) -> None:
        """The end of this process's part in the run, finished or stopped: temporaries of writes
        cut short by a kill go (rank 0)."""
        if self.is_main:
            ckpt.remove_stale_temps(self.path)

    def save(self, state: dict, name: str = "latest.pt") -> Path:
        """Write the checkpoint ``name`` (rank 0 only; the path on every rank)."""
        path = self.path / name
        if self.is_main:
            ckpt.save_checkpoint(state, path, keep_previous=(name == "latest.pt"))
        return path

    def write_results(self, results: dict[str, Any]) -> None:
        if self.is_main:
            ckpt.atomic_write_json(self.path / "results.json", results)

    def resume_command(self, processes: int = 1) -> str:
        """The shell command that resumes this run: the run's own config.yaml (the resolved settings)
        with out_dir and run_name as given (relative paths stay relative to where the run started)
        and ``resume=true``, each word quoted for the shell."""
        cfg = self.cfg
        words = ["siamgrad", "train"] if processes == 1 else ["torchrun", f"--nproc_per_node={processes}", "-m",
                                                               "siamgrad", "train"]
        settings = [f"config={Path(cfg.out_dir) / self.path.name / 'config.yaml'}", f"out_dir={cfg.out_dir}",
                    f"run_name={self.path.name}", "resume=true"]
        if cfg.stop_after is not None:
            settings.append("stop_after=null")
        return " ".join(words + [shlex.quote(s) for s in settings])


def say(enabled: bool, msg: str) -> None:
    """One line on stderr (rank 0's voice)."""
    if enabled:
        print(msg, file=sys.stderr, flush=True)
