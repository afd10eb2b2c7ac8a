"""Reading a run's ``metrics.jsonl``: the one reader the trainer, the report and the grids share."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Records of ``RUN/metrics.jsonl`` in order (a torn last line from a crash is skipped)."""
    out = []
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
