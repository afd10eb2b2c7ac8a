"""Experiments from the seed papers, each a grid of runs from one command.

    siamgrad reproduce NAME [size=cpu|paper|...] [only=RUN,RUN] [seeds=K] [key=value ...] [--out DIR]
    siamgrad reproduce list

Every experiment has a ``cpu`` size (the shared CIFAR-10 subset or the embedded digits, designed to
finish in under 30 minutes on 2 CPU cores) and a ``paper`` size (full datasets and ResNets, for a
GPU); those on the subset also have ``gpu_subset`` (the CPU runs with a CIFAR-stem ResNet-18 for
50 times the epochs: minutes per run on one GPU), some have more (``paper_stl10``). Each run of the grid is an ordinary ``siamgrad train`` run in
``OUT/NAME-SIZE/LABEL``; a run that already finished is not repeated, so an interrupted grid
continues where it stopped. Settings given on the command line apply to every run (after the
grid's own); ``only=a,b`` trains only the runs labelled ``a`` and ``b``. The results are collected into ``results.csv``, ``results.md`` and ``results.png`` in
``OUT/NAME-SIZE`` (rewritten after every run, so a grid in progress can be read).

``seeds=K`` repeats every run with ``seed=0..K-1`` (the initialization, the data order and the
augmentation draws) in ``OUT/NAME-SIZE/LABEL-sK``, all runs of seed 0 first; finished runs are
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

The grids (see ``docs/experiments.md`` for the settings, budgets and measured results):

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
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siamgrad.checkpoint import atomic_write_bytes, atomic_write_text
from siamgrad.errors import ConfigError, TrainingError
from siamgrad.experiments.stats import mean_interval

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
_CPU = ["preset=cifar10_cpu", f"data.root={SUBSET}", "eval.every=0", "diag.gradients=false",
        "diag.collapse=warn", "diag.report=false"]
# the paper sizes: kNN every 10 epochs, a collapse reported, not fatal
_PAPER = ["eval.every=10", "diag.collapse=warn"]

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
            "cpu": ["preset=cifar10_cpu", f"data.root={SUBSET}", "epochs=10", "eval.every=0"],
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
        sizes={"cpu": [*_CPU, "epochs=3"],
               "paper": ["preset=cifar10_resnet50_small_proj", *_PAPER],
               "paper_stl10": ["preset=stl10_resnet50_small_proj", *_PAPER]},
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
        sizes={"cpu": [*_CPU, "epochs=5"],
               "paper": ["preset=cifar10_resnet50_small_proj", *_PAPER],
               "paper_stl10": ["preset=stl10_resnet50_small_proj", *_PAPER]},
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

# The gpu_subset size: a grid's CPU runs on the same subset, with a CIFAR-stem ResNet-18 and 50 times
# the CPU epochs (150-500 epochs of 5,085 images, minutes per run on one GPU), kNN every tenth of
# the run; the run labels stay, so every claim reads at this size too. For the effects that need
# a longer schedule than the CPU's few epochs.
GPU_SUBSET_EPOCHS = 50


def with_gpu_subset(exp: Experiment) -> Experiment:
    """Add the ``gpu_subset`` size to a grid trained on the CIFAR-10 subset at ``cpu`` size."""
    cpu = exp.sizes["cpu"]
    epochs = next(int(s.partition("=")[2]) for s in reversed(cpu) if s.startswith("epochs="))
    longer = epochs * GPU_SUBSET_EPOCHS
    exp.sizes["gpu_subset"] = [*(s for s in cpu if not s.startswith("epochs=")), "backbone=resnet18",
                               "cifar_stem=true", f"epochs={longer}", f"eval.every={longer // 10}"]
    if isinstance(exp.runs, dict):
        exp.runs["gpu_subset"] = exp.runs["cpu"]
    return exp


for _exp in EXPERIMENTS.values():
    if f"data.root={SUBSET}" in _exp.sizes.get("cpu", []):
        with_gpu_subset(_exp)


def available() -> list[str]:
    return sorted(EXPERIMENTS)


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


def _split_seeds(settings: list[str]) -> tuple[int | None, list[str]]:
    """``seeds=K``: repeat every run with seeds 0..K-1 (``None`` when absent)."""
    seeds, rest = None, []
    for s in settings:
        if s.startswith("seeds="):
            v = s.partition("=")[2].strip()
            if not v.isdigit() or int(v) < 1:
                raise ConfigError(f"seeds={v} is not a positive whole number; give e.g. seeds=3")
            seeds = int(v)
        else:
            rest.append(s)
    if seeds is not None and "seed" in setting_keys(rest):
        raise ConfigError("seed= and seeds= together; seeds=K already sets seed=0..K-1, drop seed=")
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
    run after the grid's own. ``exp``: a grid that is not in :data:`EXPERIMENTS` (e.g. one of the
    claims' own grids), run under ``name``.
    """
    from siamgrad.config import build_config
    from siamgrad.train.loop import train

    if exp is None:
        if name not in EXPERIMENTS:
            raise ConfigError(f"unknown experiment '{name}'; choose one of: {', '.join(available())}")
        exp = EXPERIMENTS[name]
    size, extra = _split_size(list(settings or []))
    seeds, rest = _split_seeds(extra)
    only, run_extra = _split_only(rest)  # extra keeps only= and seeds= for the command shown in results.md
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
    plan = ([(label, label, s, None) for label, s in runs] if seeds is None else
            [(_seed_folder(root, label, k), label, [*s, f"seed={k}"], k) for k in range(seeds) for label, s in runs])
    for folder, label, run_settings, seed in plan:
        run_dir = root / folder
        timing = run_dir / "timing.json"
        cfg = build_config([*exp.sizes[size], *run_settings, *run_extra,
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
        except TrainingError as e:  # a diverged run is a result of the grid, not the end of it
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            row.update({"knn_top1": None, "best_knn_top1": None, "random_init_knn": None, "raw_pixel_knn": None,
                        "eff_rank": _last_eff_rank(run_dir), "steps": None,
                        "minutes": (time.monotonic() - t0) / 60, "cpu_minutes": (_cpu_seconds() - c0) / 60,
                        "status": f"failed: {first}"})
            if exp.full_train_knn:
                row["knn_full_train"] = None
            rows.append(_order(row, keys, exp))
            if log:
                print(f"[{name}/{size}] {folder}: failed ({first})", flush=True)
            _write_results(root, name, size, exp, rows, extra, len(plan))
            continue
        if not timing.exists() or result.step != json.loads(timing.read_text()).get("step"):
            atomic_write_text(timing, json.dumps({"seconds": time.monotonic() - t0,
                                                  "cpu_seconds": _cpu_seconds() - c0, "step": result.step}))
        times = json.loads(timing.read_text())
        seconds, cpu = times["seconds"], times.get("cpu_seconds")
        row.update({"knn_top1": result.knn_accuracy, "best_knn_top1": result.best_knn_accuracy,
                    "random_init_knn": result.random_knn_accuracy,
                    "raw_pixel_knn": result.raw_pixel_knn_accuracy, "eff_rank": _last_eff_rank(result.run_dir),
                    "steps": result.step, "minutes": seconds / 60,
                    "cpu_minutes": None if cpu is None else cpu / 60, "status": "ok"})
        if exp.full_train_knn:
            row["knn_full_train"] = full_train_knn(result.run_dir, result.step)
        rows.append(_order(row, keys, exp))
        if log:
            knn = row["knn_top1"]
            shown = "n/a" if knn is None else f"{knn:.2f}%"
            print(f"[{name}/{size}] {folder}: kNN {shown} ({row['minutes']:.1f} min)", flush=True)
        _write_results(root, name, size, exp, rows, extra, len(plan))
    if not rows:
        raise ConfigError(f"experiment '{name}' has no runs for size={size}")
    return _write_results(root, name, size, exp, rows, extra, len(plan))


_RESULT_COLUMNS = ["knn_top1", "best_knn_top1", "knn_full_train", "random_init_knn", "raw_pixel_knn", "eff_rank",
                   "steps", "minutes", "cpu_minutes", "status"]


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


def _write_csv(path: Path, rows: list[dict]) -> None:
    cols = list(rows[0].keys())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows([{c: ("" if r[c] is None else r[c]) for c in cols} for r in rows])
    atomic_write_text(path, buf.getvalue())


def _write_results(root: Path, name: str, size: str, exp: Experiment, rows: list[dict],
                   extra: list[str], total: int) -> Path:
    """Write results.csv/.md/.png of ``rows``; ``total``: the runs this invocation trains."""
    cols = list(rows[0].keys())
    _write_csv(root / "results.csv", rows)
    summary = seed_summary(rows) if "seed" in cols else None
    if summary:
        _write_csv(root / "results_seeds.csv", summary)
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
    return root / "results.md"


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
