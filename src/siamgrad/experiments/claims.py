"""The seed papers' claims as data, each tested on named runs of a grid, with a verdict.

    siamgrad reproduce claims [size=cpu] [seeds=K|A-B] [train=false] [doc=PATH] [key=value ...]

A :class:`Claim` is a statement of a paper (UniGrad, DirectPred, arXiv 2312.10725) with the paper's
own figure, the margin it is read with and why, the number of seeds registered for its verdict,
and one or more :class:`Contrast` s: a metric of run ``a`` of a grid against run ``b`` (the
per-seed difference ``a - b``, or the ratio ``a / b``, paired over the seeds), against another
metric of the same run (``b_metric``), or against a fixed value (``b`` empty), with a tolerance and
a kind:

* ``alike``: ``|a - b| <= tol``. Holds when the whole 95% interval lies in ``[-tol, tol]``, fails
  when it lies wholly outside, inconclusive when it straddles ``-tol`` or ``tol``.
* ``greater`` / ``less``: ``a - b > tol`` / ``a - b < tol`` (``tol`` may be negative: "at least as
  well, within ``-tol``"). Holds when the interval lies beyond ``tol``, fails when it lies wholly on
  the other side, inconclusive when it contains it.
* ``at_most`` / ``at_least``: the same against a fixed value, for one run's metric (``b`` empty).

Three rules make a verdict evidence rather than a reading of noise:

* **Registered seeds.** A claim's verdict reads exactly seeds ``0 .. K-1``, ``K`` fixed in its data
  before its runs (:attr:`Claim.seeds`, or :data:`SIZE_SEEDS` for a size whose seed count was
  fixed by its first pass). Until all ``K`` are there it is "not measured". Seeds past ``K`` are
  a separate confirmation set, reported beside the verdict and never merged into it.
* **The floor.** A contrast is evidence only when each of its runs learned: its mean kNN over the
  registered seeds clears the best baseline measured beside it (raw pixels, the random-init
  encoder: the highest of the grid's runs at the same seeds) by :attr:`Floor.margin` points.
  Otherwise its verdict is "below floor", with its figures. A run whose point is a collapse is
  exempt (:attr:`Contrast.floor` names the runs that must clear it).
* **Power.** Every contrast shows the smallest difference its seeds detect at 80% power
  (:func:`~siamgrad.experiments.stats.detectable_difference`): an "inconclusive" effect smaller
  than that is one this size cannot tell.

A claim with several contrasts (one per method, one per pair) states "for each": it **fails** when
any contrast fails, is **not measured** while any lacks its registered seeds, is **below floor**
while any contrast is, **holds** when every contrast holds, and is **inconclusive** otherwise.

``siamgrad reproduce claims`` trains the runs the claims name at their registered seeds (finished
runs are reused; ``seeds=`` trains other seeds, e.g. ``seeds=5-9`` for a confirmation set), reads
the per-seed rows back and writes the report. ``train=false`` only reads what is there. The
report goes to ``doc=PATH`` when given; otherwise to the checkout's ``docs/claims.md``
(``docs/claims_SIZE.md`` at another size) when run from a checkout that holds its evidence file,
else beside the runs (``OUT/claims.md``).

Run folders are scratch; the report is not. Every per-seed value a contrast reads, the floor's
baselines, and each run's commit, CPU, torch version, threads and minutes are kept in the evidence
file beside the report (``docs/claims.csv``), merged with what the run folders hold (fresh values
win), so the report regenerates on a checkout without them.

Grids are :data:`~siamgrad.experiments.grids.EXPERIMENTS` plus :data:`~siamgrad.experiments.grids.CLAIM_GRIDS`,
the runs no paper grid holds (predictor-free BYOL and SimSiam, claim (o)'s timed pair).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from siamgrad.checkpoint import atomic_write_text
from siamgrad.errors import ConfigError
from siamgrad.experiments import runner
from siamgrad.experiments.grids import find
from siamgrad.experiments.provenance import FIELDS as PROVENANCE_FIELDS
from siamgrad.experiments.stats import Interval, detectable_difference, mean_interval

KINDS = ("alike", "greater", "less", "at_most", "at_least")
MIN_SEEDS = 3  # a verdict needs at least this many paired seeds
HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED, BELOW_FLOOR = "holds", "fails", "inconclusive", "not measured", "below floor"
POWER = 0.8  # of the detectable difference each contrast shows


@dataclass(frozen=True)
class Floor:
    """What a run must clear to count as evidence: its mean ``metric`` over the registered seeds at
    least ``margin`` points above the highest of the ``baselines`` measured in its grid at those seeds."""

    margin: float = 5.0
    metric: str = "knn_top1"
    baselines: tuple[str, ...] = ("raw_pixel_knn", "random_init_knn")


#: size -> its floor (others: :class:`Floor`'s defaults, 5 kNN points)
FLOORS: dict[str, Floor] = {}

#: Seed counts fixed for a whole size: the 4-epoch ``cpu`` size's first pass trained 3 seeds of
#: every claim before any verdict was read; the seeds added later are its confirmation sets.
SIZE_SEEDS: dict[str, int] = {"cpu": 3}


#: What each size is, shown at the top of its report
SIZE_NOTES: dict[str, str] = {
    "cpu": "4 epochs of batch 256 on 32 px views of the CIFAR-10 subset (76 steps, 38 of them warm-up), the "
           "4-epoch CPU grids of docs/experiments.md with UniGrad's CPU learning rate for every method: a "
           "smoke-sized measurement, kept as the record of what so short a schedule can tell. Its floor is the "
           "raw pixels' 34.91% kNN on the subset's test split (the same pixels whatever the seed), measured "
           "afresh at commit 77c9c23 on an AMD EPYC with `siamgrad.eval.knn.raw_pixel_features` and "
           "`knn_accuracy` (k 200, temperature 0.1) and added to the evidence; the runs' random-init figures "
           "were not kept (docs/experiments.md gives 28.5-30.2%, below the raw pixels)",
    "cpu24": "the claims' CPU size: the CPU preset's shape (small ResNet, 24 px views, batch 128) on the "
             "CIFAR-10 subset for 12 epochs, kNN every 4 epochs, each method with the values the equal tuning "
             "chose on the validation split (docs/tuning.md; a method not searched yet runs at the CPU grids' "
             "values); 5 seeds registered per claim; `siamgrad reproduce claims size=cpu24` trains the run-seeds "
             "the evidence file lacks. Why this schedule: docs/experiments.md, \"The claims' CPU size\"",
    "gpu": "full CIFAR-10 (50,000 training and 10,000 test images), a CIFAR-stem ResNet-18 for 200 epochs at "
           "batch 256, each method's original loss at solo-learn's CIFAR recipe (DirectPred and UniGrad at their "
           "own code's settings), the gradient forms at UniGrad's; `siamgrad reproduce claims size=gpu "
           "data.root=CIFAR10` (or data.download=true). Not yet measured: no GPU has run it. Estimate: a run moves "
           "200 x 50,000 x 2 = 20 M view-images; at the GPU suite's compiled bf16 rate for this network on one "
           "H100 (about 72 k view-images/s, DESIGN.md section 7) that is about 5 minutes, 6 with the kNN "
           "evaluations, and the claims need about 49 run-equivalents per seed (4 views count twice, 8 views four "
           "times), so about 25 GPU-hours at 5 seeds, more where the 8192-d heads and momentum encoders slow the "
           "step",
}


def floor_for(size: str) -> Floor:
    return FLOORS.get(size, Floor())


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
    b_metric: str | None = None  # the metric of run b when it is another one (e.g. a chance level)
    floor: tuple[str, ...] = ("a", "b")  # the runs that must clear the floor (a collapsed run need not)

    def runs(self) -> list[tuple[str, str]]:
        """(grid, label) of the runs this contrast reads (once each)."""
        runs = [(self.grid, self.a)] + ([] if self.b is None else [(self.b_grid or self.grid, self.b)])
        return list(dict.fromkeys(runs))

    def floor_runs(self) -> list[tuple[str, str]]:
        """(grid, label) of the runs that must clear the floor."""
        sides = [("a", (self.grid, self.a))] + ([] if self.b is None else [("b", (self.b_grid or self.grid, self.b))])
        return list(dict.fromkeys(run for side, run in sides if side in self.floor))

    def metrics(self) -> list[tuple[str, str, str]]:
        """(grid, label, metric) of every value this contrast reads."""
        out = [(self.grid, self.a, self.metric)]
        if self.b is not None:
            out.append((self.b_grid or self.grid, self.b, self.b_metric or self.metric))
        return out

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"contrast kind '{self.kind}' is not one of {', '.join(KINDS)}")
        if (self.b is None) != (self.kind in ("at_most", "at_least")):
            raise ConfigError(f"contrast {self.a}: kinds alike/greater/less compare two runs, at_most/at_least one")

    def describe(self) -> str:
        rel = {"alike": "≈", "greater": ">", "less": "<", "at_most": "≤", "at_least": "≥"}[self.kind]
        if self.b is None:
            return f"{self.grid}/{self.a} {self.metric} {rel} {self.tol:g}"
        op = "/" if self.ratio else "−"
        bound = f"±{self.tol:g}" if self.kind == "alike" else f"{self.tol:g}"
        b = self.b if self.b_grid in (None, self.grid) else f"{self.b_grid}/{self.b}"
        if self.b_metric is not None:
            return f"{self.grid}: {self.a} {self.metric} {op} {b} {self.b_metric} {rel} {bound}"
        return f"{self.grid}: {self.a} {op} {b} ({self.metric}) {rel} {bound}"


@dataclass(frozen=True)
class Claim:
    key: str  # (a)..(p)
    paper: str
    statement: str
    contrasts: tuple[Contrast, ...]
    paper_figure: str  # what the paper reports
    source: str  # where in the paper
    note: str = ""  # how the contrast reads the claim at CPU size, what it leaves out
    margin: str = ""  # why the tolerance is what it is
    seeds: int = 5  # registered: the verdict reads seeds 0 .. seeds-1, fixed before the runs
    # (size, contrasts) where a size's grid names its runs otherwise (the paper's widths, for one)
    contrasts_at: tuple[tuple[str, tuple[Contrast, ...]], ...] = ()

    def at(self, size: str) -> Claim:
        """This claim with the contrasts it reads at ``size``."""
        own = dict(self.contrasts_at).get(size)
        return self if own is None else dataclasses.replace(self, contrasts=own)

    def grids(self) -> list[str]:
        return list(dict.fromkeys(g for c in self.contrasts for g, _ in c.runs()))

    def registered(self, size: str) -> int:
        """The seed count this claim's verdict reads at ``size``."""
        return SIZE_SEEDS.get(size, self.seeds)

    def metric_names(self) -> list[str]:
        return list(dict.fromkeys(c.metric for c in self.contrasts))


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
    if kind in ("less", "at_most"):
        return HOLDS if hi < tol or (kind == "at_most" and hi <= tol) else FAILS if lo > tol else INCONCLUSIVE
    raise ConfigError(f"contrast kind '{kind}' is not one of {', '.join(KINDS)}")


def combine(verdicts: list[str]) -> str:
    """A claim's verdict from its contrasts' (the rule in the module docstring)."""
    if FAILS in verdicts:
        return FAILS
    if not verdicts or NOT_MEASURED in verdicts:
        return NOT_MEASURED
    if BELOW_FLOOR in verdicts:
        return BELOW_FLOOR
    return HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE


# results: (grid, run label) -> {seed: value of each metric}
Results = dict[tuple[str, str], dict[int, dict]]


@dataclass
class RunFloor:
    """One run of a contrast against its floor, over the contrast's seeds."""

    grid: str
    run: str
    value: float | None  # the run's mean of the floor's metric; None: not recorded
    baseline: float | None  # the mean of the best baseline at the same seeds; None: not recorded

    def clears(self, margin: float) -> bool | None:
        if self.value is None or self.baseline is None:
            return None
        return self.value >= self.baseline + margin


@dataclass
class ContrastResult:
    contrast: Contrast
    interval: Interval | None  # None: no paired seed has the metric
    seeds: list[int]
    verdict: str  # the interval's verdict; NOT_MEASURED without the seeds; BELOW_FLOOR
    floors: list[RunFloor] = field(default_factory=list)
    margin: float | None = None  # the floor's margin, when the floor was checked
    wanted: int | None = None  # the registered seed count (None: every seed there is)

    @property
    def detectable(self) -> float | None:
        """The smallest difference these seeds detect at :data:`POWER` (on the log scale for a ratio)."""
        iv = self.interval
        if iv is None or iv.n < 2 or not math.isfinite(iv.sd):
            return None
        return detectable_difference(iv.sd, iv.n, iv.level, POWER)  # a ratio's sd is of the log ratios


@dataclass
class ClaimResult:
    claim: Claim
    contrasts: list[ContrastResult] = field(default_factory=list)
    confirmation: list[ContrastResult] = field(default_factory=list)  # seeds past the registered ones
    registered: int = MIN_SEEDS

    @property
    def verdict(self) -> str:
        return combine([c.verdict for c in self.contrasts])

    @property
    def seeds(self) -> int:
        return min((len(c.seeds) for c in self.contrasts), default=0)

    @property
    def confirmation_verdict(self) -> str | None:
        if not self.confirmation or not any(c.seeds for c in self.confirmation):
            return None
        return combine([c.verdict for c in self.confirmation])


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


def _baseline(results: Results, grid: str, seed: int, floor: Floor) -> float | None:
    """The best of the floor's baselines measured by any run of ``grid`` at ``seed``."""
    found = [_value(rows[seed], b) for (g, _), rows in results.items() if g == grid and seed in rows
             for b in floor.baselines]
    found = [v for v in found if v is not None]
    return max(found) if found else None


def _run_floor(results: Results, grid: str, run: str, seeds: list[int], floor: Floor, metric: str) -> RunFloor:
    rows = results.get((grid, run), {})
    values = [_value(rows.get(s, {}), metric) for s in seeds]
    bases = [_baseline(results, grid, s, floor) for s in seeds]
    value = None if not seeds or None in values else sum(values) / len(values)
    base = None if not seeds or None in bases else sum(bases) / len(bases)
    return RunFloor(grid, run, value, base)


def evaluate_contrast(c: Contrast, results: Results, min_seeds: int = MIN_SEEDS, *,
                      seeds: Sequence[int] | None = None, floor: Floor | None = None,
                      from_seed: int = 0) -> ContrastResult:
    """The contrast's paired interval and verdict over ``seeds`` (default: every seed from
    ``from_seed`` on that both runs have).

    With ``seeds`` (the registered ones), a seed either run lacks leaves the contrast "not
    measured". With ``floor``, a contrast whose :meth:`~Contrast.floor_runs` do not all clear it is
    "below floor"; a floor that was not recorded leaves it "not measured".
    """
    (ga, ra, ma), *rest = c.metrics()
    a = results.get((ga, ra), {})
    b = results.get((rest[0][0], rest[0][1]), {}) if rest else None
    mb = rest[0][2] if rest else None
    wanted = None if seeds is None else list(seeds)
    pairs = []
    for seed in [s for s in sorted(a) if s >= from_seed] if wanted is None else wanted:
        va = _value(a.get(seed, {}), ma)
        vb = None if b is None else _value(b.get(seed, {}), mb)
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
    n_wanted = None if wanted is None else len(wanted)
    if not pairs:
        return ContrastResult(c, None, [], NOT_MEASURED, wanted=n_wanted)
    iv = mean_interval([v for _, v in pairs])
    if c.ratio:  # back from the log scale: a geometric mean ratio and its interval
        iv = Interval(math.exp(iv.mean), math.exp(iv.low), math.exp(iv.high), iv.n, iv.sd, iv.level)
    got = [s for s, _ in pairs]
    enough = len(got) >= min_seeds and (wanted is None or len(got) == len(wanted))
    v = verdict(c.kind, iv, c.tol) if enough else NOT_MEASURED
    res = ContrastResult(c, iv, got, v, wanted=n_wanted)
    if floor is not None and c.floor_runs():
        res.margin = floor.margin
        # a kNN contrast is floored on its own kNN (e.g. with the whole training split as the bank)
        metric = c.metric if c.metric.startswith("knn") else floor.metric
        res.floors = [_run_floor(results, g, r, got, floor, metric) for g, r in c.floor_runs()]
        clears = [f.clears(floor.margin) for f in res.floors]
        if v != NOT_MEASURED:
            res.verdict = NOT_MEASURED if None in clears else v if all(clears) else BELOW_FLOOR
    return res


def evaluate(claims: list[Claim], results: Results, min_seeds: int = MIN_SEEDS, *,
             size: str | None = None) -> list[ClaimResult]:
    """Every claim's contrasts. With ``size``: over each claim's registered seeds, with the size's
    floor, and the seeds past them as the confirmation set; without: every seed there is, no floor."""
    out = []
    for cl in claims:
        if size is None:
            out.append(ClaimResult(cl, [evaluate_contrast(c, results, min_seeds) for c in cl.contrasts]))
            continue
        k, floor = cl.registered(size), floor_for(size)
        extra = any(s >= k for c in cl.contrasts for g, r in c.runs() for s in results.get((g, r), {}))
        out.append(ClaimResult(
            cl, [evaluate_contrast(c, results, min_seeds, seeds=range(k), floor=floor) for c in cl.contrasts],
            [evaluate_contrast(c, results, min_seeds, floor=floor, from_seed=k) for c in cl.contrasts] if extra else [],
            k))
    return out


# --------------------------------------------------------------------------------------------
# the registry

# the kNN accuracy whose time to reach claim (o) compares: 10 points above the subset's raw pixels,
# twice the floor's margin, so that both runs have clearly learned when they reach it
_SPEED_TARGET = 45.0
_PAPER_SPEED_TARGET = 85.0  # on full CIFAR-10 with a ResNet-50, where the paper's runs pass 90%

# a run counts as collapsed when its effective rank is at most this share of its control's, the same
# method with its predictor: a share, since a healthy rank depends on the width and the schedule
_COLLAPSED_SHARE = 0.5

_T1, _T2 = "unigrad_table1", "unigrad_table2"
_UG = "UniGrad (arXiv 2112.05141)"
_DP = "DirectPred (arXiv 2102.06810)"
_SP = "Small projectors, many views (arXiv 2312.10725)"

# the margins' reasons, from the papers' own figures
_FAMILY_MARGIN = ("1 kNN point: the paper's forms it calls alike span 0.3-0.4 points (67.6-67.9 without, "
                  "69.8-70.2 with a momentum encoder), so 1 point is about three times its own spread")
_SMALL_PROJ_MARGIN = ("1 kNN point: the paper calls the widths' accuracies matched within its seeds' spread "
                      "(figures not transcribed here); 1 point, as for UniGrad's families")


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
    Claim("a", _UG, "each method's unified-gradient form performs at least as well as its original loss",
          tuple(Contrast(_T1, f"{m}-gradient", f"{m}-original", "greater", -2.0) for m in _T1_METHODS),
          "original losses 62.7-68.7, their gradient forms 67.6-67.9 (ImageNet, 100 epochs, linear eval)",
          "Table 1",
          "each gradient form (stop-gradient target) against its original loss (the original's own branch: "
          "MoCo's and BYOL's momentum encoder)",
          "not worse by more than 2 kNN points: in the paper's Table 1 the gradient forms lie between 1.0 below "
          "(VICReg, Barlow Twins) and 5.2 above (SimCLR) their originals, so its 'performs like' is one-sided; "
          "2 points is twice its largest shortfall"),
    Claim("b", _UG, "within each family the simplified gradient forms perform alike",
          _alike(_T1, [("simclr-gradient", "moco-gradient"), ("byol-gradient", "simsiam-gradient"),
                       ("barlow_twins-gradient", "vicreg-gradient")]),
          "the gradient forms of all six methods within 67.6-67.9 without a momentum encoder", "Table 1",
          "the two gradient forms of each family", _FAMILY_MARGIN),
    Claim("c", _UG, "with the same target branch the three families' unified forms perform alike",
          _alike(_T2, [("simclr-momentum", "byol-momentum"), ("byol-momentum", "barlow_twins-momentum"),
                       ("simclr-momentum", "barlow_twins-momentum")]),
          "69.8-70.2 with a momentum encoder for all three families", "Table 2",
          "momentum target, every pair of families", _FAMILY_MARGIN),
    Claim("d", _UG, "a momentum encoder improves every family over stop-gradient",
          tuple(Contrast(_T2, f"{m}-momentum", _T1_STOPGRAD[m], "greater", 0.0, b_grid=_T1) for m in _T2_METHODS),
          "about +2 points (67.6-67.9 -> 69.8-70.2)", "Table 2",
          "the stop-gradient side is Table 1's runs, which train as Table 2's stop-gradient rows (the EMA momentum "
          "those set is unused without a momentum target; UniGrad's loss has its gradient form's gradient)",
          "any gain (above 0): the paper's 2 points is at ImageNet scale and 100 epochs"),
    Claim("e", _UG, "momentum features in the positive term only perform like a full momentum target",
          _alike(_T2, [(f"{m}-momentum_positive", f"{m}-momentum") for m in _T2_METHODS]),
          "as good as the full momentum encoder (the paper's per-method figures are not transcribed here)", "Table 2",
          "for each method", _FAMILY_MARGIN),
    Claim("f", _UG, "SimCLR with a momentum encoder performs at least as well as MoCo: a large negative set is "
                    "not needed",
          (Contrast(_T2, "simclr-momentum", "moco-original", "greater", -1.0, b_grid=_T1),),
          "SimCLR's form with a momentum encoder within the 69.8-70.2 of the momentum-encoder forms, above MoCo's "
          "67.4", "Tables 1 and 2",
          "moco-original (a 4,096-feature queue) lives in unigrad_table1 with the same CPU settings; the contrast "
          "pairs it by seed across the two grids. SimCLR's batch negatives doing better than MoCo's queue does "
          "not contradict the claim, so it is one-sided",
          "not worse than MoCo by more than 1 kNN point, as (g)"),
    Claim("g", _UG, "UniGrad performs at least as well as every other method at equal budget",
          tuple(Contrast(_T2, "unigrad-momentum", b, "greater", -1.0, b_grid=g) for g, b in _ORIGINALS),
          "UniGrad 70.3 vs the original losses 62.7-68.7 and the momentum-encoder forms 69.8-70.2 (ImageNet, "
          "100 epochs, linear eval)", "Tables 1 and 2",
          "UniGrad with its momentum encoder (Table 2's run) against each original loss (Table 1's runs, "
          "DirectPred's from its grid), all with the same CPU settings",
          "not worse by more than 1 kNN point: the paper puts UniGrad 0.1-0.5 above the best momentum form, "
          "a gain smaller than 1 point, so 'at least as well' is read within 1 point"),
    Claim("h", _DP, "DirectPred performs like a trained 2-layer predictor",
          (Contrast("directpred", "directpred", "byol-mlp_predictor", "alike", 1.0),),
          "DirectPred on a par with BYOL's 2-layer predictor (ImageNet linear eval; figures not transcribed here)",
          "ImageNet experiments",
          "DirectPred against BYOL with its 2-layer predictor",
          "1 kNN point: 'on a par' in the paper, a gap it reports under a point"),
    Claim("i", _DP, "DirectPred beats a trained linear predictor",
          (Contrast("directpred", "directpred", "byol-linear_predictor", "greater", 0.0),),
          "+2.5 points at 300 epochs, +5 at 60 epochs (ImageNet linear eval)", "ImageNet experiments",
          "DirectPred against BYOL with a trained linear predictor",
          "any gain (above 0): the paper's size of the gain is at ImageNet scale"),
    Claim("j", _DP, "without a predictor, or without stop-gradient, BYOL and SimSiam collapse",
          tuple(Contrast("claims_collapse", f"{m}-no_predictor", f"{m}-predictor", "less", _COLLAPSED_SHARE,
                         "eff_rank", ratio=True, floor=("b",)) for m in ("byol", "simsiam")),
          "no predictor or no stop-gradient: the features collapse", "analysis of the training dynamics",
          "collapse read as the projector output's effective rank against a control in the same grid, the same "
          "method with its predictor (which must clear the floor; the collapsed run need not); the "
          "no-stop-gradient half is not tested: BYOL's and SimSiam's original losses offer no target=none",
          f"the rank ratio below {_COLLAPSED_SHARE:g}: a collapsed run keeps under half the rank of its control "
          "(a trained linear predictor's run also has a low rank without collapsing, so no absolute threshold)"),
    Claim("k", _DP, "the trained linear predictor's eigenspaces align with those of F during training",
          (Contrast("directpred", "byol-linear_predictor", "byol-linear_predictor", "greater", 0.0, "pred_align",
                    b_metric="pred_align_chance"),),
          "the trained predictor's eigenspaces come to align with those of F", "analysis of the training dynamics",
          "the last diag/pred_align (the mean cosine between W_p phi and phi over the top eigenvectors phi of the "
          "batch's F) against diag/pred_align_chance, the same measure over a random orthonormal basis: the "
          "alignment any predictor has with any basis",
          "any excess over chance (above 0): a predictor near the identity aligns with every basis"),
    Claim("l", _SP, "with the off-diagonal weight scaled for the width, a small projector performs like a large one",
          _alike("small_projectors", [("vicreg-d128-cov50", "vicreg-d512-cov12.5"),
                                      ("bt-d128-lambd0.04", "bt-d512-lambd0.01")]),
          "a 128-256-d projector with the width-scaled weight matches an 8192-d one", "projector-width experiments",
          "d=128 with its width's weight vs d=512 with its own (the CPU grid's widest); at the paper and gpu "
          "sizes the paper's pair, d=256 with the width-scaled weight vs d=8192 with the default one",
          _SMALL_PROJ_MARGIN,
          contrasts_at=tuple((size, _alike("small_projectors", [("vicreg-d256-scaled", "vicreg-d8192-default"),
                                                                ("bt-d256-scaled", "bt-d8192-default")]))
                             for size in ("paper", "gpu"))),
    Claim("m", _SP, "more views per image reach a given accuracy in fewer epochs",
          _greater("many_views", [("vicreg-M4-data100", "vicreg-M2-data100"), ("bt-M4-data100", "bt-M2-data100")],
                   metric="knn_full_train"),
          "more views reach a given accuracy in fewer epochs", "multi-view experiments",
          "read at equal epochs: 4 views above 2 on all the data",
          "any gain (above 0): the paper gives no size for it"),
    Claim("n", _SP, "4 views on 50% of the data match 2 views on 100%; 8 views on 25% likewise",
          _alike("many_views", [("vicreg-M4-data50", "vicreg-M2-data100"), ("vicreg-M8-data25", "vicreg-M2-data100"),
                                ("bt-M4-data50", "bt-M2-data100"), ("bt-M8-data25", "bt-M2-data100")],
                 metric="knn_full_train"),
          "4 views on 50% or 8 views on 25% of the data match 2 views on all of it", "multi-view experiments",
          "kNN with the whole training split as the bank", _SMALL_PROJ_MARGIN),
    Claim("o", _SP, "the recommended setting (small projector, more views) trains about 2x faster to the same accuracy",
          (Contrast("claims_speed", "vicreg-d512-M2", "vicreg-d128-M4", "greater", 1.0,
                    f"minutes_to_knn@{_SPEED_TARGET:g}", ratio=True),),
          "about 2x less wall-clock time to the same accuracy", "the recommended setting",
          f"the ratio of the training minutes each run needed to first reach {_SPEED_TARGET:g}% kNN on its learning "
          "curve (the usual setting's over the recommended one's, geometric mean over seeds). A seed whose run "
          "never reached it leaves the pair out. Timed by train_seconds, so run it alone on the machine",
          "any speed-up (a ratio above 1); the paper's 2x is the figure to compare it with",
          contrasts_at=tuple((size, (Contrast("claims_speed", "vicreg-d8192-M2", "vicreg-d256-M4", "greater", 1.0,
                                              f"minutes_to_knn@{_PAPER_SPEED_TARGET:g}", ratio=True),))
                             for size in ("paper", "gpu"))),
    Claim("p", _UG, "UniGrad improves with multi-crop and with CutMix",
          _greater("unigrad_table3", [("unigrad-multicrop", "unigrad"), ("unigrad-cutmix", "unigrad")]),
          "CutMix and multi-crop each raise UniGrad's linear accuracy (per-setting figures not transcribed here); "
          "UniGrad + CutMix 74.9 at 800 epochs (ResNet-50, ImageNet, the repository README)", "Table 3",
          "multi-crop (4 local 16 px crops) and CutMix (a mixed copy of each global crop, ratio-weighted targets); "
          "the paper's CutMix variant has no public code (docs/methods.md, multi-crop and mixing)",
          "any gain (above 0) for each"),
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

    Metrics a table lacks are read from the run folder's ``metrics.jsonl``: ``pred_align`` and
    ``pred_align_chance`` (the last ``diag/`` record of each) and ``knn_curve`` (training minutes and
    kNN of every evaluation, for the ``minutes_to_knn@X`` metric).
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
                for key in ("pred_align", "pred_align_chance"):
                    found = [r[f"diag/{key}"] for r in records if isinstance(r.get(f"diag/{key}"), (int, float))]
                    if found:
                        row[key] = found[-1]
                row["knn_curve"] = [(r["train_seconds"] / 60, r["knn_acc"]) for r in records
                                    if "knn_acc" in r and "train_seconds" in r]
            res.setdefault((g, row["run"]), {})[seed] = row
    return res


# --------------------------------------------------------------------------------------------
# the values behind the report, kept beside it: run folders are scratch, the report must regenerate

EVIDENCE_FIELDS = ("grid", "run", "seed", "metric", "value", *PROVENANCE_FIELDS, "minutes")
_LEGACY_FIELDS = EVIDENCE_FIELDS[:5]  # before provenance was recorded
_FLOOR_METRICS = ("knn_top1", "knn_full_train", "raw_pixel_knn", "random_init_knn")
_SECOND_METRICS = ("linear_top1", "val_knn")  # shown beside each contrast's own

Key = tuple[str, str, int, str]  # grid, run, seed, metric


@dataclass
class Evidence:
    """The per-seed values the report reads and, per (grid, run, seed), where they were measured."""

    values: dict[Key, float] = field(default_factory=dict)
    provenance: dict[tuple[str, str, int], dict[str, str]] = field(default_factory=dict)

    def update(self, other: Evidence) -> None:
        """``other``'s values win; a run's provenance goes with its values."""
        self.values.update(other.values)
        self.provenance.update(other.provenance)

    def results(self) -> Results:
        res: Results = {}
        for (g, r, seed, m), v in self.values.items():
            res.setdefault((g, r), {}).setdefault(seed, {})[m] = v
        return res


def evidence_path(doc: str | Path) -> Path:
    """``docs/claims.md`` -> ``docs/claims.csv``: every per-seed value the report's contrasts read."""
    return Path(doc).with_suffix(".csv")


def claim_values(claims: list[Claim], results: Results) -> Evidence:
    """The values ``claims`` read from ``results``: each contrast's metrics, every run's floor metrics
    and second metrics, the baselines of every run of their grids; with each run's provenance."""
    wanted: dict[tuple[str, str], set[str]] = {}
    for cl in claims:
        for c in cl.contrasts:
            for g, r, m in c.metrics():
                wanted.setdefault((g, r), set()).update({m, *_FLOOR_METRICS, *_SECOND_METRICS})
    grids = {g for g, _ in wanted}
    for g, r in results:  # a grid's baselines come from whichever of its runs measured them
        if g in grids:
            wanted.setdefault((g, r), set()).update(_FLOOR_METRICS[2:])
    ev = Evidence()
    for (g, r), metrics in wanted.items():
        for seed, row in results.get((g, r), {}).items():
            found = {m: _value(row, m) for m in metrics}
            found = {m: v for m, v in found.items() if v is not None}
            for m, v in found.items():
                ev.values[(g, r, seed, m)] = v
            if found:
                ev.provenance[(g, r, seed)] = {f: "" if row.get(f) is None else str(row[f])
                                               for f in (*PROVENANCE_FIELDS, "minutes")}
    return ev


def read_evidence(path: str | Path) -> Evidence:
    path = Path(path)
    ev = Evidence()
    if not path.is_file():
        return ev
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) not in (EVIDENCE_FIELDS, _LEGACY_FIELDS):
            raise ConfigError(f"{path}: expected the columns {','.join(EVIDENCE_FIELDS)}; "
                              "delete it to rebuild it from the run folders")
        try:
            for r in reader:
                key = (r["grid"], r["run"], int(r["seed"]))
                ev.values[(*key, r["metric"])] = float(r["value"])
                ev.provenance.setdefault(key, {f: r.get(f) or "" for f in (*PROVENANCE_FIELDS, "minutes")})
        except ValueError as e:
            raise ConfigError(f"{path}: a row has a malformed seed or value ({e}); fix or delete that row") from e
    return ev


def write_evidence(path: str | Path, ev: Evidence) -> None:
    rows = [{**dict(zip(EVIDENCE_FIELDS, (*key, v))), **ev.provenance.get(key[:3], {})}
            for key, v in sorted(ev.values.items())]
    runner.write_csv(Path(path), [{f: r.get(f) for f in EVIDENCE_FIELDS} for r in rows], EVIDENCE_FIELDS)


#: ``smoke=true``: every run a step or two of a tiny network, to check that a size runs end to end
#: (give tiny data with ``root.NAME=PATH``); its report is a check of the code, not a result
SMOKE = ["epochs=1", "batch_size=8", "backbone=tiny", "method.proj_hidden_dim=16", "method.proj_output_dim=16",
         "augment.size=16", "augment.local_size=8", "eval.knn_k=5", "eval.every=0", "eval.linear_epochs=2",
         "diag.batch=16", "diag.report=false", "progress=false", "threads=1"]


def _split(settings: list[str]) -> tuple[str, str | None, bool, str | None, list[str]]:
    """``size``, ``seeds`` (as given, or None: each claim's registered count), ``train``, ``doc`` (None:
    :func:`default_doc`) and the settings left for every run (``smoke=true`` adds :data:`SMOKE`)."""
    size, seeds, train, doc, rest = "cpu", None, True, None, []
    for s in settings:
        key, _, v = s.partition("=")
        if key == "smoke":
            rest += SMOKE if runner.flag(key, v) else []
        elif key == "size":
            size = v
        elif key == "seeds":
            runner._split_seeds([s])  # the grids' own check: a count or a range
            seeds = v
        elif key == "train":
            train = runner.flag(key, v)
        elif key == "doc":
            doc = v
        elif key == "only":
            raise ConfigError("only= does not apply to 'reproduce claims'; it trains the runs the claims name")
        else:
            rest.append(s)
    return size, seeds, train, doc, rest


def report_name(size: str) -> str:
    """One report per size: ``claims.md`` at ``cpu``, ``claims_SIZE.md`` at another."""
    return "claims.md" if size == "cpu" else f"claims_{size}.md"


def default_doc(size: str, out_dir: str | Path, cwd: str | Path = ".") -> Path:
    """Where the report goes without ``doc=`` (:func:`~siamgrad.experiments.runner.report_path`)."""
    return runner.report_path(report_name(size), out_dir, cwd)


def _ranges(seeds: list[int]) -> list[tuple[int, int]]:
    """Sorted seeds as runs of consecutive ones: [0, 1, 2, 5] -> [(0, 2), (5, 5)]."""
    out: list[tuple[int, int]] = []
    for k in sorted(seeds):
        if out and k == out[-1][1] + 1:
            out[-1] = (out[-1][0], k)
        else:
            out.append((k, k))
    return out


def command(grid_name: str, labels: list[str], size: str, seeds: int | str) -> str:
    return f"siamgrad reproduce {grid_name} size={size} seeds={seeds} only={','.join(labels)}"


def run_claims(settings: list[str] | None = None, out_dir: str = "runs/reproduce", log: bool = True,
               claims: list[Claim] | None = None) -> Path:
    """Train what ``claims`` (default :data:`CLAIMS`) need at ``size=`` (their registered seeds, or
    ``seeds=``; finished runs reused), evaluate them and write the report; return its path."""
    size, seeds, train, doc, rest = _split(list(settings or []))
    claims = [cl.at(size) for cl in (CLAIMS if claims is None else claims)]
    need = claim_runs(claims)
    path = Path(doc) if doc is not None else default_doc(size, out_dir)
    ev = read_evidence(evidence_path(path))
    for g, labels in need.items():
        exp = find(g)
        if size not in exp.sizes:
            raise ConfigError(f"size={size} is not valid for the claims' grid '{g}'; "
                              f"choose one of: {', '.join(exp.sizes)}")
        if not train:
            continue
        wanted = (runner._split_seeds([f"seeds={seeds}"])[0] if seeds else
                  range(max(cl.registered(size) for cl in claims if g in cl.grids())))
        # a run-seed already in the evidence is not trained again: run folders are scratch, a new
        # checkout has none, and its values are what the report reads
        todo: dict[tuple[tuple[int, int], ...], list[str]] = {}
        for label in labels:
            spans = tuple(_ranges([k for k in wanted if (g, label, k) not in ev.provenance]))
            todo.setdefault(spans, []).append(label)
        for spans, group in todo.items():  # the runs missing the same seeds together: seed 0 of all first
            for first, last in spans:
                runner.run_experiment(g, [f"size={size}", f"seeds={first}-{last}", f"only={','.join(group)}", *rest],
                                      out_dir=out_dir, log=log, exp=exp)
    fresh = claim_values(claims, load_results(out_dir, size, list(need)))
    if not evidence_path(path).is_file() and not fresh.values:  # an evidence file, even empty, is a page to write
        raise ConfigError(f"no runs of the claims found under '{out_dir}' for size={size} (no "
                          f"GRID-{size}/results.csv there) and no evidence file at {evidence_path(path)}; "
                          "train them (drop train=false) or point --out at the folder that holds them")
    ev.update(fresh)  # fresh runs win
    evaluated = evaluate(claims, ev.results(), size=size)
    write_evidence(evidence_path(path), ev)
    plot = path.parent / "img" / f"{path.stem}_forest.png"
    if forest_plot(evaluated, plot):
        plot_link = plot.relative_to(path.parent).as_posix()
    else:
        plot_link = None
    atomic_write_text(path, report(evaluated, size, need, rest, ev, plot_link))
    return path


# --------------------------------------------------------------------------------------------
# the report


def _fmt_iv(c: ContrastResult) -> str:
    if c.interval is None:
        return "no data"
    iv = c.interval
    if iv.n < 2:
        return f"{iv.mean:+.2f} (1 seed)" if c.contrast.b is not None else f"{iv.mean:.2f} (1 seed)"
    sign = "+" if c.contrast.b is not None and not c.contrast.ratio else ""
    return f"{iv.mean:{sign}.2f} [{iv.low:{sign}.2f}, {iv.high:{sign}.2f}] (n={iv.n})"


def _fmt_detectable(c: ContrastResult) -> str:
    d = c.detectable
    if d is None:
        return "detectable: needs 2 seeds"
    if c.contrast.ratio:
        return f"detectable at {POWER:.0%} power: a ratio beyond ×{math.exp(d):.2f}"
    return f"detectable at {POWER:.0%} power: ±{d:.2f}"


def _fmt_floor(c: ContrastResult) -> str:
    if c.margin is None:
        return "no floor (a collapse contrast's runs)"
    parts = []
    for f in c.floors:
        if f.value is None or f.baseline is None:
            parts.append(f"{f.run} floor not recorded")
        else:
            mark = "clears" if f.clears(c.margin) else "BELOW"
            parts.append(f"{f.run} {f.value:.2f} vs {f.baseline + c.margin:.2f} ({mark})")
    return f"floor (best baseline + {c.margin:g}): " + "; ".join(parts)


def _shown(v: str, need: int) -> str:
    return f"not yet measured at {need} seeds" if v == NOT_MEASURED else v


def _machines(c: ContrastResult, ev: Evidence) -> set[str]:
    return {ev.provenance.get((g, r, s), {}).get("cpu") or "not recorded" for g, r in c.contrast.runs() for s in c.seeds}


def _second(c: ContrastResult, results: Results) -> str:
    """The contrast again on the linear probe, where both runs recorded it at the same seeds."""
    if c.contrast.metric != "knn_top1":
        return ""
    alt = dataclasses.replace(c.contrast, metric="linear_top1")
    r = evaluate_contrast(alt, results, seeds=c.seeds) if c.seeds else None
    return "" if r is None or r.interval is None else f"; linear probe: {_fmt_iv(r)}"


def _hours(evaluated: list[ClaimResult], ev: Evidence) -> tuple[float, int]:
    """Training hours of the distinct runs the registered verdicts read, and how many runs lack a time."""
    runs = {(g, r, s) for res in evaluated for c in res.contrasts for g, r in c.contrast.runs() for s in c.seeds}
    minutes = [ev.provenance.get(k, {}).get("minutes") for k in runs]
    known = [float(m) for m in minutes if m]
    return sum(known) / 60, len(minutes) - len(known)


def _status(evaluated: list[ClaimResult]) -> list[str]:
    by: dict[str, list[str]] = {}
    for r in evaluated:
        by.setdefault(r.verdict, []).append(f"({r.claim.key})")
    lines = [f"Status: {sum(len(by.get(v, [])) for v in (HOLDS, FAILS, INCONCLUSIVE))} of {len(evaluated)} "
             "claims have a verdict from runs above the floor at their registered seeds.", ""]
    for v in (HOLDS, FAILS, INCONCLUSIVE, BELOW_FLOOR, NOT_MEASURED):
        if by.get(v):
            lines.append(f"* {v}: {', '.join(by[v])}")
    return lines


def report(evaluated: list[ClaimResult], size: str, need: dict[str, list[str]], extra: list[str] | None = None,
           ev: Evidence | None = None, plot: str | None = None) -> str:
    """The claims report in Markdown: one row per claim, then each claim's contrasts."""
    ev = ev or Evidence()
    floor = floor_for(size)
    results = ev.results()
    total = " ".join(["siamgrad reproduce claims", f"size={size}", *(extra or [])])
    hours, untimed = _hours(evaluated, ev)
    machines = sorted({p.get("cpu") or "" for p in ev.provenance.values()} - {""})
    unrecorded = sum(1 for p in ev.provenance.values() if not p.get("cpu"))
    lines = [
        "# The seed papers' claims, measured", "",
        *([f"Size `{size}`: {SIZE_NOTES[size]}.", ""] if size in SIZE_NOTES else []),
        *([] if size in SIZE_NOTES else [f"Size `{size}`.", ""]),
        "Each claim is tested by one or more contrasts between runs of a grid, paired over "
        "seeds: the mean per-seed difference (ours minus the other run, in points of the named metric) with "
        "its 95% Student-t interval. The claims, their runs, margins and registered seeds are data in "
        "`src/siamgrad/experiments/claims.py`; its docstring states the rules, in short:", "",
        "* a contrast **holds** when its interval lies within (or beyond) its margin, **fails** when it lies "
        "wholly on the wrong side, is **inconclusive** when it straddles the margin;",
        f"* it is **below floor** when a run it needs did not learn: its mean kNN over the seeds less than "
        f"{floor.margin:g} points above the best baseline of its grid (raw pixels, the random-init encoder) at "
        "the same seeds. Such a contrast says which setting trains fastest at this size, not what the claim is "
        "about;",
        "* a verdict reads exactly the seeds registered for the claim before its runs; more seeds are a "
        "confirmation set, shown beside it and never merged in;",
        f"* each contrast gives the smallest difference its seeds detect at {POWER:.0%} power: an effect below "
        "it is one this size cannot tell;",
        "* a claim with several contrasts reads \"for each\": it fails when any contrast fails, is not measured "
        "while any lacks its seeds, is below floor while any is, and holds when all hold.", "",
        f"Everything below: `{total}` (finished runs are reused). Every per-seed value, with the commit, CPU, "
        "torch version, threads and minutes of its run, is kept in the `.csv` of the same name beside this "
        "file, so the report regenerates without the run folders.", "",
        f"Training time of the runs the registered verdicts read: {hours:.2f} hours"
        + (f" ({untimed} runs carry no time: measured before times were kept)" if untimed else "") + ". "
        + (f"Machines: {'; '.join(machines)}." if machines else "")
        + (f" {unrecorded} run-seeds carry no commit or machine (measured before provenance was kept); "
           "a contrast between them may pair two machines." if unrecorded else ""), "",
        *_status(evaluated), "",
    ]
    if plot:
        lines += [f"![each contrast's interval against its margin]({plot})", ""]
    lines += ["| claim | metric | paper's figure | contrasts (registered seeds) | verdict | seeds | confirmation |",
              "|---|---|---|---|---|---|---|"]
    for r in evaluated:
        cl = r.claim
        ours = "; ".join(f"{c.contrast.describe()}: {_fmt_iv(c)}" for c in r.contrasts) or "no contrast yet"
        conf = r.confirmation_verdict
        conf_text = "" if conf is None else f"{conf} (seeds {r.registered}+)"
        lines.append(f"| ({cl.key}) {cl.statement} | {', '.join(cl.metric_names()) or ''} | {cl.paper_figure} "
                     f"({cl.paper}, {cl.source}) | {ours} | {_shown(r.verdict, r.registered)} | "
                     f"{r.seeds} of {r.registered} | {conf_text} |")
    lines += ["", "## Claims one by one", ""]
    for r in evaluated:
        cl = r.claim
        lines += [f"### ({cl.key}) {cl.statement}", "",
                  f"{cl.paper}, {cl.source}: {cl.paper_figure}.", ""]
        if cl.note:
            lines += [f"Reading at this size: {cl.note}.", ""]
        if cl.margin:
            lines += [f"Margin: {cl.margin}.", ""]
        lines += [f"Registered seeds: {r.registered} (0-{r.registered - 1}). "
                  f"Verdict: **{_shown(r.verdict, r.registered)}**.", ""]
        for c in r.contrasts:
            where = _machines(c, ev)
            one = "" if len(where) <= 1 else f"; pairs runs of {len(where)} machines or unrecorded ones"
            lines.append(f"* {c.contrast.describe()}: {_fmt_iv(c)} -> {_shown(c.verdict, r.registered)}; "
                         f"{_fmt_detectable(c)}; {_fmt_floor(c)}{_second(c, results)}{one}")
        if r.confirmation_verdict is not None:
            lines += ["", f"Confirmation set (seeds {r.registered} and up, read apart from the verdict): "
                      f"**{r.confirmation_verdict}**.", ""]
            for c in r.confirmation:
                if c.seeds:
                    lines.append(f"* {c.contrast.describe()}: {_fmt_iv(c)} over seeds "
                                 f"{c.seeds[0]}-{c.seeds[-1]} -> {c.verdict}")
        grids = cl.grids()
        if grids:
            lines += ["", "Command:", "", "```"]
            lines += [command(g, [x for x in need.get(g, []) if any((g, x) in c.runs() for c in cl.contrasts)],
                              size, r.registered) for g in grids]
            lines += ["```"]
        lines.append("")
    return "\n".join(lines)


_COLOURS = {HOLDS: "tab:green", FAILS: "tab:red", INCONCLUSIVE: "tab:orange", BELOW_FLOOR: "tab:gray",
            NOT_MEASURED: "lightgray"}


def forest_plot(evaluated: list[ClaimResult], path: Path) -> bool:
    """One panel per claim: each contrast's interval (coloured by its verdict) against its margin band.
    Returns False (and writes nothing) when no contrast has an interval."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from siamgrad.checkpoint import atomic_write_bytes

    shown = [r for r in evaluated if any(c.interval is not None and c.interval.n >= 2 for c in r.contrasts)]
    if not shown:
        return False
    cols = 4
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, shown):
        for i, c in enumerate(r.contrasts):
            iv = c.interval
            if iv is None or iv.n < 2:
                continue
            ax.plot([iv.low, iv.high], [i, i], color=_COLOURS[c.verdict], lw=3)
            ax.plot([iv.mean], [i], "o", color="black", ms=3)
        for tol in {c.contrast.tol for c in r.contrasts}:  # the margin band (alike) or line, once
            if r.contrasts[0].contrast.kind == "alike":
                ax.axvspan(-tol, tol, color="tab:blue", alpha=0.12)
            ax.axvline(tol if r.contrasts[0].contrast.kind != "alike" else 0.0, color="tab:blue", lw=0.8, ls="--")
        labels = [c.contrast.a if c.contrast.b is None else f"{c.contrast.a} vs {c.contrast.b}"[:34]
                  for c in r.contrasts]
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_ylim(-0.7, len(labels) - 0.3)
        ax.set_title(f"({r.claim.key}) {r.verdict}", fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
    return True
