"""Experiments from the seed papers, each a grid of runs from one command.

    siamgrad reproduce NAME [size=cpu|paper] [key=value ...]

Every experiment has two sizes: ``cpu`` (the shared CIFAR-10 subset or the embedded digits on a
2-core CPU) and ``paper`` (full datasets and ResNets, for a GPU). Each run of the grid is an
ordinary ``siamgrad train`` run in ``OUT/NAME-SIZE/LABEL``; a run that already finished is not
repeated, so an interrupted grid continues where it stopped. The results are collected into
``results.csv``, ``results.md`` and ``results.png`` in ``OUT/NAME-SIZE``.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import atomic_write_bytes, atomic_write_text
from .errors import ConfigError

# the shared CIFAR-10 subset beside the repository (override with data.root=...)
SUBSET = str(Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-subset")


@dataclass
class Experiment:
    description: str
    sizes: dict[str, list[str]]  # size -> settings shared by every run of the grid
    runs: list[tuple[str, list[str]]]  # (label, settings of this run)


# Method options for a 128-d projector with a 512-d hidden layer (the CPU preset): every method
# gets the same backbone, data, epochs and optimizer; only its own loss options differ.
_METHOD_RUNS_CPU = [
    ("simclr", ["method=simclr", "method.temperature=0.2"]),
    ("moco", ["method=moco", "method.queue_size=4096", "method.momentum=0.99"]),
    ("byol", ["method=byol", "method.pred_hidden_dim=512", "method.momentum=0.99"]),
    ("simsiam", ["method=simsiam", "method.pred_hidden_dim=128"]),
    ("directpred", ["method=directpred", "method.momentum=0.99"]),
    ("barlow_twins", ["method=barlow_twins", "method.width_scaled=true"]),
    ("vicreg", ["method=vicreg"]),
    ("unigrad", ["method=unigrad", "method.lam=5", "method.momentum=0.99"]),
]

EXPERIMENTS: dict[str, Experiment] = {
    "methods": Experiment(
        "every method's original loss with the same backbone, data and budget (kNN top-1)",
        sizes={
            "cpu": ["preset=cifar10_cpu", f"data.root={SUBSET}", "epochs=10", "eval.every=0"],
            "paper": ["preset=cifar10_resnet18", "epochs=200"],
        },
        runs=_METHOD_RUNS_CPU,
    ),
    "digits_methods": Experiment(
        "every method on the embedded digits data, CPU demo defaults (kNN top-1)",
        sizes={"cpu": ["eval.every=0"], "paper": ["eval.every=0"]},
        runs=_METHOD_RUNS_CPU,
    ),
}


def available() -> list[str]:
    return sorted(EXPERIMENTS)


def _split_size(settings: list[str]) -> tuple[str, list[str]]:
    size, rest = "cpu", []
    for s in settings:
        if s.startswith("size="):
            size = s.partition("=")[2]
        else:
            rest.append(s)
    return size, rest


def run_experiment(name: str, settings: list[str] | None = None, out_dir: str = "runs/reproduce",
                   log: bool = True) -> Path:
    """Run (or continue) the grid ``name``; return the path of its ``results.md``."""
    from .config import build_config
    from .train import train

    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment '{name}'; choose one of: {', '.join(available())}")
    exp = EXPERIMENTS[name]
    size, extra = _split_size(list(settings or []))
    if size not in exp.sizes:
        raise ConfigError(f"size={size} is not valid for '{name}'; choose one of: {', '.join(exp.sizes)}")
    root = Path(out_dir) / f"{name}-{size}"
    rows = []
    for label, run_settings in exp.runs:
        run_dir = root / label
        timing = run_dir / "timing.json"
        cfg = build_config([*exp.sizes[size], *run_settings, *extra,
                            f"out_dir={root}", f"run_name={label}", "progress=false"])
        t0 = time.monotonic()
        if log:
            print(f"[{name}/{size}] {label} ...", flush=True)
        result = train(cfg, log=False)
        if not timing.exists() or result.step != json.loads(timing.read_text()).get("step"):
            atomic_write_text(timing, json.dumps({"seconds": time.monotonic() - t0, "step": result.step}))
        seconds = json.loads(timing.read_text())["seconds"]
        row = {"run": label, "method": cfg.method.get("name"), "knn_top1": result.knn_accuracy,
               "best_knn_top1": result.best_knn_accuracy, "random_init_knn": result.random_knn_accuracy,
               "raw_pixel_knn": result.raw_pixel_knn_accuracy, "steps": result.step,
               "minutes": seconds / 60}
        rows.append(row)
        if log:
            print(f"[{name}/{size}] {label}: kNN {row['knn_top1']:.2f}% ({row['minutes']:.1f} min)", flush=True)
    return _write_results(root, name, size, exp, rows, extra)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return "" if v is None else str(v)


def _write_results(root: Path, name: str, size: str, exp: Experiment, rows: list[dict],
                   extra: list[str]) -> Path:
    cols = list(rows[0].keys())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(root / "results.csv", buf.getvalue())
    cmd = " ".join(["siamgrad reproduce", name, f"size={size}", *extra])
    md = [f"# {name} ({size})", "", exp.description, "", f"Command: `{cmd}`", "",
          "Shared settings: `" + " ".join(exp.sizes[size]) + "`", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    atomic_write_text(root / "results.md", "\n".join(md) + "\n")
    _plot(root / "results.png", name, size, rows)
    return root / "results.md"


def _plot(path: Path, name: str, size: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    labels = [r["run"] for r in rows]
    vals = [r["knn_top1"] or 0 for r in rows]
    ax.bar(labels, vals, color="tab:blue", label="trained")
    for ref, style, text in (("random_init_knn", "--", "random init"), ("raw_pixel_knn", ":", "raw pixels")):
        v = rows[0].get(ref)
        if v is not None:
            ax.axhline(v, color="gray", linestyle=style, label=f"{text} ({v:.1f}%)")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title(f"{name} ({size})")
    ax.legend(loc="lower right")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
