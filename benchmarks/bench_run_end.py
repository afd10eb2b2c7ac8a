"""Time a run spends beyond training: wall time of a first ``siamgrad train`` against its ``train_seconds``.

    python benchmarks/bench_run_end.py                        # this checkout, the default digits run
    python benchmarks/bench_run_end.py --baseline HEAD~3      # beside another commit, in the same run
    python benchmarks/bench_run_end.py --settings epochs=1    # any train settings

Each side trains the same settings into a fresh run folder (``out_dir`` in a temporary folder):
the process's wall time from start to exit, the run's ``train_seconds`` from results.json, and
their difference, the time spent outside the training steps (start-up, data, baselines, the end
of the run: evaluations, results, report, summary). With ``--baseline REV`` the commit ``REV`` is
checked out in a temporary git worktree and run first, through ``PYTHONPATH``; printed:
``baseline_beyond_s=``, ``beyond_s=`` and ``beyond_ratio=`` (baseline / this checkout). Run it alone
on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(src: Path, settings: list[str], out: Path) -> tuple[float, float]:
    """(wall seconds, train_seconds) of ``python -m siamgrad train`` with the package from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "siamgrad", "train", *settings, f"out_dir={out}", "run_name=r"],
                          capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"siamgrad train failed ({src}): {proc.stderr.strip().splitlines()[-1:]}")
    return wall, float(json.loads((out / "r" / "results.json").read_text())["train_seconds"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", help="a git revision to time first, in a temporary worktree")
    p.add_argument("--settings", nargs="*", default=[], help="train settings (default: the default run)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_run_end_") as tmp:
        tmp = Path(tmp)
        sides = []
        if args.baseline:
            tree = tmp / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), args.baseline],
                           check=True)
            sides.append(("baseline_", tree / "src"))
        sides.append(("", REPO / "src"))
        beyond = {}
        try:
            for prefix, src in sides:
                wall, trained = run_once(src, args.settings, tmp / f"{prefix or 'this'}runs")
                beyond[prefix] = wall - trained
                print(f"{prefix}wall_s={wall:.1f}")
                print(f"{prefix}train_s={trained:.1f}")
                print(f"{prefix}beyond_s={wall - trained:.1f}", flush=True)
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / "baseline")],
                               check=False)
        if args.baseline:
            print(f"beyond_ratio={beyond['baseline_'] / beyond['']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
