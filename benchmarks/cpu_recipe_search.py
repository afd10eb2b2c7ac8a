"""The CPU recipe search: candidate settings of UniGrad on the CIFAR-10 subset, chosen on a validation split.

    python benchmarks/cpu_recipe_search.py                       # every candidate below, then the table
    python benchmarks/cpu_recipe_search.py --only e30 b128_e30   # some of them
    python benchmarks/cpu_recipe_search.py --table-only --plot docs/img/cpu_recipe_frontier.png
    python benchmarks/cpu_recipe_search.py --only small_e20 --seeds 3    # seeds 0, 1, 2 of one candidate

Each candidate is ``siamgrad train preset=cifar10_cpu data.root=SUBSET epochs=20 batch_size=256
augment.size=32`` (the preset before this search chose ``small_b128_s24_e44`` for it) with its own overrides,
trained into ``--out/NAME`` (a finished run is reused, an interrupted one resumes), with kNN on the
test split every ``--eval-every`` epochs for the accuracy-vs-time curve. Then
``siamgrad eval knn RUN --split val`` scores it on a validation split carved from the training
images (20% of every class, see docs/evaluation.md): the choice between candidates is made on that
figure alone, never on the test split. Time is the run's ``train_seconds`` (training steps only:
no evaluation, diagnostics or checkpoints), so a busy machine shows up in it: run alone.

Printed: one row per candidate (minutes, val kNN, test kNN, the minutes at which the test curve
first reached 40% and 45%), then ``best=NAME`` (the highest val kNN among the runs within
``--budget-min`` minutes). With ``--seeds K`` each candidate is also trained with seeds 1 .. K-1
(into ``NAME-s1``, ...; seed 0 stays ``NAME``), one row per seed, then per candidate the mean, the
seed-to-seed standard deviation and the 95% Student-t interval of its val and test kNN; with
``--per-image`` also how much of that spread is the evaluation split's (benchmarks/seed_spread.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-subset"

# The search's starting point is the preset as it was before the search chose it: 20 epochs at
# batch 256 on 32 px (every candidate names what it changes)
BASE = ["preset=cifar10_cpu", "epochs=20", "batch_size=256", "augment.size=32", "diag.gradients=false",
        "diag.report=false", "diag.collapse=warn", "eval.online_probe=false", "progress=false"]

# name -> overrides of the starting point (UniGrad, 32 px), each sized to about 10 minutes of training on
# one of the two 2-core CPUs of docs/results.md: the first group for a CPU without native bf16
# (fp32), the second for one with AVX512-BF16 (bf16 autocast, several times faster there)
CANDIDATES: dict[str, list[str]] = {
    "small_e3": ["epochs=3"],
    "small_b128_e3": ["epochs=3", "batch_size=128"],
    "tiny_e6": ["backbone=tiny", "epochs=6"],
    "tiny_b128_e6": ["backbone=tiny", "epochs=6", "batch_size=128"],
    "tiny_b128_e6_m096": ["backbone=tiny", "epochs=6", "batch_size=128", "method.momentum=0.96"],
    "tiny_b64_e6": ["backbone=tiny", "epochs=6", "batch_size=64"],
    "tiny_e12": ["backbone=tiny", "epochs=12"],
    "tiny_b128_e12": ["backbone=tiny", "epochs=12", "batch_size=128"],
    "tiny_b128_e36": ["backbone=tiny", "epochs=36", "batch_size=128", "eval.every=3"],
    "tiny_b128_v4_e18": ["backbone=tiny", "epochs=18", "batch_size=128", "augment.n_views=4", "eval.every=3"],
    # native bf16
    "small_e20": ["eval.every=4"],  # the starting point as it is
    "small_e28": ["epochs=28", "eval.every=4"],
    "small_b128_e20": ["epochs=20", "batch_size=128", "eval.every=4"],
    # native bf16 with AMX: the starting point's epoch is about twice as fast again, so 10 minutes hold
    # about 44 epochs of 2 views or 20 of 4
    "small_e44": ["epochs=44", "eval.every=4"],
    "small_v4_e20": ["epochs=20", "augment.n_views=4", "eval.every=4"],
    # twice the steps of small_e44 at half the batch (the learning rate scales with it)
    "small_b128_e44": ["epochs=44", "batch_size=128", "eval.every=4"],
    # the same, cut to the epochs that fit in 10 minutes at batch 128's pace
    "small_b128_e34": ["epochs=34", "batch_size=128", "eval.every=4"],
    # any CPU: the model sees 24 px (crops and kNN sets alike, augment.size): 0.56 of the pixels,
    # so of the convolutions' work, to fit the long schedules into fewer minutes
    "small_s24_e44": ["epochs=44", "augment.size=24", "eval.every=4"],
    "small_b128_s24_e44": ["epochs=44", "batch_size=128", "augment.size=24", "eval.every=4"],
}


def _sh(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def run_name(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name}-s{seed}"


def run_candidate(name: str, overrides: list[str], out: Path, data: Path, eval_every: int, seed: int) -> Path:
    run = out / run_name(name, seed)
    done = run / "results.json"
    if not (done.exists() and "knn_accuracy" in json.loads(done.read_text())):
        _sh([sys.executable, "-m", "siamgrad", "train", *BASE, f"data.root={data}", f"out_dir={out}",
             f"run_name={run.name}", f"eval.every={eval_every}", f"seed={seed}", *overrides])
    if "knn@val" not in json.loads(done.read_text()).get("eval", {}):  # re-read: the training wrote it
        _sh([sys.executable, "-m", "siamgrad", "eval", "knn", str(run), "--split", "val", "--no-baselines"])
    return run


def summarize(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    curve = []  # (minutes of training, test kNN)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "knn_acc" in rec and "train_seconds" in rec:
            curve.append((rec["train_seconds"] / 60, rec["knn_acc"]))
    val = results.get("eval", {}).get("knn@val", {})
    first = lambda t: next((m for m, a in curve if a >= t), None)  # noqa: E731
    return {"name": run.name, "minutes": results.get("train_seconds", 0) / 60, "test": results["knn_accuracy"],
            "val": val.get("knn_top1"), "raw_pixels": results.get("raw_pixel_knn_accuracy"), "to40": first(40.0), "to45": first(45.0),
            "curve": curve}


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def plot(rows: list[dict], path: Path, loaded: set[str], raw_pixels: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for r in rows:
        if r["curve"]:
            m, a = zip(*r["curve"])
            busy = r["name"] in loaded
            ax.plot(m, a, marker="o", ms=3, ls="--" if busy else "-",
                    label=f"{r['name']} (val {_fmt(r['val'], '.1f')}%)" + (", machine busy" if busy else ""))
    if raw_pixels is not None:
        ax.axhline(raw_pixels, color="black", ls="-.", lw=1, label=f"raw pixels ({raw_pixels:.1f}%)")
    ax.axhline(45, color="gray", ls=":", lw=1)
    ax.axhline(40, color="gray", ls=":", lw=1)
    ax.set_xlabel("minutes of training (2 CPU cores)")
    ax.set_ylabel("kNN top-1 on the test split (%)")
    ax.set_title("UniGrad on the CIFAR-10 subset: accuracy vs training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def print_spread(rows: list[dict], names: list[str]) -> None:
    """Per candidate over its seeds: mean, standard deviation and 95% interval of val and test kNN."""
    from siamgrad.experiments.stats import mean_interval

    print("\n| candidate | seeds | val kNN mean (sd) [95% interval] | test kNN mean (sd) [95% interval] | minutes |")
    print("|---|---|---|---|---|")
    for n in names:
        mine = [r for r in rows if r["candidate"] == n]
        if not mine:
            continue
        cells = []
        for key in ("val", "test"):
            vals = [r[key] for r in mine if r[key] is not None]
            iv = mean_interval(vals) if vals else None
            cells.append("-" if iv is None else f"{iv.mean:.2f}" if iv.n < 2 else
                         f"{iv.mean:.2f} ({iv.sd:.2f}) [{iv.low:.2f}, {iv.high:.2f}]")
        minutes = sum(r["minutes"] for r in mine) / len(mine)
        print(f"| {n} | {len(mine)} | {cells[0]} | {cells[1]} | {minutes:.1f} |")


def print_per_image(runs: dict[str, list[Path]], target_sd: float = 0.5) -> None:
    """Per candidate: its seeds' spread split into the evaluation split's per-image part and the shared part."""
    from seed_spread import spread_of

    print(f"\n| candidate | split | seeds | sd | per-image part | shared part | images for sd {target_sd:g} |")
    print("|---|---|---|---|---|---|---|")
    for n, folders in runs.items():
        if len(folders) < 2:
            continue
        for split in ("val", "test"):
            _, sp = spread_of([str(f) for f in folders], split)  # one validation draw for every seed
            need = sp.images_for(target_sd)
            print(f"| {n} | {split} | {sp.seeds} | {sp.sd:.2f} | {sp.sd_per_image:.2f} | {sp.sd_shared:.2f} | "
                  f"{need if need is not None else 'none'} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", help="candidate names (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "cpu_recipe")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="the seed of every run (without --seeds)")
    p.add_argument("--seeds", type=int, default=None, help="train seeds 0 .. K-1 of each candidate, then their spread")
    p.add_argument("--budget-min", type=float, default=10.0)
    p.add_argument("--table-only", action="store_true", help="summarize the finished runs, train nothing")
    p.add_argument("--plot", type=Path, help="write the accuracy-vs-minutes plot here")
    p.add_argument("--per-image", action="store_true",
                   help="with --seeds: split each candidate's spread into its per-image and shared parts")
    p.add_argument("--loaded", nargs="*", default=[],
                   help="runs trained while other jobs used the cores: dashed in the plot, marked in the table")
    args = p.parse_args(argv)
    if not args.data_root.is_dir():
        print(f"error: no CIFAR-10 subset at {args.data_root}; pass --data-root", file=sys.stderr)
        return 2
    names = args.only or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        print(f"error: unknown candidate(s) {unknown}; choose from {list(CANDIDATES)}", file=sys.stderr)
        return 2
    seeds = list(range(args.seeds)) if args.seeds else [args.seed]
    if not args.table_only:
        for k in seeds:  # seed 0 of every candidate first
            for n in names:
                run_candidate(n, CANDIDATES[n], args.out, args.data_root, args.eval_every, k)
    runs = [(n, args.out / run_name(n, k)) for n in names for k in seeds]
    rows = [{**summarize(run), "candidate": n} for n, run in runs if (run / "results.json").exists()]
    print("| run | overrides | minutes | val kNN | test kNN | minutes to 40% | minutes to 45% |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["busy"] = r["name"] in args.loaded
        print(f"| {r['name']}{' (busy)' if r['busy'] else ''} | {' '.join(CANDIDATES[r['candidate']])} | {r['minutes']:.1f} | {_fmt(r['val'])} | "
              f"{r['test']:.2f} | {_fmt(r['to40'], '.1f')} | {_fmt(r['to45'], '.1f')} |")
    if args.seeds:
        print_spread(rows, names)
        if args.per_image:
            done = {n: [run for m, run in runs if m == n and (run / "results.json").exists()] for n in names}
            print_per_image(done)
    within = [r for r in rows if r["minutes"] <= args.budget_min and r["val"] is not None]
    if within:
        print(f"best={max(within, key=lambda r: r['val'])['name']}")
    if args.plot and rows:
        plot(rows, args.plot, set(args.loaded), rows[0]["raw_pixels"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
