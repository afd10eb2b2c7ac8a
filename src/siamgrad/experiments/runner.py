"""Experiments from the seed papers, each a grid of runs from one command.

    siamgrad reproduce NAME [size=cpu|paper|...] [only=RUN,RUN] [seeds=K] [key=value ...] [--out DIR]
    siamgrad reproduce list

Every experiment has a ``cpu`` size (the shared CIFAR-10 subset or the embedded digits, designed to
finish in under 30 minutes on 2 CPU cores) and a ``paper`` size (full datasets and ResNets, for a
GPU); those on the subset also have ``cpu24`` (the claims' CPU size) and most have ``gpu`` (full
CIFAR-10, a CIFAR-stem ResNet-18 for 200 epochs, each method at a published CIFAR recipe), some
have more (``paper_stl10``). Each run of the grid is an ordinary ``siamgrad train`` run in
``OUT/NAME-SIZE/LABEL``; a run that already finished is not repeated, so an interrupted grid
continues where it stopped. Settings given on the command line apply to every run (after the
grid's own); ``only=a,b`` trains only the runs labelled ``a`` and ``b``. The results are collected into ``results.csv``, ``results.md`` and ``results.png`` in
``OUT/NAME-SIZE`` (rewritten after every run, so a grid in progress can be read); rows an earlier
invocation wrote for runs this one does not train are kept, so ``only=a`` then ``only=b`` leaves
one table of both.

``seeds=K`` repeats every run with ``seed=0..K-1`` (the initialization, the data order and the
augmentation draws) in ``OUT/NAME-SIZE/LABEL-sK``, all runs of seed 0 first; ``seeds=A-B`` with
seeds ``A..B`` only (more seeds for runs whose first ones were trained elsewhere); finished runs are
reused as without it, and seed 0 is the run ``OUT/NAME-SIZE/LABEL`` trained before without
``seeds=`` where that one has seed 0 and no ``LABEL-s0`` exists. The table then has a ``seed`` column, and ``results_seeds.csv`` (and a
second table in ``results.md``) gives per run the number of seeds that finished, the mean kNN top-1
and its 95% Student-t interval over the seeds (:mod:`siamgrad.experiments.stats`); the plot shows
the means with those intervals.

Table columns: ``run``, ``method``, then the settings the grid varies (the resolved values, e.g.
``target=auto`` is shown as the branch it picked; blank where the option does not belong to the
run's method or does not act in its form), then ``knn_top1`` (kNN top-1 in % on the test split at
the end), ``best_knn_top1``, ``knn_full_train`` (grids that train on a fraction of the data: kNN
with the *whole* labeled training split as the memory bank, so runs on different fractions are
compared on the same bank), the ``random_init_knn`` and ``raw_pixel_knn`` baselines, ``eff_rank``
(effective rank of the projector output at the last diagnostic), ``steps``, ``minutes`` (wall time
of the run), ``cpu_minutes`` (CPU time of the process during the run, all threads; on a machine
shared with other jobs ``cpu_minutes / cores`` roughly estimates the wall time alone) and
``status`` (``ok``, or ``failed: ...`` when the run stopped on a non-finite loss; the grid goes on).

The grids themselves are data in :mod:`siamgrad.experiments.grids`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from pathlib import Path
from typing import Any

from siamgrad.checkpoint import atomic_write_bytes, atomic_write_text
from siamgrad.errors import ConfigError, TrainingError
from siamgrad.experiments.grids import Experiment, Runs, find
from siamgrad.experiments.provenance import FIELDS as PROVENANCE_FIELDS
from siamgrad.experiments.provenance import provenance
from siamgrad.experiments.stats import mean_interval

# --------------------------------------------------------------------------------------------
# running a grid


def _split_size(settings: list[str]) -> tuple[str, list[str]]:
    size, rest = "cpu", []
    for s in settings:
        if s.startswith("size="):
            size = s.partition("=")[2]
        else:
            rest.append(s)
    return size, rest


def _split_seeds(settings: list[str]) -> tuple[range | None, list[str]]:
    """``seeds=K``: repeat every run with seeds 0..K-1; ``seeds=A-B``: with seeds A..B (``None`` when absent)."""
    seeds, rest = None, []
    for s in settings:
        if s.startswith("seeds="):
            v = s.partition("=")[2].strip()
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", v)
            seeds = None if m is None else (range(int(m[1])) if m[2] is None else range(int(m[1]), int(m[2]) + 1))
            if not seeds:
                raise ConfigError(f"seeds={v} is neither a count nor a range; give e.g. seeds=3 (seeds 0-2) "
                                  f"or seeds=5-6 (seeds 5 and 6)")
        else:
            rest.append(s)
    if seeds is not None and "seed" in setting_keys(rest):
        raise ConfigError("seed= and seeds= together; seeds= already sets each run's seed, drop seed=")
    return seeds, rest


def _seed_folder(root: Path, label: str, seed: int) -> str:
    """The run folder of ``label`` with ``seed``: ``LABEL-sK``, or for seed 0 the folder ``LABEL`` of a
    run trained without ``seeds=`` (seed 0 in its config.yaml) when ``LABEL-s0`` does not exist."""
    if seed == 0 and not (root / f"{label}-s0").exists() and (root / label / "config.yaml").is_file():
        import yaml

        saved = yaml.safe_load((root / label / "config.yaml").read_text())
        if isinstance(saved, dict) and saved.get("seed") == 0:
            return label
    return f"{label}-s{seed}"


def flag(key: str, value: str) -> bool:
    """A true/false command setting (``train=``, ``smoke=``), or a one-line error."""
    if value not in ("true", "false"):
        raise ConfigError(f"{key}={value}: give {key}=true or {key}=false")
    return value == "true"


def report_path(name: str, out_dir: str | Path, cwd: str | Path = ".") -> Path:
    """Where a report ``name`` goes without ``doc=``: the checkout's ``docs/NAME`` when run from a
    siamgrad checkout whose docs/ holds the report's evidence (``NAME`` with ``.csv``), else beside the
    runs in ``out_dir``; never a ``docs/`` folder of somebody else's."""
    here = Path(cwd)
    docs = here / "docs" / name
    checkout = (here / "src" / "siamgrad" / "experiments" / "runner.py").is_file()
    return docs if checkout and docs.with_suffix(".csv").is_file() else Path(out_dir) / name


def _split_roots(settings: list[str]) -> tuple[dict[str, str], list[str]]:
    """``root.NAME=PATH``: the data root of every run whose dataset is ``NAME`` (a grid or a set of
    grids may train on several datasets, e.g. ``root.cifar10=~/data root.stl10=~/stl10``)."""
    from siamgrad.data.datasets import DATASETS

    roots, rest = {}, []
    for s in settings:
        key, _, v = s.partition("=")
        if key.startswith("root."):
            name = key[len("root."):]
            if name not in DATASETS or not v:
                raise ConfigError(f"{s}: give root.NAME=PATH with NAME one of {', '.join(DATASETS)}")
            roots[name] = v
        else:
            rest.append(s)
    return roots, rest


def _split_only(settings: list[str]) -> tuple[list[str] | None, list[str]]:
    """``only=a,b``: the labels of the runs to train (all when absent)."""
    only, rest = None, []
    for s in settings:
        if s.startswith("only="):
            only = [x.strip() for x in s.partition("=")[2].split(",") if x.strip()]
            if not only:
                raise ConfigError("only= is empty; give run labels separated by commas, e.g. only=simclr,vicreg")
        else:
            rest.append(s)
    return only, rest


def setting_keys(settings: list[str]) -> list[str]:
    """The dotted config keys ``settings`` set (shorthands expanded), presets left out."""
    from siamgrad.config import parse_overrides

    return [k for k, _ in parse_overrides(settings) if k not in ("preset", "config")]


def varied_columns(exp: Experiment, size: str) -> list[str]:
    """The setting keys shown as columns: ``exp.columns``, or every key a run sets (``method.name`` aside)."""
    if exp.columns is not None:
        return list(exp.columns)
    keys: list[str] = []
    for _, settings in exp.runs_for(size):
        keys += [k for k in setting_keys(settings) if k != "method.name" and k not in keys]
    return keys


def column_name(key: str, keys: list[str]) -> str:
    """The last part of a dotted key, or the whole key where two keys end alike."""
    short = key.rpartition(".")[2]
    clash = sum(k.rpartition(".")[2] == short for k in keys) > 1
    return key if clash or short in ("method", "run") else short


def setting_value(cfg: Any, key: str) -> Any:
    """The resolved value of ``key`` in ``cfg`` (method options through the registry's resolution).

    ``None`` where the key is a method option that the configured method does not have.
    """
    if key == "method.name":
        return cfg.method.get("name")
    if key.startswith("method."):
        from siamgrad.methods.registry import available as methods_available
        from siamgrad.methods.registry import resolve_options

        name = cfg.method.get("name")
        opts = {k: v for k, v in cfg.method.items() if k != "name"}
        option = key[7:]
        if name not in methods_available():
            return opts.get(option)
        resolved = resolve_options(name, **opts)
        if option not in resolved or not _acts(name, option, resolved["form"]):
            return None
        return resolved[option]
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _acts(method: str, option: str, form: str) -> bool:
    """Whether ``option`` of ``method`` has an effect in ``form`` (a blank table cell otherwise)."""
    from siamgrad.methods.registry import REGISTRY

    return REGISTRY[method].options[option].acts_in(form)


def _cpu_seconds() -> float:
    """CPU time of this process so far (all threads, user + system), in seconds."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _last_eff_rank(run_dir: Path) -> float | None:
    from siamgrad.train.loop import read_metrics

    ranks = [r["diag/eff_rank"] for r in read_metrics(run_dir) if isinstance(r.get("diag/eff_rank"), (int, float))]
    return float(ranks[-1]) if ranks else None


def _baseline_first(runs: Runs) -> Runs:
    """``runs`` with the random-init baseline on in the first one: a grid computes it in its first run
    only (:func:`~siamgrad.experiments.grids._baseline_once`), which ``only=`` may leave out, and every
    contrast's floor needs it beside the raw pixels."""
    return [(label, [x for x in s if x != "eval.random_baseline=false"] if i == 0 else s)
            for i, (label, s) in enumerate(runs)]


def run_scores(run_dir: Path, step: int) -> dict[str, float | None]:
    """``val_knn`` (kNN top-1 on the validation split carved from the training images, where settings
    are chosen) and ``linear_top1`` (the linear probe on the test split) of the run's final backbone.

    Cached in ``scores.json`` for ``step``; ``None`` each when the data is gone or has no labels.
    """
    import torch

    from siamgrad.config import from_dict
    from siamgrad.errors import SiamgradError
    from siamgrad.eval.checkpoint import VAL_FRACTION, labeled_sets
    from siamgrad.eval.features import load_backbone
    from siamgrad.eval.protocols import PROTOCOLS, EvalSets, Settings, encoder_features
    from siamgrad.eval.splits import validation_split

    cache = run_dir / "scores.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("step") == step:
            return {k: saved.get(k) for k in ("val_knn", "linear_top1")}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:  # the checkpoint and the data read once for both figures
        backbone, state = load_backbone(str(run_dir), device=device)
        cfg = from_dict(state["config"])
        train, test, size = labeled_sets(cfg, state)
    except SiamgradError:
        return {"val_knn": None, "linear_top1": None}
    sets = EvalSets(train, test, tuple(state["mean"]), tuple(state["std"]), size)
    feats = encoder_features({"trained": backbone}, sets, device=device)
    ftr, fte = feats["trained"]
    # the validation split of siamgrad eval --split val: carved from the training images, its features a subset
    tr, va = validation_split(train.labels, VAL_FRACTION, cfg.seed)
    val_sets = EvalSets(train.subset(tr), train.subset(va), sets.mean, sets.std, size, "val")
    s = Settings.of(cfg)
    scores = {"val_knn": PROTOCOLS["knn"]({"trained": (ftr[tr], ftr[va])}, val_sets, s)["knn_top1"],
              "linear_top1": PROTOCOLS["linear"]({"trained": (ftr, fte)}, sets, s)["linear_test_top1"]}
    atomic_write_text(cache, json.dumps({"step": step, **scores}))
    return scores


def full_train_knn(run_dir: Path, step: int) -> float | None:
    """kNN top-1 of the run's final backbone with the whole labeled training split as the bank.

    Features in float32 on the run's device; cached in ``knn_full_train.json`` for ``step``. The
    sets are :func:`~siamgrad.data.sets.load_data`'s kNN sets with ``data.fraction=1`` (for
    streamed data its bounded samples).
    """
    import dataclasses

    import torch

    from siamgrad.data.sets import load_data
    from siamgrad.errors import SiamgradError
    from siamgrad.eval.knn import extract_features, knn_accuracy, load_backbone

    cache = run_dir / "knn_full_train.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("step") == step:
            return saved["knn"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone, state = load_backbone(str(run_dir / "latest.pt"), device=device)
    from siamgrad.config import from_dict

    cfg = from_dict(state["config"])
    d = dataclasses.replace(cfg.data, fraction=1.0)  # the whole split, whatever share the run trained on
    try:
        sets = load_data(d, seed=cfg.seed, size=state.get("image_size") or cfg.augment.size)
    except SiamgradError:  # the data is gone or unreadable: no figure
        return None
    if sets.knn_train is None or sets.knn_test is None:  # no labeled split to evaluate on: no figure
        return None
    train, test, size = sets.knn_train, sets.knn_test, sets.image_size
    mean, std = tuple(state["mean"]), tuple(state["std"])
    ftr = extract_features(backbone, train.images, mean, std, size=size, device=device)
    fte = extract_features(backbone, test.images, mean, std, size=size, device=device)
    acc = knn_accuracy(ftr, train.labels, fte, test.labels, k=cfg.eval.knn_k, temperature=cfg.eval.knn_t,
                       num_classes=len(train.classes))
    atomic_write_text(cache, json.dumps({"step": step, "knn": acc}))
    return acc


def run_experiment(name: str, settings: list[str] | None = None, out_dir: str = "runs/reproduce",
                   log: bool = True, exp: Experiment | None = None) -> Path:
    """Run (or continue) the grid ``name``; return the path of its ``results.md``.

    ``settings``: ``size=...``, ``only=...``, ``seeds=K`` and ``key=value`` settings applied to every
    run after the grid's own. ``exp``: the grid to run under ``name`` (default: the grid called
    ``name``, :func:`~siamgrad.experiments.grids.find`).
    """
    from siamgrad.config import build_config
    from siamgrad.train.loop import StepsMismatch, train

    if exp is None:
        exp = find(name)
    size, extra = _split_size(list(settings or []))
    seeds, rest = _split_seeds(extra)
    only, run_extra = _split_only(rest)  # extra keeps only= and seeds= for the command shown in results.md
    roots, run_extra = _split_roots(run_extra)
    if size not in exp.sizes:
        raise ConfigError(f"size={size} is not valid for '{name}'; choose one of: {', '.join(exp.sizes)}")
    runs = exp.runs_for(size)
    if only is not None:
        labels = [label for label, _ in runs]
        unknown = [o for o in only if o not in labels]
        if unknown:
            raise ConfigError(f"only={','.join(unknown)}: no such run in '{name}' size={size}; "
                              f"its runs are: {', '.join(labels)}")
        runs = [r for r in runs if r[0] in only]
    keys = varied_columns(exp, size)
    root = Path(out_dir) / f"{name}-{size}"
    rows: list[dict] = []
    # with seeds: every run of seed 0, then of seed 1, ... (an early complete first pass)
    plan = ([(label, label, s, None) for label, s in _baseline_first(runs)] if seeds is None else
            [(_seed_folder(root, label, k), label, [*s, f"seed={k}"], k) for k in seeds
             for label, s in _baseline_first(runs)])
    # an earlier invocation's rows for runs this one does not train stay in the table (only= adds up)
    planned = {(label, seed) for _, label, _, seed in plan}
    order = {label: i for i, (label, _) in enumerate(exp.runs_for(size))}
    kept = [r for r in _previous_rows(root / "results.csv") if (r["run"], r.get("seed")) not in planned]

    def table() -> list[dict]:
        same_kind = not kept or ("seed" in kept[0]) == ("seed" in rows[0])  # a table from before seeds= is replaced
        both = [*kept, *rows] if same_kind else rows
        cols = list(rows[-1])  # an earlier table's rows take this version's columns (blank where new)
        return sorted(({c: r.get(c) for c in cols} for r in both),
                      key=lambda r: (r.get("seed") or 0, order.get(r["run"], len(order))))

    for folder, label, run_settings, seed in plan:
        run_dir = root / folder
        timing = run_dir / "timing.json"
        own = [*exp.sizes[size], *run_settings, *run_extra]
        if roots:  # root.NAME=PATH: the data root of the runs on dataset NAME
            name_ = build_config(own).data.name
            own += [f"data.root={roots[name_]}"] if name_ in roots else []
        cfg = build_config([*own,
                            f"out_dir={root}", f"run_name={folder}", "progress=false"])
        row: dict[str, Any] = {"run": label, "method": cfg.method.get("name")}
        if seed is not None:
            row["seed"] = seed
        row.update({column_name(k, keys): setting_value(cfg, k) for k in keys})
        if log:
            print(f"[{name}/{size}] {folder} ...", flush=True)
        t0, c0 = time.monotonic(), _cpu_seconds()
        try:
            result = train(cfg, log=False)
        except StepsMismatch as e:  # the grid names the run folder: its user cannot pick another run_name
            raise ConfigError(f"run folder '{run_dir}' holds a checkpoint for {e.saved} steps, the grid's run takes "
                              f"{e.steps} (an earlier run with other epochs, batch_size or data settings); delete "
                              "that folder to retrain it, or give another --out") from None
        except TrainingError as e:  # a diverged run is a result of the grid, not the end of it
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            row.update({"knn_top1": None, "best_knn_top1": None, "random_init_knn": None, "raw_pixel_knn": None,
                        "eff_rank": _last_eff_rank(run_dir), "steps": None,
                        "minutes": (time.monotonic() - t0) / 60, "cpu_minutes": (_cpu_seconds() - c0) / 60,
                        "status": f"failed: {first}", **provenance()})
            if exp.full_train_knn:
                row["knn_full_train"] = None
            rows.append(_order(row, keys, exp))
            if log:
                print(f"[{name}/{size}] {folder}: failed ({first})", flush=True)
            _write_results(root, name, size, exp, table(), extra, len(plan) + len(kept))
            continue
        if not timing.exists() or result.step != json.loads(timing.read_text()).get("step"):
            atomic_write_text(timing, json.dumps({"seconds": time.monotonic() - t0,
                                                  "cpu_seconds": _cpu_seconds() - c0, "step": result.step,
                                                  "provenance": provenance()}))
        times = json.loads(timing.read_text())
        seconds, cpu = times["seconds"], times.get("cpu_seconds")
        row.update({"knn_top1": result.knn_accuracy, "best_knn_top1": result.best_knn_accuracy,
                    "random_init_knn": result.random_knn_accuracy,
                    "raw_pixel_knn": result.raw_pixel_knn_accuracy, "eff_rank": _last_eff_rank(result.run_dir),
                    **run_scores(result.run_dir, result.step),
                    "steps": result.step, "minutes": seconds / 60,
                    "cpu_minutes": None if cpu is None else cpu / 60, "status": "ok",
                    **times.get("provenance", {})})
        if exp.full_train_knn:
            row["knn_full_train"] = full_train_knn(result.run_dir, result.step)
        rows.append(_order(row, keys, exp))
        if log:
            knn = row["knn_top1"]
            shown = "n/a" if knn is None else f"{knn:.2f}%"
            print(f"[{name}/{size}] {folder}: kNN {shown} ({row['minutes']:.1f} min)", flush=True)
        _write_results(root, name, size, exp, table(), extra, len(plan) + len(kept))
    if not rows:
        raise ConfigError(f"experiment '{name}' has no runs for size={size}")
    return _write_results(root, name, size, exp, table(), extra, len(plan) + len(kept))


_RESULT_COLUMNS = ["knn_top1", "best_knn_top1", "knn_full_train", "random_init_knn", "raw_pixel_knn", "eff_rank",
                   "val_knn", "linear_top1", "steps", "minutes", "cpu_minutes", "status", *PROVENANCE_FIELDS]


def _order(row: dict, keys: list[str], exp: Experiment) -> dict:
    cols = ["run", *(["seed"] if "seed" in row else []), "method", *(column_name(k, keys) for k in keys)]
    cols += [c for c in _RESULT_COLUMNS if c != "knn_full_train" or exp.full_train_knn]
    return {c: row.get(c) for c in cols}


# --------------------------------------------------------------------------------------------
# results


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if v != 0 and (abs(v) < 0.01 or abs(v) >= 1e5):
            return f"{v:g}"
        return f"{v:.2f}"
    return "" if v is None else str(v)


_SEED_METRICS = ("knn_top1", "knn_full_train")


def seed_summary(rows: list[dict]) -> list[dict]:
    """One row per run label (first-seen order) of a grid run with ``seeds=K``.

    The label's settings columns, ``seeds`` (how many finished with status ``ok``), and for
    ``knn_top1`` (and ``knn_full_train`` where the grid has it) the mean over those seeds with its
    95% Student-t interval as ``METRIC``, ``METRIC_low``, ``METRIC_high`` (the bounds blank below 2
    seeds), and the means of ``random_init_knn``, ``raw_pixel_knn`` and ``minutes``.
    """
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["run"], []).append(r)
    skip = {*_RESULT_COLUMNS, "seed"}
    out = []
    for label, rs in groups.items():
        s = {c: v for c, v in rs[0].items() if c not in skip}
        ok = [r for r in rs if r.get("status") == "ok"]
        s["seeds"] = len(ok)
        for m in (m for m in _SEED_METRICS if m in rs[0]):
            vals = [float(r[m]) for r in ok if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
            iv = mean_interval(vals) if vals else None
            s[m] = None if iv is None else iv.mean
            s[f"{m}_low"] = None if iv is None or iv.n < 2 else iv.low
            s[f"{m}_high"] = None if iv is None or iv.n < 2 else iv.high
        for c in ("random_init_knn", "raw_pixel_knn", "minutes"):  # means of the seeds that have them
            vals = [float(r[c]) for r in ok if isinstance(r.get(c), (int, float))]
            s[c] = sum(vals) / len(vals) if vals else None
        out.append(s)
    return out


def _ci_cell(s: dict, m: str) -> str:
    """``mean ± half-width [low, high]``, or the mean alone below 2 seeds."""
    if s.get(m) is None:
        return ""
    if s.get(f"{m}_low") is None:
        return _fmt(s[m])
    lo, hi = s[f"{m}_low"], s[f"{m}_high"]
    return f"{_fmt(s[m])} ± {_fmt((hi - lo) / 2)} [{_fmt(lo)}, {_fmt(hi)}]"


def _previous_rows(path: Path) -> list[dict]:
    """The rows of an earlier ``results.csv`` (none if there is none), numbers read back as numbers."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: v if k in ("run", "method", "status", "commit", "cpu", "torch") else _cell(v)
                 for k, v in row.items()} for row in csv.DictReader(f)]


def _cell(text: str) -> Any:
    # int() and float() rather than config's YAML parsing, which reads "1e-05" back as a string
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def write_csv(path: Path, rows: list[dict], fields: tuple[str, ...] | None = None) -> None:
    """``rows`` (dicts with the same keys, None as an empty cell) as a CSV file, written atomically;
    ``fields`` names the columns (default: the first row's keys), so no rows still gives a header."""
    cols = list(fields or rows[0].keys())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows([{c: ("" if r[c] is None else r[c]) for c in cols} for r in rows])
    atomic_write_text(path, buf.getvalue())


def _write_results(root: Path, name: str, size: str, exp: Experiment, rows: list[dict],
                   extra: list[str], total: int) -> Path:
    """Write results.csv/.md/.png of ``rows``; ``total``: the runs this invocation trains."""
    cols = list(rows[0].keys())
    write_csv(root / "results.csv", rows)
    summary = seed_summary(rows) if "seed" in cols else None
    if summary:
        write_csv(root / "results_seeds.csv", summary)
    cmd = " ".join(["siamgrad reproduce", name, f"size={size}", *extra])
    done = len(rows)
    md = [f"# {name} ({size})", "", exp.description, "", f"Command: `{cmd}`", "",
          "Shared settings: `" + " ".join(exp.sizes[size]) + "`", ""]
    if done < total:
        md += [f"In progress: {done} of {total} runs.", ""]
    if summary:
        metrics = [m for m in _SEED_METRICS if m in summary[0]]
        after = ["random_init_knn", "raw_pixel_knn", "minutes"]
        scols = [c for c in summary[0] if c not in (*metrics, *after) and not c.endswith(("_low", "_high"))]
        md += ["Over seeds (mean ± half-width [95% Student-t interval]):", "",
               "| " + " | ".join([*scols, *metrics, *after]) + " |",
               "|" + "---|" * (len(scols) + len(metrics) + len(after))]
        md += ["| " + " | ".join([*(_fmt(s[c]) for c in scols), *(_ci_cell(s, m) for m in metrics),
                                  *(_fmt(s[c]) for c in after)]) + " |" for s in summary]
        md += ["", "Every run and seed:", ""]
    md += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    if exp.paper:
        md += ["", f"Paper: {exp.paper}"]
    atomic_write_text(root / "results.md", "\n".join(md) + "\n")
    _plot(root / "results.png", name, size, exp, summary or rows)
    if _plot_curves(root / "curves.png", root, name, size, rows):
        md += ["", "Learning curves (kNN top-1 on the test split at every evaluation): ![curves](curves.png)"]
        atomic_write_text(root / "results.md", "\n".join(md) + "\n")
    return root / "results.md"


def _plot_curves(path: Path, root: Path, name: str, size: str, rows: list[dict]) -> bool:
    """kNN against epoch for every run of the grid (a line per run, seeds in the same colour), from the
    runs' ``metrics.jsonl``; False (nothing written) when no run evaluated more than once."""
    import io as _io

    import matplotlib
    from matplotlib.figure import Figure

    from siamgrad.report.metrics import read_metrics

    curves: dict[str, list[list[tuple[float, float]]]] = {}
    for r in rows:
        seed = r.get("seed")
        folder = root / (r["run"] if seed is None else _seed_folder(root, r["run"], int(seed)))
        if not (folder / "metrics.jsonl").is_file():
            continue
        pts = [(float(m["epoch"]), float(m["knn_acc"])) for m in read_metrics(folder)
               if isinstance(m.get("knn_acc"), (int, float)) and isinstance(m.get("epoch"), (int, float))]
        if len(pts) > 1:
            curves.setdefault(r["run"], []).append(pts)
    if not curves:
        return False
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab20"]
    for i, (label, seeds) in enumerate(curves.items()):
        for k, pts in enumerate(seeds):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=cmap(i % 20), lw=1.2, alpha=0.8,
                    label=label if k == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title(f"{name} ({size}): learning curves")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
    return True


def _group(row: dict, hue: list[str]) -> str:
    parts = []
    for c in hue:
        v = row.get(c)
        if v is None:
            continue
        parts.append(str(v) if c == "method" else f"{c}={_fmt(v)}")
    return " ".join(parts) or "runs"


def _plot(path: Path, name: str, size: str, exp: Experiment, rows: list[dict]) -> None:
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: the global backend stays the caller's

    def acc(r: dict) -> float:
        v = r.get("knn_top1")
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else float("nan")

    def err(r: dict) -> float:  # half-width of the seeds' interval (summary rows), else none
        lo, hi = r.get("knn_top1_low"), r.get("knn_top1_high")
        return (hi - lo) / 2 if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else 0.0

    if exp.x and any(exp.x in r for r in rows):
        fig = Figure(figsize=(7, 4.5))
        ax = fig.subplots()
        xs = [r.get(exp.x) for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs)
        ticks = sorted(set(xs)) if numeric else list(dict.fromkeys(xs))
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(_group(r, exp.hue), []).append(r)
        for label, rs in groups.items():
            pts = sorted(((ticks.index(r.get(exp.x)), acc(r), err(r)) for r in rs), key=lambda p: p[0])
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                        capsize=3, label=label)
        ax.set_xticks(range(len(ticks)), [_fmt(t) for t in ticks])
        ax.set_xlabel(exp.x)
        legend_loc = "best"
    else:
        fig = Figure(figsize=(max(6, 0.7 * len(rows)), 4.5))
        ax = fig.subplots()
        labels = [r["run"] for r in rows]
        colors = None
        if exp.hue:
            names = list(dict.fromkeys(_group(r, exp.hue) for r in rows))
            cmap = matplotlib.colormaps["tab10"]
            colors = [cmap(names.index(_group(r, exp.hue)) % 10) for r in rows]
        ax.bar(labels, [acc(r) for r in rows], yerr=[err(r) for r in rows], capsize=3, color=colors or "tab:blue")
        for tick in ax.get_xticklabels():
            tick.set_rotation(35)
            tick.set_horizontalalignment("right")
        legend_loc = "lower right"
    for ref, style, text in (("random_init_knn", "--", "random init"), ("raw_pixel_knn", ":", "raw pixels")):
        v = next((r.get(ref) for r in rows if r.get(ref) is not None), None)
        if v is not None:
            ax.axhline(v, color="gray", linestyle=style, label=f"{text} ({v:.1f}%)")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title(f"{name} ({size})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=legend_loc, fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
