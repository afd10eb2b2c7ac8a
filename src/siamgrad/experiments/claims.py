"""The seed papers' claims as data, each tested on named runs of a grid, with a verdict.

    siamgrad reproduce claims [size=cpu] [seeds=3] [train=false] [doc=docs/claims.md] [key=value ...]

The report goes to ``docs/claims.md`` at ``size=cpu``, ``docs/claims_SIZE.md`` at another size.

A :class:`Claim` is a statement of a paper (UniGrad, DirectPred, arXiv 2312.10725) with the paper's
own figure and where it stands, and one or more :class:`Contrast` s: a metric of run ``a`` of a
grid against run ``b`` (the per-seed difference ``a - b``, or the ratio ``a / b``, paired over the
seeds both finished) or against a fixed value (``b`` empty), with a tolerance and a kind:

* ``alike``: ``|a - b| <= tol``. Holds when the whole 95% interval lies in ``[-tol, tol]``, fails
  when it lies wholly outside, inconclusive when it straddles ``-tol`` or ``tol``.
* ``greater``: ``a - b > tol`` (``tol`` may be negative: "at least as well, within ``-tol``").
  Holds when the interval lies above ``tol``, fails when below, inconclusive when it contains it.
* ``at_most`` / ``at_least``: the same against a fixed value, for one run's metric (``b`` empty).

A claim holds when every contrast holds, fails when any fails, is inconclusive otherwise, and is
"not measured" while some contrast has fewer than ``MIN_SEEDS`` (3) paired seeds or no data at
all. A seed whose run failed (a non-finite loss) is left out of the contrasts that read it; the
grid's table still shows the failure. ``siamgrad reproduce claims`` trains the runs the claims name with ``seeds=K`` (finished
runs are reused; each grid's ``results.csv`` gains their rows), reads the per-seed rows
back and writes the report (``docs/claims.md`` by default). ``train=false`` only reads what is there.

Run folders are scratch; the report is not. Every per-seed value a contrast reads is kept in the
evidence file beside the report (``docs/claims.csv``), merged with what the run folders hold (fresh
values win), so the report regenerates on a checkout without them.

Grids are :data:`~siamgrad.experiments.grids.EXPERIMENTS` plus :data:`~siamgrad.experiments.grids.CLAIM_GRIDS`,
the runs no paper grid holds (predictor-free BYOL and SimSiam, claim (o)'s timed pair).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from siamgrad.checkpoint import atomic_write_text
from siamgrad.errors import ConfigError
from siamgrad.experiments import runner
from siamgrad.experiments.grids import GPU_SUBSET_EPOCHS, find
from siamgrad.experiments.stats import Interval, mean_interval, seeds_for_margin

KINDS = ("alike", "greater", "at_most", "at_least")
MIN_SEEDS = 3  # a verdict needs at least this many paired seeds
HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED = "holds", "fails", "inconclusive", "not measured"


@dataclass(frozen=True)
class Contrast:
    """``metric`` of run ``a`` vs run ``b`` (or vs ``tol`` alone when ``b`` is empty) in ``grid``."""

    grid: str
    a: str
    b: str | None = None
    kind: str = "alike"
    tol: float = 1.0
    metric: str = "knn_top1"
    ratio: bool = False  # compare a / b (interval on the log of the per-seed ratios) instead of a - b
    b_grid: str | None = None  # the grid of run b when it is another one (paired by seed across grids)

    def runs(self) -> list[tuple[str, str]]:
        """(grid, label) of the runs this contrast reads."""
        return [(self.grid, self.a)] + ([] if self.b is None else [(self.b_grid or self.grid, self.b)])

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"contrast kind '{self.kind}' is not one of {', '.join(KINDS)}")
        if (self.b is None) != (self.kind in ("at_most", "at_least")):
            raise ConfigError(f"contrast {self.a}: kinds alike/greater compare two runs, at_most/at_least one")

    def describe(self) -> str:
        rel = {"alike": "≈", "greater": ">", "at_most": "≤", "at_least": "≥"}[self.kind]
        if self.b is None:
            return f"{self.grid}/{self.a} {self.metric} {rel} {self.tol:g}"
        op = "/" if self.ratio else "−"
        bound = f"±{self.tol:g}" if self.kind == "alike" else f"{self.tol:g}"
        b = self.b if self.b_grid in (None, self.grid) else f"{self.b_grid}/{self.b}"
        return f"{self.grid}: {self.a} {op} {b} ({self.metric}) {rel} {bound}"


@dataclass(frozen=True)
class Claim:
    key: str  # (a)..(o) of the issue
    paper: str
    statement: str
    contrasts: tuple[Contrast, ...]
    paper_figure: str  # what the paper reports
    source: str  # where in the paper
    note: str = ""  # how the contrast reads the claim at CPU size, what it leaves out

    def grids(self) -> list[str]:
        return list(dict.fromkeys(g for c in self.contrasts for g, _ in c.runs()))


# --------------------------------------------------------------------------------------------
# verdicts


def verdict(kind: str, iv: Interval, tol: float) -> str:
    """holds / fails / inconclusive of one contrast from its interval (see the module docstring)."""
    lo, hi = iv.low, iv.high
    if kind == "alike":
        if -tol <= lo and hi <= tol:
            return HOLDS
        return FAILS if hi < -tol or lo > tol else INCONCLUSIVE
    if kind in ("greater", "at_least"):
        return HOLDS if lo > tol or (kind == "at_least" and lo >= tol) else FAILS if hi < tol else INCONCLUSIVE
    if kind == "at_most":
        return HOLDS if hi <= tol else FAILS if lo > tol else INCONCLUSIVE
    raise ConfigError(f"contrast kind '{kind}' is not one of {', '.join(KINDS)}")


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its contrasts': every one holds -> holds; any fails -> fails."""
    if not verdicts or NOT_MEASURED in verdicts:
        return NOT_MEASURED
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


# results: (grid, run label) -> {seed: value of each metric}
Results = dict[tuple[str, str], dict[int, dict]]


@dataclass
class ContrastResult:
    contrast: Contrast
    interval: Interval | None  # None: no paired seed has the metric
    seeds: list[int]
    verdict: str  # the interval's verdict, or NOT_MEASURED below min_seeds


@dataclass
class ClaimResult:
    claim: Claim
    contrasts: list[ContrastResult] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return combine([c.verdict for c in self.contrasts])

    @property
    def seeds(self) -> int:
        return min((len(c.seeds) for c in self.contrasts), default=0)


def _value(row: dict, metric: str) -> float | None:
    v = row.get(metric)
    if v is None and metric.startswith("minutes_to_knn@"):  # the first evaluation at or above the target
        target = float(metric.partition("@")[2])
        v = next((m for m, acc in row.get("knn_curve", []) if acc >= target), None)
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def evaluate_contrast(c: Contrast, results: Results, min_seeds: int = MIN_SEEDS) -> ContrastResult:
    a = results.get((c.grid, c.a), {})
    b = results.get((c.b_grid or c.grid, c.b), {}) if c.b is not None else None
    pairs = []
    for seed in sorted(a):
        va = _value(a[seed], c.metric)
        vb = None if b is None else _value(b.get(seed, {}), c.metric)
        if va is None or (b is not None and vb is None):
            continue
        if b is None:
            pairs.append((seed, va))
        elif c.ratio:
            if va <= 0 or vb <= 0:
                continue
            pairs.append((seed, math.log(va / vb)))
        else:
            pairs.append((seed, va - vb))
    if not pairs:
        return ContrastResult(c, None, [], NOT_MEASURED)
    iv = mean_interval([v for _, v in pairs])
    if c.ratio:  # back from the log scale: a geometric mean ratio and its interval
        iv = Interval(math.exp(iv.mean), math.exp(iv.low), math.exp(iv.high), iv.n, iv.sd, iv.level)
    seeds = [s for s, _ in pairs]
    return ContrastResult(c, iv, seeds, verdict(c.kind, iv, c.tol) if len(seeds) >= min_seeds else NOT_MEASURED)


def seeds_to_settle(r: ContrastResult) -> int | None:
    """For an inconclusive contrast: about how many seeds would give an interval clear of the
    tolerance it straddles, if the mean and the seed-to-seed spread stay as measured (``None``: more
    than a thousand, the mean sits on the tolerance)."""
    c, iv = r.contrast, r.interval
    if r.verdict != INCONCLUSIVE or iv is None:
        raise ConfigError("seeds_to_settle reads an inconclusive contrast with an interval")
    log = math.log if c.ratio else (lambda x: x)  # a ratio's interval is on the log scale
    m, tol = log(iv.mean), log(c.tol)
    if c.kind == "alike":
        margin = min(tol - m, m + tol) if -tol <= m <= tol else abs(m) - tol
    else:
        margin = abs(m - tol)
    return seeds_for_margin(iv.sd, margin, iv.level)


def evaluate(claims: list[Claim], results: Results, min_seeds: int = MIN_SEEDS) -> list[ClaimResult]:
    return [ClaimResult(cl, [evaluate_contrast(c, results, min_seeds) for c in cl.contrasts]) for cl in claims]


# --------------------------------------------------------------------------------------------
# the registry

# the kNN accuracy whose time to reach claim (o) compares: just above the subset's raw pixels (34.9%)
_SPEED_TARGET = 35.0

# effective rank counted as collapsed: under a tenth of the CPU size's 128-d projector
_COLLAPSED_RANK = 12.8

_T1, _T2 = "unigrad_table1", "unigrad_table2"
_UG = "UniGrad (arXiv 2112.05141)"
_DP = "DirectPred (arXiv 2102.06810)"
_SP = "Small projectors, many views (arXiv 2312.10725)"


def _alike(grid: str, pairs: list[tuple[str, str]], tol: float = 1.0,
           metric: str = "knn_top1") -> tuple[Contrast, ...]:
    return tuple(Contrast(grid, a, b, "alike", tol, metric) for a, b in pairs)


def _greater(grid: str, pairs: list[tuple[str, str]], tol: float = 0.0,
             metric: str = "knn_top1") -> tuple[Contrast, ...]:
    return tuple(Contrast(grid, a, b, "greater", tol, metric) for a, b in pairs)


_T1_METHODS = ("simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg")
_T2_METHODS = ("simclr", "byol", "barlow_twins", "unigrad")
# Table 1's stop-gradient runs: Table 2's stop-gradient rows train the same way, so they are not trained twice
_T1_STOPGRAD = {"simclr": "simclr-gradient", "byol": "byol-gradient", "barlow_twins": "barlow_twins-gradient",
                "unigrad": "unigrad"}
# (grid, run) of every other method's original loss at the CPU size's shared settings
_ORIGINALS = [*((_T1, f"{m}-original") for m in _T1_METHODS), ("directpred", "directpred")]

CLAIMS: list[Claim] = [
    Claim("a", _UG, "each method's unified-gradient form performs like its original loss",
          _alike(_T1, [(f"{m}-gradient", f"{m}-original") for m in _T1_METHODS]),
          "original losses 62.7-68.7, their gradient forms 67.6-67.9 (ImageNet, 100 epochs, linear eval)",
          "Table 1",
          "within 1 kNN point for each of the six methods; the gradient forms use a stop-gradient target, "
          "the original losses their own branch (MoCo's and BYOL's momentum encoder)"),
    Claim("b", _UG, "within each family the simplified gradient forms perform alike",
          _alike(_T1, [("simclr-gradient", "moco-gradient"), ("byol-gradient", "simsiam-gradient"),
                       ("barlow_twins-gradient", "vicreg-gradient")]),
          "the gradient forms of all six methods within 67.6-67.9 without a momentum encoder", "Table 1",
          "the two gradient forms of each family within 1 point"),
    Claim("c", _UG, "with the same target branch the three families' unified forms perform alike",
          _alike(_T2, [("simclr-momentum", "byol-momentum"), ("byol-momentum", "barlow_twins-momentum"),
                       ("simclr-momentum", "barlow_twins-momentum")]),
          "69.8-70.2 with a momentum encoder for all three families", "Table 2",
          "momentum target, every pair within 1 point"),
    Claim("d", _UG, "a momentum encoder improves every family over stop-gradient",
          tuple(Contrast(_T2, f"{m}-momentum", _T1_STOPGRAD[m], "greater", 0.0, b_grid=_T1) for m in _T2_METHODS),
          "about +2 points (67.6-67.9 -> 69.8-70.2)", "Table 2",
          "the paired gain above 0 for each method (the paper's 2 points is at ImageNet scale); the "
          "stop-gradient side is Table 1's runs, which train as Table 2's stop-gradient rows (the EMA momentum "
          "those set is unused without a momentum target; UniGrad's loss has its gradient form's gradient)"),
    Claim("e", _UG, "momentum features in the positive term only perform like a full momentum target",
          _alike(_T2, [(f"{m}-momentum_positive", f"{m}-momentum") for m in _T2_METHODS]),
          "as good as the full momentum encoder (the paper's per-method figures are not transcribed here)", "Table 2",
          "within 1 point for each method"),
    Claim("f", _UG, "SimCLR with a momentum encoder performs like MoCo: a large negative set is not needed",
          (Contrast(_T2, "simclr-momentum", "moco-original", "alike", 1.0, b_grid=_T1),),
          "SimCLR's form with a momentum encoder within the 69.8-70.2 of the momentum-encoder forms, like MoCo's "
          "(per-method figures not transcribed here)",
          "Table 2",
          "moco-original lives in unigrad_table1 with the same CPU settings; the contrast pairs it by seed "
          "across the two grids"),
    Claim("g", _UG, "UniGrad performs at least as well as every other method at equal budget",
          tuple(Contrast(_T2, "unigrad-momentum", b, "greater", -1.0, b_grid=g) for g, b in _ORIGINALS),
          "UniGrad 70.3 vs the original losses 62.7-68.7 and the momentum-encoder forms 69.8-70.2 (ImageNet, "
          "100 epochs, linear eval)", "Tables 1 and 2",
          "UniGrad's kNN at least every other method's minus 1 point: UniGrad with its momentum encoder "
          "(Table 2's run) against each original loss (Table 1's runs, DirectPred's from its grid), all "
          "with the same CPU settings and 4 epochs"),
    Claim("h", _DP, "DirectPred performs like a trained 2-layer predictor",
          (Contrast("directpred", "directpred", "byol-mlp_predictor", "alike", 1.0),),
          "DirectPred on a par with BYOL's 2-layer predictor (ImageNet linear eval; figures not transcribed here)",
          "ImageNet experiments",
          "within 1 point"),
    Claim("i", _DP, "DirectPred beats a trained linear predictor",
          (Contrast("directpred", "directpred", "byol-linear_predictor", "greater", 0.0),),
          "+2.5 points at 300 epochs, +5 at 60 epochs (ImageNet linear eval)", "ImageNet experiments",
          "the paired gain above 0 (the paper's size of the gain is at ImageNet scale)"),
    Claim("j", _DP, "without a predictor, or without stop-gradient, BYOL and SimSiam collapse",
          tuple(Contrast("claims_collapse", r, None, "at_most", _COLLAPSED_RANK, "eff_rank")
                for r in ("byol-no_predictor", "simsiam-no_predictor")),
          "no predictor or no stop-gradient: the features collapse", "analysis of the training dynamics",
          "collapse read as the projector output's effective rank at most 12.8 of 128; the no-stop-gradient "
          "half is not tested: BYOL's and SimSiam's original losses offer no target=none"),
    Claim("k", _DP, "the trained linear predictor's eigenspaces align with those of F during training",
          (Contrast("directpred", "byol-linear_predictor", None, "at_least", 0.9, "pred_align"),),
          "the trained predictor's eigenspaces come to align with those of F", "analysis of the training dynamics",
          "the last diag/pred_align at least 0.9: the mean cosine between W_p phi and phi over the top "
          "eigenvectors phi of the batch's F of the online features (1: W_p shares F's eigenvectors)"),
    Claim("l", _SP, "with the off-diagonal weight scaled for the width, a small projector performs like a large one",
          _alike("small_projectors", [("vicreg-d128-cov50", "vicreg-d512-cov12.5"),
                                      ("bt-d128-lambd0.04", "bt-d512-lambd0.01")]),
          "a 128-256-d projector with the width-scaled weight matches an 8192-d one", "projector-width experiments",
          "d=128 with its width's weight vs d=512 with its own (the CPU grid's widest), within 1 point"),
    Claim("m", _SP, "more views per image reach a given accuracy in fewer epochs",
          _greater("many_views", [("vicreg-M4-data100", "vicreg-M2-data100"), ("bt-M4-data100", "bt-M2-data100")],
                   metric="knn_full_train"),
          "more views reach a given accuracy in fewer epochs", "multi-view experiments",
          "read at equal epochs: 4 views above 2 on all the data"),
    Claim("n", _SP, "4 views on 50% of the data match 2 views on 100%; 8 views on 25% likewise",
          _alike("many_views", [("vicreg-M4-data50", "vicreg-M2-data100"), ("vicreg-M8-data25", "vicreg-M2-data100"),
                                ("bt-M4-data50", "bt-M2-data100"), ("bt-M8-data25", "bt-M2-data100")],
                 metric="knn_full_train"),
          "4 views on 50% or 8 views on 25% of the data match 2 views on all of it", "multi-view experiments",
          "within 1 point, kNN with the whole training split as the bank"),
    Claim("o", _SP, "the recommended setting (small projector, more views) trains about 2x faster to the same accuracy",
          (Contrast("claims_speed", "vicreg-d512-M2", "vicreg-d128-M4", "greater", 1.0,
                    f"minutes_to_knn@{_SPEED_TARGET:g}", ratio=True),),
          "about 2x less wall-clock time to the same accuracy", "the recommended setting",
          f"the ratio of the training minutes each run needed to first reach {_SPEED_TARGET:g}% kNN (the usual "
          "setting's over the recommended one's, geometric mean over seeds) above 1: faster at all; the paper's "
          "2x is the figure to compare it with. A seed whose run never reached it leaves the pair out. Timed by "
          "train_seconds, so run it alone on the machine"),
    Claim("p", _UG, "UniGrad improves with multi-crop and with CutMix",
          _greater("unigrad_table3", [("unigrad-multicrop", "unigrad"), ("unigrad-cutmix", "unigrad")]),
          "CutMix and multi-crop each raise UniGrad's linear accuracy (per-setting figures not transcribed here); "
          "UniGrad + CutMix 74.9 at 800 epochs (ResNet-50, ImageNet, the repository README)", "Table 3",
          "the paired kNN gain above 0 for each of multi-crop (4 local 16 px crops) and CutMix (a mixed copy of "
          "each global crop, ratio-weighted targets), 4 epochs; the paper's CutMix variant has no public code "
          "(docs/methods.md, multi-crop and mixing)"),
]


def claim_runs(claims: list[Claim]) -> dict[str, list[str]]:
    """grid -> the run labels the claims use, in order of first use."""
    need: dict[str, list[str]] = {}
    for cl in claims:
        for c in cl.contrasts:
            for g, r in c.runs():
                labels = need.setdefault(g, [])
                if r not in labels:
                    labels.append(r)
    return need


# --------------------------------------------------------------------------------------------
# results and the report


def load_results(out_dir: str | Path, size: str, grids: list[str]) -> Results:
    """The per-seed rows of ``OUT/GRID-SIZE/results.csv`` (a table without ``seed``: seed 0).

    Metrics a table lacks are read from the run folder's ``metrics.jsonl``: ``pred_align`` (the last
    ``diag/`` record) and ``knn_curve`` (training minutes and kNN of every evaluation, for the
    ``minutes_to_knn@X`` metric).
    """
    from siamgrad.report.metrics import read_metrics

    res: Results = {}
    for g in grids:
        root = Path(out_dir) / f"{g}-{size}"
        path = root / "results.csv"
        if not path.is_file():
            continue
        for row in csv.DictReader(path.open()):
            if row.get("status") != "ok":
                continue
            seeded = row.get("seed") not in (None, "")
            seed = int(row["seed"]) if seeded else 0
            folder = root / (f"{row['run']}-s{seed}" if seeded else row["run"])
            if not folder.is_dir():  # seed 0 reused from a run trained before seeds=
                folder = root / row["run"]
            if (folder / "metrics.jsonl").is_file():
                records = read_metrics(folder)
                aligns = [r["diag/pred_align"] for r in records if isinstance(r.get("diag/pred_align"), (int, float))]
                if aligns:
                    row["pred_align"] = aligns[-1]
                row["knn_curve"] = [(r["train_seconds"] / 60, r["knn_acc"]) for r in records
                                    if "knn_acc" in r and "train_seconds" in r]
            res.setdefault((g, row["run"]), {})[seed] = row
    return res


# --------------------------------------------------------------------------------------------
# the values behind the report, kept beside it: run folders are scratch, the report must regenerate

EVIDENCE_FIELDS = ("grid", "run", "seed", "metric", "value")


def evidence_path(doc: str | Path) -> Path:
    """``docs/claims.md`` -> ``docs/claims.csv``: every per-seed value the report's contrasts read."""
    return Path(doc).with_suffix(".csv")


def claim_values(claims: list[Claim], results: Results) -> dict[tuple[str, str, int, str], float]:
    """(grid, run, seed, metric) -> value, for every metric a contrast of ``claims`` reads."""
    out = {}
    for cl in claims:
        for c in cl.contrasts:
            for g, r in c.runs():
                for seed, row in results.get((g, r), {}).items():
                    v = _value(row, c.metric)
                    if v is not None:
                        out[(g, r, seed, c.metric)] = v
    return out


def read_evidence(path: str | Path) -> dict[tuple[str, str, int, str], float]:
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != EVIDENCE_FIELDS:
            raise ConfigError(f"{path}: expected the columns {','.join(EVIDENCE_FIELDS)}; "
                              "delete it to rebuild it from the run folders")
        try:
            return {(r["grid"], r["run"], int(r["seed"]), r["metric"]): float(r["value"]) for r in reader}
        except ValueError as e:
            raise ConfigError(f"{path}: a row has a malformed seed or value ({e}); fix or delete that row") from e


def write_evidence(path: str | Path, values: dict[tuple[str, str, int, str], float]) -> None:
    runner.write_csv(Path(path), [dict(zip(EVIDENCE_FIELDS, (*key, v))) for key, v in sorted(values.items())],
                     EVIDENCE_FIELDS)


def as_results(values: dict[tuple[str, str, int, str], float]) -> Results:
    res: Results = {}
    for (g, r, seed, m), v in values.items():
        res.setdefault((g, r), {}).setdefault(seed, {})[m] = v
    return res


def _split(settings: list[str]) -> tuple[str, int, bool, str, list[str]]:
    size, seeds, train, doc, rest = "cpu", 3, True, None, []
    for s in settings:
        key, _, v = s.partition("=")
        if key == "size":
            size = v
        elif key == "seeds":
            if not v.isdigit() or int(v) < 1:
                raise ConfigError(f"seeds={v} is not a positive whole number; give e.g. seeds=3")
            seeds = int(v)
        elif key == "train":
            if v not in ("true", "false"):
                raise ConfigError(f"train={v}: give train=true or train=false")
            train = v == "true"
        elif key == "doc":
            doc = v
        elif key == "only":
            raise ConfigError("only= does not apply to 'reproduce claims'; it trains the runs the claims name")
        else:
            rest.append(s)
    if doc is None:  # one report per size: the CPU one is docs/claims.md
        doc = "docs/claims.md" if size == "cpu" else f"docs/claims_{size}.md"
    return size, seeds, train, doc, rest


def command(grid_name: str, labels: list[str], size: str, seeds: int) -> str:
    return f"siamgrad reproduce {grid_name} size={size} seeds={seeds} only={','.join(labels)}"


def run_claims(settings: list[str] | None = None, out_dir: str = "runs/reproduce", log: bool = True,
               claims: list[Claim] | None = None) -> Path:
    """Train what ``claims`` (default :data:`CLAIMS`) need at ``size=`` with ``seeds=`` (finished runs
    reused), evaluate them and write the report; return its path."""
    claims = CLAIMS if claims is None else claims
    size, seeds, train, doc, rest = _split(list(settings or []))
    need = claim_runs(claims)
    for g, labels in need.items():
        exp = find(g)
        if size not in exp.sizes:
            raise ConfigError(f"size={size} is not valid for the claims' grid '{g}'; "
                              f"choose one of: {', '.join(exp.sizes)}")
        if train:
            runner.run_experiment(g, [f"size={size}", f"seeds={seeds}", f"only={','.join(labels)}", *rest],
                                  out_dir=out_dir, log=log, exp=exp)
    path = Path(doc)
    values = read_evidence(evidence_path(path))
    values.update(claim_values(claims, load_results(out_dir, size, list(need))))  # fresh runs win
    evaluated = evaluate(claims, as_results(values), min_seeds=MIN_SEEDS)
    write_evidence(evidence_path(path), values)
    atomic_write_text(path, report(evaluated, size, seeds, need, rest))
    return path


def _fmt_iv(c: ContrastResult) -> str:
    if c.interval is None:
        return "no data"
    iv = c.interval
    if iv.n < 2:
        return f"{iv.mean:+.2f} (1 seed)" if c.contrast.b is not None else f"{iv.mean:.2f} (1 seed)"
    sign = "+" if c.contrast.b is not None and not c.contrast.ratio else ""
    return f"{iv.mean:{sign}.2f} [{iv.low:{sign}.2f}, {iv.high:{sign}.2f}] (n={iv.n})"


def _settle(c: ContrastResult) -> str:
    if c.verdict != INCONCLUSIVE:
        return ""
    n = seeds_to_settle(c)
    if n is None:
        return " (no seed count settles it at this spread: the mean sits on the tolerance)"
    return f" (at this mean and spread about {n} seeds would settle it)"


def _shown(v: str, need: int) -> str:
    return f"not yet measured at {need} seeds" if v == NOT_MEASURED else v


def _status(evaluated: list[ClaimResult], want: int) -> list[str]:
    """One line per verdict: which claims have it (the not-yet-measured ones last)."""
    by: dict[str, list[str]] = {}
    for r in evaluated:
        by.setdefault(r.verdict, []).append(f"({r.claim.key})")
    lines = [f"Status: {sum(len(by.get(v, [])) for v in (HOLDS, FAILS, INCONCLUSIVE))} of {len(evaluated)} "
             f"claims have a verdict from at least {want} seeds.", ""]
    for v in (HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED):
        if by.get(v):
            lines.append(f"* {_shown(v, want)}: {', '.join(by[v])}")
    if by.get(NOT_MEASURED):
        lines += ["", "Each claim below gives the command that trains its runs; the single-seed CPU grids measured "
                  "before seeds existed are in docs/experiments.md."]
    return lines


def report(evaluated: list[ClaimResult], size: str, seeds: int, need: dict[str, list[str]],
           extra: list[str] | None = None) -> str:
    """The claims report in Markdown: one row per claim, then each claim's contrasts."""
    want = MIN_SEEDS
    total = " ".join(["siamgrad reproduce claims", f"size={size}", f"seeds={seeds}", *(extra or [])])
    lines = [
        "# The seed papers' claims, measured", "",
        f"Size `{size}`. Each claim is tested by one or more contrasts between runs of a grid, paired over "
        "the seeds both runs finished: the mean per-seed difference (ours minus the other run, in kNN "
        "points unless the metric says otherwise) with its 95% Student-t interval. A claim **holds** when "
        "every contrast's interval lies within its tolerance, **fails** when some contrast's interval lies "
        "wholly outside it, is **inconclusive** when an interval straddles it, and is **not yet measured** "
        f"below {want} seeds. The claims, their runs and tolerances are data in "
        "`src/siamgrad/experiments/claims.py`.", "",
        f"Everything below: `{total}` (finished runs are reused). Every per-seed value the contrasts read "
        "is kept in the `.csv` of the same name beside this file, so the report regenerates without the "
        "run folders.", "",
        *_status(evaluated, want), "",
        "| claim | paper's figure | contrasts (ours) | verdict | seeds |",
        "|---|---|---|---|---|",
    ]
    for r in evaluated:
        cl = r.claim
        ours = "; ".join(f"{c.contrast.describe()}: {_fmt_iv(c)}" for c in r.contrasts) or "no contrast yet"
        v = _shown(r.verdict, want)
        lines.append(f"| ({cl.key}) {cl.statement} | {cl.paper_figure} ({cl.paper}, {cl.source}) | {ours} | "
                     f"{v} | {r.seeds} |")
    lines += ["", "## Claims one by one", ""]
    for r in evaluated:
        cl = r.claim
        lines += [f"### ({cl.key}) {cl.statement}", "",
                  f"{cl.paper}, {cl.source}: {cl.paper_figure}.", "",
                  f"Reading at this size: {cl.note}.", "",
                  f"Verdict: **{_shown(r.verdict, want)}**.", ""]
        for c in r.contrasts:
            lines.append(f"* {c.contrast.describe()}: {_fmt_iv(c)} -> {_shown(c.verdict, want)}{_settle(c)}")
        if size == "cpu" and r.verdict in (FAILS, INCONCLUSIVE):
            lines += ["", "The same claim on a longer schedule: `siamgrad reproduce claims size=gpu_subset "
                      f"seeds={seeds}` (a CIFAR-stem ResNet-18 for {GPU_SUBSET_EPOCHS} times the epochs, "
                      "docs/claims_gpu_subset.md)."]
        grids = cl.grids()
        if grids:
            lines += ["", "Command:", "", "```"]
            lines += [command(g, [x for x in need.get(g, [])
                                  if any((g, x) in c.runs() for c in cl.contrasts)], size, seeds)
                      for g in grids]
            lines += ["```"]
        lines.append("")
    return "\n".join(lines)
