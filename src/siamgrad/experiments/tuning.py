"""Equal tuning: every method gets the same small search, scored on the validation split only.

    siamgrad reproduce tune [size=cpu24] [only=simclr,moco] [train=false] [doc=PATH] [key=value ...]

A :class:`Space` is a method's run (its grid settings) and the axes searched for it: its own
coefficient (temperature, lambda, lambd, the covariance weight; a gradient form's balance lambda),
its EMA momentum where it has one, then the learning rate. The original losses come first. The search is coordinate-wise and the same for every method: each
axis in turn tries its candidates with the values chosen so far held (the others at their starting
value, the middle candidate), and keeps the one with the highest kNN accuracy on the validation
split carved from the training images (``val_knn``, :func:`~siamgrad.experiments.runner.run_scores`),
never the test split. So every method trains ``1 + sum(len(axis) - 1)`` runs: three axes of three
candidates give seven.

Each trial is one run of a grid ``tune_METHOD`` at the claims' size, trained by the runner (a
finished run is reused). Every trial's figures and provenance go to the trials file beside the
report (``docs/tuning.csv``); a trial found there is not trained again, so the search continues on a
checkout without the run folders. The report (``docs/tuning.md``) gives per method every trial,
the chosen values and the command; the chosen values are data in
:data:`siamgrad.experiments.grids.TUNED`, which tests/test_tuning.py holds to the trials file.

>>> [a.key for a in SPACES["simclr"].axes]
['method.temperature', 'optim.lr']
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from siamgrad.checkpoint import atomic_write_text
from siamgrad.errors import ConfigError
from siamgrad.experiments import runner
from siamgrad.experiments.grids import _CPU_OPTS, CPU24, SUBSET, Experiment
from siamgrad.experiments.provenance import FIELDS as PROVENANCE_FIELDS


@dataclass(frozen=True)
class Axis:
    key: str  # a setting, e.g. "method.temperature"
    values: tuple[float, ...]  # candidates; the middle one is where the search starts

    @property
    def start(self) -> float:
        return self.values[len(self.values) // 2]


@dataclass(frozen=True)
class Space:
    method: str  # the label of the run tuned (a method's original loss)
    base: tuple[str, ...]  # its settings in the grids
    axes: tuple[Axis, ...]  # searched in this order


_LR = Axis("optim.lr", (0.15, 0.3, 0.6))  # the CPU preset's 0.3, halved and doubled
_EMA = Axis("method.momentum", (0.96, 0.99, 0.996))

# The coefficient candidates: the CPU grids' value in the middle, a factor of 2-4 either side
SPACES: dict[str, Space] = {s.method: s for s in (
    Space("simclr", tuple(_CPU_OPTS["simclr"]), (Axis("method.temperature", (0.1, 0.2, 0.5)), _LR)),
    Space("moco", tuple(_CPU_OPTS["moco"]), (Axis("method.temperature", (0.1, 0.2, 0.5)), _EMA, _LR)),
    Space("byol", tuple(_CPU_OPTS["byol"]), (_EMA, _LR)),
    Space("simsiam", tuple(_CPU_OPTS["simsiam"]), (_LR,)),
    Space("directpred", tuple(_CPU_OPTS["directpred"]), (_EMA, _LR)),
    # l2-normalized, as width_scaled (the grids' setting) implies; 0.04 is the width-scaled value at 128-d
    Space("barlow_twins", ("method=barlow_twins", "method.l2=true"), (Axis("method.lambd", (0.01, 0.04, 0.16)), _LR)),
    Space("vicreg", tuple(_CPU_OPTS["vicreg"]), (Axis("method.cov_weight", (0.25, 1.0, 4.0)), _LR)),
    Space("unigrad", tuple(_CPU_OPTS["unigrad"]), (Axis("method.lam", (2.0, 5.0, 12.5)), _EMA, _LR)),
    # the unified-gradient forms of Table 1 (stop-gradient target): their balance lambda, as UniGrad's paper
    # searched it for every form, then the learning rate; BYOL's and SimSiam's forms take lambda from F
    # ('auto'), so only their learning rate
    *(Space(f"{m}-gradient", (*_CPU_OPTS[m], "method.form=gradient", "method.target=stopgrad"),
            (Axis("method.lam", lam), _LR))
      for m, lam in (("simclr", (0.5, 1.0, 2.0)), ("moco", (0.5, 1.0, 2.0)), ("barlow_twins", (1.5, 3.0, 6.0)),
                     ("vicreg", (1.5, 3.0, 6.0)))),
    *(Space(f"{m}-gradient", (*_CPU_OPTS[m], "method.form=gradient", "method.target=stopgrad"), (_LR,))
      for m in ("byol", "simsiam")),
)}

TRIAL_FIELDS = ("method", "axis", "value", "settings", "val_knn", "knn_top1", "linear_top1", "minutes",
                *PROVENANCE_FIELDS)


def _slug(choice: dict[str, float]) -> str:
    return "-".join(f"{k.rpartition('.')[2]}{v:g}" for k, v in choice.items())


def _settings(space: Space, choice: dict[str, float]) -> list[str]:
    return [*space.base, *(f"{k}={v:g}" for k, v in choice.items())]


def read_trials(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != TRIAL_FIELDS:
            raise ConfigError(f"{path}: expected the columns {','.join(TRIAL_FIELDS)}; delete it to search afresh")
        return list(reader)


def _score(row: dict) -> float:
    try:
        return float(row.get("val_knn") or "nan")
    except ValueError:
        return float("nan")


def search(space: Space, size_settings: list[str], trials: list[dict], *, train: bool, out_dir: str,
           extra: list[str], log: bool, on_trial=None) -> tuple[dict[str, float], list[dict]]:
    """The coordinate search of one method: (the chosen values, the trials it read or trained).
    ``on_trial(row)`` is called after each trial trained."""
    choice = {a.key: a.start for a in space.axes}
    done = {r["settings"]: r for r in trials if r["method"] == space.method}
    seen: list[dict] = []
    for axis in space.axes:
        scored = []
        for value in axis.values:
            cand = {**choice, axis.key: value}
            settings = " ".join(_settings(space, cand))
            row = done.get(settings)
            if row is None and train:
                row = _train(space, cand, size_settings, out_dir, extra, log)
                done[settings] = row
                if on_trial is not None:
                    on_trial(row)
            if row is None:
                continue
            seen.append({**row, "axis": axis.key, "value": f"{value:g}"})
            scored.append((_score(row), value))
        scored = [(s, v) for s, v in scored if s == s]  # a diverged trial (nan) is never chosen
        if scored:
            # the highest val kNN; a tie keeps the starting value, then the smaller one
            best = max(scored, key=lambda sv: (sv[0], sv[1] == axis.start, -sv[1]))
            choice[axis.key] = best[1]
    return choice, seen


def _train(space: Space, cand: dict[str, float], size_settings: list[str], out_dir: str, extra: list[str],
           log: bool) -> dict:
    label = _slug(cand)
    name = f"tune_{space.method}"
    exp = Experiment(f"the tuning trials of {space.method}", sizes={"tune": size_settings},
                     runs=[(label, _settings(space, cand))], columns=[])
    runner.run_experiment(name, ["size=tune", *extra], out_dir=out_dir, log=log, exp=exp)
    rows = [r for r in csv.DictReader((Path(out_dir) / f"{name}-tune" / "results.csv").open()) if r["run"] == label]
    row = rows[-1] if rows else {}
    return {"method": space.method, "settings": " ".join(_settings(space, cand)),
            **{f: row.get(f, "") for f in TRIAL_FIELDS if f not in ("method", "axis", "value", "settings")}}


def _split(settings: list[str]) -> tuple[list[str] | None, bool, str | None, list[str]]:
    only, train, doc, rest = None, True, None, []
    for s in settings:
        key, _, v = s.partition("=")
        if key == "only":
            only = [x for x in v.split(",") if x]
            unknown = [x for x in only if x not in SPACES]
            if unknown or not only:
                raise ConfigError(f"only={v}: tune knows {', '.join(SPACES)}")
        elif key == "train":
            train = runner.flag(key, v)
        elif key == "doc":
            doc = v
        elif key in ("size", "seeds"):
            raise ConfigError(f"{key}= does not apply to 'reproduce tune': it searches at the claims' CPU "
                              "size with one seed")
        else:
            rest.append(s)
    return only, train, doc, rest


def default_doc(out_dir: str | Path, cwd: str | Path = ".") -> Path:
    """Where the report goes without ``doc=`` (:func:`~siamgrad.experiments.runner.report_path`)."""
    return runner.report_path("tuning.md", out_dir, cwd)


def run_tuning(settings: list[str] | None = None, out_dir: str = "runs/reproduce", log: bool = True) -> Path:
    """Search every method of :data:`SPACES` (or ``only=``), write the trials file and the report."""
    only, train, doc, extra = _split(list(settings or []))
    path = Path(doc) if doc is not None else default_doc(out_dir)
    trials_path = path.with_suffix(".csv")
    trials = read_trials(trials_path)
    known = {(r["method"], r["settings"]): r for r in trials}

    def keep(row: dict) -> None:  # every trial written as it ends: a stopped search keeps its trials
        known[(row["method"], row["settings"])] = row
        rows = list(known.values())
        runner.write_csv(trials_path, [{f: r.get(f, "") for f in TRIAL_FIELDS} for r in rows], TRIAL_FIELDS)
        atomic_write_text(path, report(rows))

    for name, space in SPACES.items():
        if only is not None and name not in only:
            continue
        _, seen = search(space, CPU24, trials, train=train, out_dir=out_dir, extra=extra, log=log, on_trial=keep)
        for r in seen:  # the axis each trial was read for
            known[(r["method"], r["settings"])] = {**known.get((r["method"], r["settings"]), {}), **r}
    trials = list(known.values())
    runner.write_csv(trials_path, [{f: r.get(f, "") for f in TRIAL_FIELDS} for r in trials], TRIAL_FIELDS)
    atomic_write_text(path, report(trials))
    return path


def chosen(trials: list[dict]) -> dict[str, dict[str, float]]:
    """Per method with trials: the values the coordinate search picks from them (trains nothing)."""
    out = {}
    for name, space in SPACES.items():
        if any(r["method"] == name for r in trials):
            out[name] = search(space, CPU24, trials, train=False, out_dir="", extra=[], log=False)[0]
    return out


def report(trials: list[dict]) -> str:
    picks = chosen(trials)
    lines = ["# Equal tuning of every method", "",
             "Each method's run at the claims' CPU size (`" + " ".join(CPU24).replace(SUBSET, "../shared/data/cifar10-subset")
             + "`), one seed, searched "
             "coordinate-wise over the same kind of axes (its own coefficient, its EMA momentum where it has one, "
             "the learning rate), three candidates each, scored by kNN top-1 on the validation split carved from "
             "the training images (20% of every class), never the test split. The spaces are data in "
             "`src/siamgrad/experiments/tuning.py`; the values chosen are in `TUNED` of "
             "`src/siamgrad/experiments/grids.py`, held to this table by tests/test_tuning.py. Test kNN and the "
             "linear probe are shown for the record, not used.", "",
             "| method | chosen | trials | best val kNN | its test kNN | its linear probe |",
             "|---|---|---|---|---|---|"]
    for name, space in SPACES.items():
        rows = [r for r in trials if r["method"] == name]
        axes = len(space.axes)
        want = 1 + sum(len(a.values) - 1 for a in space.axes)
        if name not in picks:
            lines.append(f"| {name} | not searched yet | 0 of {want} | | | |")
            continue
        pick = picks[name]
        settings = " ".join(_settings(space, pick))
        best = next((r for r in rows if r["settings"] == settings), {})
        lines.append(f"| {name} | {', '.join(f'{k}={v:g}' for k, v in pick.items())} | {len(rows)} of {want} "
                     f"({axes} axes) | {_cell(best.get('val_knn'))} | {_cell(best.get('knn_top1'))} | "
                     f"{_cell(best.get('linear_top1'))} |")
    lines += ["", "## Trials", "", "| method | settings | val kNN | test kNN | linear | minutes | commit | CPU |",
              "|---|---|---|---|---|---|---|---|"]
    for r in trials:
        lines.append(f"| {r['method']} | `{r['settings']}` | {_cell(r.get('val_knn'))} | {_cell(r.get('knn_top1'))} | "
                     f"{_cell(r.get('linear_top1'))} | {_cell(r.get('minutes'))} | {r.get('commit', '')} | "
                     f"{r.get('cpu', '')} |")
    lines += ["", "Command: `siamgrad reproduce tune` (trials in docs/tuning.csv are not trained again; "
              "`only=METHOD,...` searches some methods).", ""]
    return "\n".join(lines)


def _cell(v) -> str:
    try:
        return f"{float(v):.2f}"
    except (TypeError, ValueError):
        return ""
