"""The seed papers' experiments as data: each a grid of runs (a label and its settings) per size.

:data:`EXPERIMENTS` holds the papers' grids, :data:`CLAIM_GRIDS` the runs the claims need that no
paper grid holds; both are run by :func:`siamgrad.experiments.runner.run_experiment`
(``siamgrad reproduce NAME``). Sizes: ``cpu`` (the shared CIFAR-10 subset or the embedded digits,
under 30 minutes on 2 CPU cores), ``cpu24`` (the claims' CPU size: the CPU preset's shape for 12
epochs, each method with its tuned values), ``gpu`` (full CIFAR-10, a CIFAR-stem ResNet-18 for 200
epochs, each method at a published CIFAR recipe), ``paper`` (full datasets and the papers'
settings, for a GPU) and, for some, ``paper_stl10``.

Grids (see ``docs/experiments.md`` for the settings, budgets and measured results):

* ``unigrad_table1`` -- UniGrad Table 1: each method's original loss vs its unified-gradient form
  (stop-gradient target, no momentum encoder), UniGrad beside them;
* ``unigrad_table2`` -- UniGrad Table 2: the target branch of the gradient forms: stop-gradient vs
  momentum encoder vs momentum features in the positive term only;
* ``unigrad_table3`` -- UniGrad Table 3: UniGrad with multi-crop, with CutMix, with both;
* ``local_predictor`` -- BYOL and SimSiam with multi-crop: one predictor for every crop vs a
  predictor of its own for the local crops;
* ``directpred`` -- DirectPred vs BYOL with a trained linear predictor vs BYOL's 2-layer MLP
  predictor, and DirectPred's ``eps`` and ``rho`` sweeps;
* ``small_projectors`` -- arXiv 2312.10725: projector width x off-diagonal weight for Barlow Twins
  (``lambd``) and VICReg (``cov_weight``);
* ``many_views`` -- arXiv 2312.10725: M in {2, 4, 8} views at equal epochs on 100/50/25% of the data;
* ``methods`` / ``digits_methods`` -- every method's original loss with one budget.

The claims' own grids: ``claims_collapse`` (BYOL and SimSiam without a predictor) and
``claims_speed`` (arXiv 2312.10725's recommended setting against the usual one, timed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from siamgrad.errors import ConfigError

# the shared CIFAR-10 subset beside the repository (override with data.root=...)
SUBSET = str(Path(__file__).resolve().parents[4] / "shared" / "data" / "cifar10-subset")

Runs = list[tuple[str, list[str]]]


@dataclass
class Experiment:
    """A grid: settings shared by every run (per size) and the runs (label, own settings).

    ``runs`` is one list for every size, or a mapping size -> list when the sizes need different
    runs (e.g. the paper's widths on a GPU, fewer on a CPU). ``columns`` names the settings shown
    as table columns (``None``: every key some run sets, in order of first appearance). ``x`` and
    ``hue`` choose the plot: kNN top-1 against the column ``x``, one line per combination of the
    ``hue`` columns; without ``x`` a bar per run. ``full_train_knn`` adds the ``knn_full_train``
    column (for grids that vary ``data.fraction``).
    """

    description: str
    sizes: dict[str, list[str]]  # size -> settings shared by every run of the grid
    runs: Runs | dict[str, Runs]  # (label, settings of this run), or size -> such a list
    columns: list[str] | None = None
    x: str | None = None
    hue: list[str] = field(default_factory=list)
    full_train_knn: bool = False
    paper: str = ""  # what the paper reports, printed under the table

    def runs_for(self, size: str) -> Runs:
        if isinstance(self.runs, dict):
            if size not in self.runs:
                raise ConfigError(f"size={size} has no runs in this grid; choose one of: {', '.join(self.runs)}")
            return self.runs[size]
        return self.runs


# --------------------------------------------------------------------------------------------
# the grids

# Shared by the CPU sizes of the new grids: the CPU preset on the CIFAR-10 subset, kNN only at the
# end, diagnostics without the (costly) gradient decomposition, a detected collapse reported rather
# than stopping the grid (collapse is a result here), no per-run report (`siamgrad analyze RUN`
# writes it later). Sized so that a grid fits in half an hour on 2 cores (docs/experiments.md).
# The batch and image side every CPU grid and docs/claims.csv were measured at, whatever the preset's.
_CPU_SHAPE = ["batch_size=256", "augment.size=32"]
_CPU = ["preset=cifar10_cpu", f"data.root={SUBSET}", *_CPU_SHAPE, "eval.every=0", "diag.gradients=false",
        "diag.collapse=warn", "diag.report=false"]
# the paper sizes: kNN every 10 epochs, a collapse reported, not fatal
_PAPER = ["eval.every=10", "diag.collapse=warn"]

# The claims' CPU size: the CPU preset's shape (small ResNet, 24 px views, batch 128) on a schedule every
# method learns on, kNN every 4 epochs for the learning curves; the tuning searches at it too
CPU24_EPOCHS = 12
CPU24 = ["preset=cifar10_cpu", f"data.root={SUBSET}", f"epochs={CPU24_EPOCHS}", "eval.every=4",
         "diag.gradients=false", "diag.collapse=warn", "diag.report=false"]

# The values `siamgrad reproduce tune` chose for each method's run (original loss or gradient form) at CPU24 on the validation
# split (docs/tuning.md; tests/test_tuning.py holds them to docs/tuning.csv): method -> settings
TUNED: dict[str, list[str]] = {
    "simclr": ["method.temperature=0.1", "optim.lr=0.3"],
}

# Method options for a 128-d projector with a 512-d hidden layer (the CPU preset): every method
# gets the same backbone, data, epochs and optimizer; only its own loss options differ.
# VICReg's paper trains with LARS; with plain SGD its loss turns NaN within 30 steps on the CPU
# preset (at lr 0.3 and at 0.1), with LARS it trains at the same base lr
_VICREG_CPU = ["method=vicreg", "optim.name=lars"]

_METHOD_RUNS_CPU = [
    ("simclr", ["method=simclr", "method.temperature=0.2"]),
    ("moco", ["method=moco", "method.queue_size=4096", "method.momentum=0.99"]),
    ("byol", ["method=byol", "method.pred_hidden_dim=512", "method.momentum=0.99"]),
    ("simsiam", ["method=simsiam", "method.pred_hidden_dim=128"]),
    ("directpred", ["method=directpred", "method.momentum=0.99"]),
    ("barlow_twins", ["method=barlow_twins", "method.width_scaled=true"]),
    ("vicreg", _VICREG_CPU),
    ("unigrad", ["method=unigrad", "method.lam=5", "method.momentum=0.99"]),
]
_CPU_OPTS = dict(_METHOD_RUNS_CPU)

# The paper sizes take the official code's settings (each value's reference file is in
# docs/methods.md, "Differences from the reference implementations"; tests/test_paper_presets.py
# checks every resolved paper-size config against them). Original losses: each method's head,
# widths, optimizer (LARS with eta 0.001 where the reference uses LARS), learning rate per 256
# images, weight decay, warm-up, EMA momentum and loss coefficients of its official ImageNet code;
# where the reference ties the projector's hidden width to the backbone's output (SimCLR, MoCo,
# SimSiam) it is ResNet-18's 512. Every reference forwards each view separately (per-view batch-norm
# statistics, the default) but SimCLR's, which concatenates the views (view_bn=joint).
_PAPER_ORIGINAL = {
    "simclr": ["method=simclr", "method.proj_hidden_dim=512", "method.proj_output_dim=128", "method.proj_layers=2",
               "method.temperature=0.1", "method.view_bn=joint", "optim.name=lars", "optim.lr=0.3",
               "optim.weight_decay=1e-6", "optim.warmup_epochs=10"],
    "moco": ["method=moco", "method.proj_hidden_dim=512", "method.proj_output_dim=128", "method.proj_layers=2",
             "method.temperature=0.2", "method.queue_size=65536", "method.momentum=0.999",
             "method.momentum_schedule=constant", "optim.name=sgd", "optim.lr=0.03", "optim.weight_decay=1e-4",
             "optim.warmup_epochs=0"],
    "byol": ["method=byol", "method.proj_hidden_dim=4096", "method.proj_output_dim=256", "method.proj_layers=2",
             "method.pred_hidden_dim=4096", "method.momentum=0.996", "method.momentum_schedule=cosine",
             "optim.name=lars", "optim.lr=0.2", "optim.weight_decay=1.5e-6", "optim.warmup_epochs=10"],
    "simsiam": ["method=simsiam", "method.proj_hidden_dim=512", "method.proj_output_dim=2048", "method.proj_layers=3",
                "method.pred_hidden_dim=512", "optim.name=sgd", "optim.lr=0.05", "optim.weight_decay=1e-4",
                "optim.warmup_epochs=0"],
    "directpred": ["method=directpred", "method.proj_hidden_dim=512", "method.proj_output_dim=128",
                   "method.proj_layers=2", "method.momentum=0.996", "method.momentum_schedule=constant",
                   "optim.name=sgd", "optim.lr=0.06", "optim.weight_decay=4e-4", "optim.warmup_epochs=0",
                   "optim.min_lr_ratio=1.0"],
    "barlow_twins": ["method=barlow_twins", "method.proj_hidden_dim=8192", "method.proj_output_dim=8192",
                     "method.proj_layers=3", "method.lambd=0.0051", "optim.name=lars", "optim.lr=0.2",
                     "optim.weight_decay=1e-6", "optim.warmup_epochs=10"],
    "vicreg": ["method=vicreg", "method.proj_hidden_dim=8192", "method.proj_output_dim=8192", "method.proj_layers=3",
               "method.sim_weight=25", "method.var_weight=25", "method.cov_weight=1", "optim.name=lars",
               "optim.lr=0.2", "optim.weight_decay=1e-6", "optim.warmup_epochs=10"],
}
# UniGrad's gradient forms (fundamentalvision/UniGrad configs/*.py, project/model.py): every method
# with the 3-layer 2048-d projector (BN after the hidden layers, a bias in the last one), each view
# forwarded separately, SGD
# lr 0.05 per 256 images, weight decay 1e-4, 5 warm-up epochs, EMA momentum 0.996 on the cosine
# schedule; SimCLR tau 0.2, Barlow Twins lambda 50, BYOL rho 0.99 and eps 0.3, UniGrad lambda 100.
_UNIGRAD_SETUP = ["method.proj_hidden_dim=2048", "method.proj_output_dim=2048", "method.proj_layers=3",
                  "method.proj_hidden_bn=true", "method.proj_hidden_bn_affine=true", "method.proj_last_bn=false",
                  "method.proj_last_bias=true", "method.view_bn=per_view", "method.momentum=0.996",
                  "method.momentum_schedule=cosine",
                  "optim.name=sgd", "optim.lr=0.05", "optim.weight_decay=1e-4", "optim.warmup_epochs=5"]
_PAPER_GRADIENT = {
    "simclr": [*_UNIGRAD_SETUP, "method.temperature=0.2"],
    "moco": [*_UNIGRAD_SETUP],
    "byol": [*_UNIGRAD_SETUP, "method.rho=0.99", "method.eps=0.3"],
    "simsiam": [*_UNIGRAD_SETUP, "method.rho=0.99", "method.eps=0.3"],
    "barlow_twins": [*_UNIGRAD_SETUP, "method.lam=50"],
    "vicreg": [*_UNIGRAD_SETUP, "method.lam=50"],
}
_PAPER_UNIGRAD = ["method=unigrad", *_UNIGRAD_SETUP, "method.lam=100", "method.rho=0.99"]
_PAPER_OPTS = {**_PAPER_ORIGINAL, "unigrad": _PAPER_UNIGRAD}
_PAPER_METHOD_RUNS = [(m, _PAPER_OPTS[m]) for m in
                      ("simclr", "moco", "byol", "simsiam", "directpred", "barlow_twins", "vicreg", "unigrad")]

# DirectPred's paper size (facebookresearch/luckmatters ssl/real-dataset, config/byol_config.yaml and
# the README's DirectPred command): the stl10_resnet18 preset (512-128 projector with non-affine
# hidden BN and biases, SGD lr 0.03 at batch 128 held constant, weight decay 4e-4, EMA 0.996
# constant); its BYOL baselines with the same code's heads (non-affine BN, biases) and a trained
# linear predictor without bias.
_PAPER_BYOL_LUCKMATTERS = ["method=byol", "method.proj_hidden_bn_affine=false", "method.proj_last_bias=true",
                           "method.pred_hidden_dim=512", "method.pred_hidden_bn_affine=false",
                           "method.momentum=0.996", "method.momentum_schedule=constant"]
_PAPER_DIRECTPRED: Runs = [
    ("byol-mlp_predictor", [*_PAPER_BYOL_LUCKMATTERS, "method.pred_layers=2", "method.pred_last_bias=true"]),
    ("byol-linear_predictor", [*_PAPER_BYOL_LUCKMATTERS, "method.pred_layers=1", "method.pred_last_bias=false"]),
    ("directpred", ["method=directpred"]),
    *[(f"directpred-eps{e:g}", ["method=directpred", f"method.eps={e}"]) for e in (0.0, 0.1, 0.3)],
    *[(f"directpred-rho{r:g}", ["method=directpred", f"method.rho={r}"]) for r in (0.0, 0.9, 0.99)],
]

# Balance lambda of the decorrelation gradient forms: 50 at the paper's 2048-d projector. The
# negative term (a correlation matrix applied to a unit vector) shrinks like 1/width, so the CPU
# size's 128-d projector takes 50 * 128 / 2048 ~ 3 (as UniGrad's 100 becomes 5 there).
_CPU_GRADIENT_LAM = {"barlow_twins": ["method.lam=3"], "vicreg": ["method.lam=3"]}

_TABLE1_METHODS = ("simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg")


def _table1(opts: dict[str, list[str]], gradient_extra: dict[str, list[str]]) -> Runs:
    runs: Runs = []
    for m in _TABLE1_METHODS:
        runs.append((f"{m}-original", [*opts[m], "method.form=original"]))
        runs.append((f"{m}-gradient", [*opts[m], "method.form=gradient", "method.target=stopgrad",
                                        *gradient_extra.get(m, [])]))
    runs.append(("unigrad", [*opts["unigrad"], "method.form=original", "method.target=stopgrad"]))
    return runs


_TABLE2_METHODS = ("simclr", "byol", "barlow_twins", "unigrad")
_TARGETS = ("stopgrad", "momentum", "momentum_positive")


def _table2(opts: dict[str, list[str]], gradient_extra: dict[str, list[str]], momentum: list[str]) -> Runs:
    return [(f"{m}-{t}", [*opts[m], "method.form=gradient", f"method.target={t}", *gradient_extra.get(m, []),
                          *momentum])
            for m in _TABLE2_METHODS for t in _TARGETS]


def _directpred(byol: list[str], directpred: list[str]) -> Runs:
    runs: Runs = [
        ("byol-mlp_predictor", [*byol, "method.pred_layers=2"]),
        ("byol-linear_predictor", [*byol, "method.pred_layers=1"]),
        ("directpred", [*directpred]),
    ]
    runs += [(f"directpred-eps{e:g}", [*directpred, f"method.eps={e}"]) for e in (0.0, 0.1, 0.3)]
    runs += [(f"directpred-rho{r:g}", [*directpred, f"method.rho={r}"]) for r in (0.0, 0.9, 0.99)]
    return runs


def _width(d: int) -> list[str]:
    return [f"method.proj_hidden_dim={d}", f"method.proj_output_dim={d}"]


# CPU: three widths x three weights: Barlow Twins (l2-normalized features, as in arXiv 2312.10725)
# with 0.0051 (its paper's value, tuned for 8192-d) and the lambda(d) of arXiv 2312.10725 at 512-d
# (0.01) and 128-d (0.04); VICReg's cov_weight 1 (its
# paper's) and the same width scaling applied to it (x 12.5 at 512-d, x 50 at 128-d).
_SMALL_PROJ_CPU: Runs = [
    *[(f"bt-d{d}-lambd{w:g}", ["method=barlow_twins", "method.l2=true", *_width(d), f"method.lambd={w}"])
      for d in (32, 128, 512) for w in (0.0051, 0.01, 0.04)],
    *[(f"vicreg-d{d}-cov{w:g}", [*_VICREG_CPU, *_width(d), f"method.cov_weight={w}"])
      for d in (32, 128, 512) for w in (1.0, 12.5, 50.0)],
]
# arXiv 2312.10725's setups (CIFAR-stem ResNet-50, AdamW) on CIFAR-10 and on STL-10
_SMALL_PROJ_PAPER_SIZES = {"paper": ["preset=cifar10_resnet50_small_proj", *_PAPER],
                           "paper_stl10": ["preset=stl10_resnet50_small_proj", *_PAPER]}
# Paper: the widths of arXiv 2312.10725 with the default weight vs the width-scaled one.
_SMALL_PROJ_PAPER: Runs = [
    *[(f"{tag}-d{d}-{'scaled' if s else 'default'}", [f"method={m}", *_width(d), f"method.width_scaled={str(s).lower()}"])
      for m, tag in (("barlow_twins", "bt"), ("vicreg", "vicreg"))
      for d in (128, 256, 512, 1024, 2048, 8192) for s in (False, True)],
]


def _views(points: list[tuple[int, float]], methods: list[tuple[str, list[str]]]) -> Runs:
    return [(f"{tag}-M{m}-data{int(round(100 * f))}", [*opts, f"augment.n_views={m}", f"data.fraction={f}"])
            for tag, opts in methods for m, f in points]


_VIEW_METHODS = [("bt", ["method=barlow_twins", "method.width_scaled=true"]), ("vicreg", ["method=vicreg"])]
_VIEW_METHODS_CPU = [_VIEW_METHODS[0], ("vicreg", _VICREG_CPU)]
# CPU: M=8 on all the data (4x the cost of M=2) is left to the paper size to keep under 30 minutes.
_VIEWS_CPU = [(2, 1.0), (4, 1.0), (2, 0.5), (4, 0.5), (2, 0.25), (8, 0.25)]
_VIEWS_PAPER = [(2, 1.0), (4, 1.0), (8, 1.0), (2, 0.5), (4, 0.5), (2, 0.25), (8, 0.25)]


def _baseline_once(runs: Runs) -> Runs:
    """The random-init kNN baseline in the first run only: every run of a grid starts from the same
    backbone initialization (same seed, same backbone), so it is the same figure for all."""
    return [(label, s if i == 0 else [*s, "eval.random_baseline=false"]) for i, (label, s) in enumerate(runs)]


# UniGrad Table 3: UniGrad alone, with multi-crop, with CutMix, with both (the momentum encoder of
# its reference). CPU: 4 local crops of 16 px beside the preset's two 32 px crops, local crop scale
# 0.05-0.2 (below the global crops' 0.2-1, which stay as in the other runs). Paper: the multi-crop
# recipe of UniGrad's Table 3 (2 x 224 px at scale 0.14-1 and 6 x 96 px at 0.05-0.14) on ImageNet,
# ResNet-50, 100 epochs, batch 1024, UniGrad's official settings (data.root=IMAGENET to give).
_MULTICROP_CPU = ["augment.local_crops=4", "augment.local_size=16", "augment.local_scale=[0.05, 0.2]"]
_MULTICROP_PAPER = ["augment.scale=[0.14, 1.0]", "augment.local_crops=6", "augment.local_size=96",
                    "augment.local_scale=[0.05, 0.14]"]
_CUTMIX = ["augment.mix=cutmix", "augment.mix_alpha=1.0"]
_PAPER_IMAGENET = ["preset=cifar10_resnet18", "data=imagefolder", "backbone=resnet50", "cifar_stem=false",
                   "augment.preset=simclr", "augment.size=224", "batch_size=1024", "epochs=100", *_PAPER]


def _table3(unigrad: list[str], multicrop: list[str]) -> Runs:
    return [("unigrad", unigrad), ("unigrad-multicrop", [*unigrad, *multicrop]),
            ("unigrad-cutmix", [*unigrad, *_CUTMIX]), ("unigrad-multicrop-cutmix", [*unigrad, *multicrop, *_CUTMIX])]


def _local_predictor(opts: dict[str, list[str]]) -> Runs:
    return [(f"{m}-{kind}", [*opts[m], f"method.local_predictor={own}"])
            for m in ("byol", "simsiam") for kind, own in (("shared", "false"), ("own", "true"))]


_T1_PAPER_TEXT = ("UniGrad (ResNet-50, ImageNet, 100 epochs, linear eval): original losses MoCo 67.4, SimCLR 62.7, "
                  "SimSiam 68.1, BYOL 66.5, VICReg 68.6, Barlow Twins 68.7; their gradient forms without a momentum "
                  "encoder 67.6-67.9; UniGrad 70.3 (with its momentum encoder).")

EXPERIMENTS: dict[str, Experiment] = {
    "methods": Experiment(
        "every method's original loss with the same backbone, data and budget (kNN top-1)",
        sizes={
            "cpu": ["preset=cifar10_cpu", f"data.root={SUBSET}", *_CPU_SHAPE, "epochs=10", "eval.every=0"],
            "paper": ["preset=cifar10_resnet18", "epochs=200"],
        },
        runs={"cpu": _METHOD_RUNS_CPU, "paper": _PAPER_METHOD_RUNS},
        columns=[],
    ),
    "digits_methods": Experiment(
        "every method on the embedded digits data, CPU demo defaults (kNN top-1)",
        sizes={"cpu": ["eval.every=0"], "paper": ["eval.every=0"]},
        runs=_METHOD_RUNS_CPU,
        columns=[],
    ),
    "unigrad_table1": Experiment(
        "UniGrad Table 1: each method's original loss vs its unified-gradient form (stop-gradient target, "
        "no momentum encoder); UniGrad with the same target",
        sizes={"cpu": [*_CPU, "epochs=4"], "paper": ["preset=cifar10_resnet18", "epochs=200", *_PAPER]},
        runs={"cpu": _baseline_once(_table1(_CPU_OPTS, _CPU_GRADIENT_LAM)),
              "paper": _table1(_PAPER_OPTS, _PAPER_GRADIENT)},
        columns=["method.form", "method.target", "method.lam"],
        hue=["form"],
        paper=_T1_PAPER_TEXT,
    ),
    "unigrad_table2": Experiment(
        "UniGrad Table 2: the target branch of the gradient forms -- stop-gradient (shared weights) vs "
        "momentum encoder vs momentum features in the positive term only",
        sizes={"cpu": [*_CPU, "epochs=4"], "paper": ["preset=cifar10_resnet18", "epochs=200", *_PAPER]},
        runs={"cpu": _baseline_once(_table2(_CPU_OPTS, _CPU_GRADIENT_LAM, ["method.momentum=0.99"])),
              "paper": _table2(_PAPER_OPTS, _PAPER_GRADIENT, [])},
        columns=["method.target", "method.lam", "method.momentum"],
        x="target",
        hue=["method"],
        paper="UniGrad: the gradient forms reach 67.6-67.9 without and 69.8-70.2 with a momentum encoder "
              "(ResNet-50, ImageNet, 100 epochs): the momentum encoder is worth about 2 points.",
    ),
    "unigrad_table3": Experiment(
        "UniGrad Table 3: UniGrad with its momentum encoder, + multi-crop (local crops paired with the global "
        "crops' targets), + CutMix (a mixed copy of each global crop, ratio-weighted targets), + both",
        sizes={"cpu": [*_CPU, "epochs=4"], "paper": _PAPER_IMAGENET},
        runs={"cpu": _baseline_once(_table3(_CPU_OPTS["unigrad"], _MULTICROP_CPU)),
              "paper": _table3(_PAPER_UNIGRAD, _MULTICROP_PAPER)},
        columns=["augment.local_crops", "augment.local_size", "augment.mix"],
        paper="UniGrad Table 3 (ResNet-50, ImageNet, linear eval): CutMix and multi-crop each improve UniGrad "
              "(per-setting figures not transcribed here); UniGrad + CutMix reaches 74.9 at 800 epochs "
              "(the paper's repository README).",
    ),
    "local_predictor": Experiment(
        "Multi-crop for the asymmetric methods: the local crops through the global crops' predictor "
        "(shared) or through a predictor of their own (method.local_predictor=true)",
        sizes={"cpu": [*_CPU, "epochs=4", *_MULTICROP_CPU], "paper": [*_PAPER_IMAGENET, *_MULTICROP_PAPER]},
        runs={"cpu": _baseline_once(_local_predictor(_CPU_OPTS)), "paper": _local_predictor(_PAPER_OPTS)},
        columns=["method.local_predictor"],
        x="local_predictor",
        hue=["method"],
        paper="No seed paper measures it: a predictor per view type is reported to keep BYOL, SimSiam and "
              "MoCo v3 stable with local crops; this grid measures whether it helps here.",
    ),
    "directpred": Experiment(
        "DirectPred (linear predictor set from the feature correlation) vs BYOL with a trained linear "
        "predictor vs BYOL's 2-layer MLP predictor; DirectPred's eps and rho sweeps",
        sizes={"cpu": [*_CPU, "epochs=4"], "paper": ["preset=stl10_resnet18", *_PAPER]},
        runs={
            "cpu": _baseline_once(_directpred(["method=byol", "method.pred_hidden_dim=512", "method.momentum=0.99"],
                                              ["method=directpred", "method.momentum=0.99"])),
            "paper": _PAPER_DIRECTPRED,
        },
        columns=["method.pred_layers", "method.eps", "method.rho"],
        paper="DirectPred (ImageNet, 300 epochs): matches BYOL's 2-layer BN predictor and beats a trained "
              "linear predictor by 2.5 points (5 points at 60 epochs); STL-10/CIFAR-10 ResNet-18: on par.",
    ),
    "small_projectors": Experiment(
        "arXiv 2312.10725: projector width x off-diagonal weight (Barlow Twins lambd, VICReg cov_weight)",
        sizes={"cpu": [*_CPU, "epochs=3"], **_SMALL_PROJ_PAPER_SIZES},
        runs={"cpu": _baseline_once(_SMALL_PROJ_CPU), "paper": _SMALL_PROJ_PAPER, "paper_stl10": _SMALL_PROJ_PAPER},
        columns=["method.proj_output_dim", "method.lambd", "method.l2", "method.cov_weight", "method.width_scaled"],
        x="proj_output_dim",
        hue=["method", "lambd", "cov_weight", "width_scaled"],
        paper="arXiv 2312.10725: with the off-diagonal weight scaled like 1/d (d=128: 0.04 ... 8192: 0.0008, "
              "l2-normalized features) a 256-d projector matches an 8192-d one.",
    ),
    "unigrad_lambda": Experiment(
        "UniGrad's balance lambda: the weight of the negative term lambda F u1 against the pull -u2^m, "
        "with the preset's momentum encoder",
        sizes={"cpu": [*_CPU, "epochs=4"], "paper": ["preset=cifar10_resnet18", "epochs=200", *_PAPER]},
        runs={"cpu": _baseline_once([(f"unigrad-lam{lam:g}", ["method=unigrad", f"method.lam={lam}",
                                                              "method.momentum=0.99"])
                                     for lam in (0.5, 2.0, 5.0, 10.0, 20.0, 50.0)]),
              "paper": [(f"unigrad-lam{lam:g}", [*_PAPER_UNIGRAD, f"method.lam={lam}"])
                        for lam in (25.0, 50.0, 100.0, 200.0, 400.0)]},
        columns=["method.lam"],
        x="lam",
        paper="UniGrad's reference setting is lambda 100 with a 2048-d projector; the negative term "
              "F u1 of a unit vector shrinks like 1/width, so a 128-d projector needs a smaller lambda.",
    ),
    "many_views": Experiment(
        "arXiv 2312.10725: M views per image at equal epochs, on 100/50/25% of the training data",
        sizes={"cpu": [*_CPU, "epochs=5"], **_SMALL_PROJ_PAPER_SIZES},
        runs={"cpu": _baseline_once(_views(_VIEWS_CPU, _VIEW_METHODS_CPU)), "paper": _views(_VIEWS_PAPER, _VIEW_METHODS),
              "paper_stl10": _views(_VIEWS_PAPER, _VIEW_METHODS)},
        columns=["augment.n_views", "data.fraction"],
        x="fraction",
        hue=["method", "n_views"],
        full_train_knn=True,
        paper="arXiv 2312.10725: more views learn better features and faster; 4 views on 50% or 8 views on 25% "
              "of the data match 2 views on all of it.",
    ),
}

# The gpu size: what a GPU user runs. Full CIFAR-10 (give data.root=, or data.download=true), a
# CIFAR-stem ResNet-18 for 200 epochs at batch 256, kNN every 20 epochs, each method's original loss
# at solo-learn's CIFAR recipe (vturrisi/solo-learn scripts/pretrain/cifar/METHOD.yaml, which report
# 90.5-92.9% linear at 1000 epochs): its heads, optimizer (LARS with trust coefficient 0.02, biases
# and norms excluded, where it uses LARS), learning rate per 256 images, weight decay, EMA momentum
# and loss coefficients, with solo-learn's warm-up cosine schedule (10 warm-up epochs). DirectPred
# has no solo-learn recipe: its own code's CIFAR setting (the paper size's); UniGrad neither: its
# reference settings (the paper size's). The gradient forms take UniGrad's reference setup, as at
# the paper size. docs/claims_gpu.md estimates the GPU-hours from the GPU suite's figures.
GPU_EPOCHS = 200
_GPU = ["preset=cifar10_resnet18", "epochs=200", "batch_size=256", "eval.every=20", "diag.gradients=false",
        "diag.collapse=warn", "diag.report=false"]
_SOLO_LARS = ["optim.name=lars", "optim.lars_eta=0.02"]
_SOLO_WARMUP = ["optim.warmup_epochs=10"]
_GPU_ORIGINAL = {
    "simclr": ["method=simclr", "method.proj_hidden_dim=2048", "method.proj_output_dim=256", "method.proj_layers=2",
               "method.temperature=0.2", "method.view_bn=joint", *_SOLO_LARS, "optim.lr=0.4",
               "optim.weight_decay=1e-4", *_SOLO_WARMUP],
    "moco": ["method=moco", "method.proj_hidden_dim=2048", "method.proj_output_dim=256", "method.proj_layers=2",
             "method.temperature=0.2", "method.queue_size=32768", "method.momentum=0.99",
             "method.momentum_schedule=cosine", "optim.name=sgd", "optim.lr=0.3", "optim.weight_decay=1e-4",
             *_SOLO_WARMUP],
    "byol": ["method=byol", "method.proj_hidden_dim=4096", "method.proj_output_dim=256", "method.proj_layers=2",
             "method.pred_hidden_dim=4096", "method.momentum=0.99", "method.momentum_schedule=cosine", *_SOLO_LARS,
             "optim.lr=1.0", "optim.weight_decay=1e-5", *_SOLO_WARMUP],
    "simsiam": ["method=simsiam", "method.proj_hidden_dim=2048", "method.proj_output_dim=2048",
                "method.pred_hidden_dim=512", "optim.name=sgd", "optim.lr=0.5", "optim.weight_decay=1e-5",
                *_SOLO_WARMUP],
    "directpred": _PAPER_ORIGINAL["directpred"],
    "barlow_twins": ["method=barlow_twins", "method.proj_hidden_dim=2048", "method.proj_output_dim=2048",
                     "method.proj_layers=3", "method.lambd=0.0051", *_SOLO_LARS, "optim.lr=0.3",
                     "optim.weight_decay=1e-4", *_SOLO_WARMUP],
    "vicreg": ["method=vicreg", "method.proj_hidden_dim=2048", "method.proj_output_dim=2048", "method.proj_layers=3",
               "method.sim_weight=25", "method.var_weight=25", "method.cov_weight=1", *_SOLO_LARS, "optim.lr=0.3",
               "optim.weight_decay=1e-4", *_SOLO_WARMUP],
}
_GPU_OPTS = {**_GPU_ORIGINAL, "unigrad": _PAPER_UNIGRAD}
_GPU_VIEWS = [("bt", _GPU_ORIGINAL["barlow_twins"]), ("vicreg", _GPU_ORIGINAL["vicreg"])]
_GPU_RUNS: dict[str, Runs] = {
    "methods": [(m, _GPU_OPTS[m]) for m in _CPU_OPTS],
    "unigrad_table1": _table1(_GPU_OPTS, _PAPER_GRADIENT),
    "unigrad_table2": _table2(_GPU_OPTS, _PAPER_GRADIENT, []),
    "unigrad_table3": _table3(_PAPER_UNIGRAD, _MULTICROP_CPU),
    "local_predictor": [(label, [*s, *_MULTICROP_CPU]) for label, s in _local_predictor(_GPU_OPTS)],
    "directpred": _directpred(_GPU_ORIGINAL["byol"], _GPU_ORIGINAL["directpred"]),
    "small_projectors": [(f"{tag}-d{d}-{'scaled' if sc else 'default'}",
                          [*_GPU_ORIGINAL[m], *_width(d), f"method.width_scaled={str(sc).lower()}"])
                         for m, tag in (("barlow_twins", "bt"), ("vicreg", "vicreg"))
                         for d in (128, 256, 512, 1024, 2048, 8192) for sc in (False, True)],
    "unigrad_lambda": [(f"unigrad-lam{lam:g}", [*_PAPER_UNIGRAD, f"method.lam={lam}"])
                       for lam in (25.0, 50.0, 100.0, 200.0, 400.0)],
    "many_views": _views(_VIEWS_PAPER, _GPU_VIEWS),
}


def with_gpu(exp: Experiment, runs: Runs, extra: list[str] | None = None) -> Experiment:
    """Add the ``gpu`` size (see above) to a grid, with ``runs`` and the grid's own ``extra`` settings."""
    exp.sizes["gpu"] = [*_GPU, *(extra or [])]
    if not isinstance(exp.runs, dict):
        exp.runs = {size: exp.runs for size in exp.sizes if size != "gpu"}
    exp.runs["gpu"] = runs
    return exp


CLAIM_GRIDS: dict[str, Experiment] = {
    "claims_collapse": Experiment(
        "BYOL and SimSiam without a predictor (DirectPred's collapse claim) beside the same methods with their "
        "predictors (the controls), 4 epochs as the directpred grid",
        sizes={"cpu": [*_CPU, "epochs=4"], "paper": ["preset=stl10_resnet18", *_PAPER]},
        runs=[("byol-no_predictor", ["method=byol", "method.pred_layers=0", "method.momentum=0.99"]),
              ("simsiam-no_predictor", ["method=simsiam", "method.pred_layers=0"]),
              ("byol-predictor", _CPU_OPTS["byol"]),
              ("simsiam-predictor", _CPU_OPTS["simsiam"])],
        columns=["method.pred_layers"],
    ),
    "claims_speed": Experiment(
        "arXiv 2312.10725's recommended setting against the usual one, timed: VICReg with a 128-d projector "
        "(its width's covariance weight) and 4 views vs a 512-d projector and 2 views, kNN after every epoch",
        sizes={"cpu": [*_CPU, "epochs=8", "eval.every=1"],
               "paper": ["preset=cifar10_resnet50_small_proj", *_PAPER]},
        runs={"cpu": [("vicreg-d512-M2", [*_VICREG_CPU, *_width(512), "method.cov_weight=12.5"]),
                      ("vicreg-d128-M4", [*_VICREG_CPU, *_width(128), "method.cov_weight=50", "augment.n_views=4"])],
              "paper": [("vicreg-d8192-M2", ["method=vicreg", *_width(8192)]),
                        ("vicreg-d256-M4", ["method=vicreg", *_width(256), "method.width_scaled=true",
                                            "augment.n_views=4"])]},
        columns=["method.proj_output_dim", "augment.n_views"],
    ),
}

def _tuned_key(settings: list[str]) -> str | None:
    """The :data:`TUNED` entry of a run: its method's name, ``NAME-gradient`` for a gradient form."""
    given = dict(s.partition("=")[::2] for s in settings)
    name = given.get("method") or given.get("method.name")
    if name is None:
        return None
    return f"{name}-gradient" if given.get("method.form") == "gradient" else name


def tuned(settings: list[str]) -> list[str]:
    """A run's settings with its method's tuned values (:data:`TUNED`) added, except the keys the run
    varies itself: a grid's own variation (a width's covariance weight, a swept lambda) wins over the
    tuned value, while the CPU grids' method defaults (:data:`_CPU_OPTS`, the gradient forms' CPU
    lambda), which the search started from, give way to it."""
    key = _tuned_key(settings) or ""
    name = key.removesuffix("-gradient")
    defaults = {*_CPU_OPTS.get(name, []), *(_CPU_GRADIENT_LAM.get(name, []) if key.endswith("-gradient") else [])}
    own = {s.partition("=")[0] for s in settings if s not in defaults}
    extra = [t for t in TUNED.get(key, []) if t.partition("=")[0] not in own]
    if any(t.startswith("method.lambd=") for t in extra) and "method.width_scaled=true" in settings:
        # width_scaled is l2-normalization plus the width's lambd: the tuned lambd takes the formula's place
        settings = [("method.l2=true" if s == "method.width_scaled=true" else s) for s in settings]
    return [*settings, *extra]


def with_cpu24(exp: Experiment) -> Experiment:
    """Add the ``cpu24`` size, the claims' CPU size, to a grid trained on the CIFAR-10 subset at ``cpu``
    size: :data:`CPU24`'s schedule and shape with the grid's own extras (local crops, kNN every epoch),
    the ``cpu`` runs with their methods' tuned values."""
    extras = [s for s in exp.sizes["cpu"] if s not in _CPU and not s.startswith(("epochs=", "preset=", "data.root="))
              and s not in _CPU_SHAPE and s != "eval.every=0"]
    exp.sizes["cpu24"] = [*CPU24, *extras]
    runs = exp.runs["cpu"] if isinstance(exp.runs, dict) else exp.runs
    tuned_runs = [(label, tuned(s)) for label, s in runs]
    if isinstance(exp.runs, dict):
        exp.runs["cpu24"] = tuned_runs
    else:
        exp.runs = {size: runs for size in exp.sizes if size != "cpu24"} | {"cpu24": tuned_runs}
    return exp


_GPU_RUNS |= {
    "claims_collapse": [("byol-no_predictor", [*_GPU_ORIGINAL["byol"], "method.pred_layers=0"]),
                        ("simsiam-no_predictor", [*_GPU_ORIGINAL["simsiam"], "method.pred_layers=0"]),
                        ("byol-predictor", _GPU_ORIGINAL["byol"]), ("simsiam-predictor", _GPU_ORIGINAL["simsiam"])],
    "claims_speed": [("vicreg-d8192-M2", [*_GPU_ORIGINAL["vicreg"], *_width(8192)]),
                     ("vicreg-d256-M4", [*_GPU_ORIGINAL["vicreg"], *_width(256), "method.width_scaled=true",
                                         "augment.n_views=4"])],
}

for _name, _exp in [*EXPERIMENTS.items(), *CLAIM_GRIDS.items()]:
    if f"data.root={SUBSET}" in _exp.sizes.get("cpu", []):
        with_cpu24(_exp)
    if _name in _GPU_RUNS:  # claims_speed: a learning curve fine enough to time (o) on
        with_gpu(_exp, _GPU_RUNS[_name], ["eval.every=5"] if _name == "claims_speed" else None)


def available() -> list[str]:
    """Every grid's name: the papers' grids, then the claims' own."""
    return [*sorted(EXPERIMENTS), *sorted(CLAIM_GRIDS)]


def find(name: str) -> Experiment:
    """The grid called ``name``, in :data:`EXPERIMENTS` or :data:`CLAIM_GRIDS`."""
    exp = EXPERIMENTS.get(name) or CLAIM_GRIDS.get(name)
    if exp is None:
        raise ConfigError(f"unknown experiment '{name}'; choose one of: {', '.join(available())}, claims")
    return exp
