"""Every paper-size config, resolved, against a table of the reference implementations' settings.

The table is written from the official code (the file of each entry is named beside it; the
values also appear in docs/methods.md, "Differences from the reference implementations"). For each
run of each paper-size grid the test builds the config exactly as ``siamgrad reproduce`` does,
resolves the method's options and checks heads, widths, optimizer, LARS eta, learning rate, weight
decay, warm-up, EMA momentum and schedule, temperature and the loss coefficients. Settings a grid
sweeps on purpose (UniGrad's lambda, DirectPred's eps and rho, the predictor depth, widths of the
arXiv 2312.10725 grids) are not compared.
"""

from __future__ import annotations

import pytest

from siamgrad.config import build_config
from siamgrad.experiments.grids import EXPERIMENTS
from siamgrad.methods.registry import REGISTRY, resolve_options
from siamgrad.methods.siamese import head_spec

_UNIGRAD_HEAD = dict(hidden_bn=True, hidden_bn_affine=True, last_bn=False, last_bias=True)
_UNIGRAD_STEP = dict(widths=(2048, 2048, 3), head=_UNIGRAD_HEAD, optim=("sgd", 0.05, 1e-4, 5),
                     momentum=(0.996, "cosine"))

REFERENCE: dict[str, dict] = {
    # google-research/simclr run.py (LARS, lr 0.3 per 256, wd 1e-6, tau 0.1, 10 warm-up epochs),
    # model_util.py projection_head / linear_layer (hidden width = the backbone's, output BN with a
    # scale and no shift, no bias), lars_optimizer.py (eeta 0.001)
    "simclr/original": dict(widths=(512, 128, 2), optim=("lars", 0.3, 1e-6, 10), eta=0.001,
                            head=dict(hidden_bn=True, last_bn=True, last_bn_center=False, last_bias=False),
                            options=dict(temperature=0.1, view_bn="joint")),  # model.py: views concatenated
    # facebookresearch/moco main_moco.py + README (v2: --mlp --moco-t 0.2 --cos; lr 0.03 per 256,
    # wd 1e-4), moco/builder.py (K 65536, m 0.999 constant, mlp = Linear-ReLU-Linear, hidden = backbone)
    "moco/original": dict(widths=(512, 128, 2), optim=("sgd", 0.03, 1e-4, 0), momentum=(0.999, "constant"),
                          head=dict(hidden_bn=False, last_bn=False, last_bias=True),
                          options=dict(temperature=0.2, queue_size=65536, shuffle_bn=True)),
    # deepmind-research byol/configs/byol.py (LARS eta 1e-3, base lr 0.2, wd 1.5e-6, 10 warm-up
    # epochs, tau 0.996 cosine), byol/utils/networks.py MLP (4096 -> 256, no output bias)
    "byol/original": dict(widths=(4096, 256, 2), optim=("lars", 0.2, 1.5e-6, 10), eta=0.001,
                          momentum=(0.996, "cosine"),
                          head=dict(hidden_bn=True, last_bn=False, last_bias=False),
                          pred=dict(hidden=4096, head=dict(hidden_bn=True, last_bias=False))),
    # facebookresearch/simsiam main_simsiam.py (SGD lr 0.05 per 256, wd 1e-4, no warm-up),
    # simsiam/builder.py (hidden = backbone, dim 2048, output BN without affine, predictor 512)
    "simsiam/original": dict(widths=(512, 2048, 3), optim=("sgd", 0.05, 1e-4, 0),
                             head=dict(hidden_bn=True, last_bn=True, last_bn_affine=False),
                             pred=dict(hidden=512, head=dict(hidden_bn=True, last_bias=True))),
    # facebookresearch/luckmatters ssl/real-dataset config/byol_config.yaml + README's DirectPred
    # command (512-128 projector with non-affine BN and biases, SGD lr 0.03 at batch 128 constant,
    # wd 4e-4, m 0.996 constant, freq 1, rho 0.3, eps 0.01, predictor trained between resets)
    "directpred/original": dict(widths=(512, 128, 2), optim=("sgd", 0.06, 4e-4, 0), constant_lr=True,
                                momentum=(0.996, "constant"),
                                head=dict(hidden_bn=True, hidden_bn_affine=False, last_bias=True),
                                options=dict(freq=1, rho=0.3, eps=0.01, predictor_update="sgd")),
    # the same code's BYOL: MLPHead for projector and predictor (non-affine BN, biases), m constant
    "byol/luckmatters": dict(widths=(512, 128, 2), optim=("sgd", 0.06, 4e-4, 0), constant_lr=True,
                             momentum=(0.996, "constant"),
                             head=dict(hidden_bn=True, hidden_bn_affine=False, last_bias=True),
                             pred=dict(hidden=512, head=dict(hidden_bn=True, hidden_bn_affine=False, last_bias=True),
                                       linear_bias=False)),  # README: a linear predictor has no bias
    # facebookresearch/barlowtwins main.py (8192-8192-8192 without biases, LARS eta 0.001, lr 0.2,
    # wd 1e-6, lambda 0.0051, 10 warm-up epochs)
    "barlow_twins/original": dict(widths=(8192, 8192, 3), optim=("lars", 0.2, 1e-6, 10), eta=0.001,
                                  head=dict(hidden_bn=True, hidden_bias=False, last_bias=False),
                                  options=dict(lambd=0.0051)),
    # facebookresearch/vicreg main_vicreg.py (8192 x 3, no bias in the last layer, LARS eta 0.001,
    # base lr 0.2, wd 1e-6, 25/25/1, 10 warm-up epochs)
    "vicreg/original": dict(widths=(8192, 8192, 3), optim=("lars", 0.2, 1e-6, 10), eta=0.001,
                            head=dict(hidden_bn=True, last_bias=False),
                            options=dict(sim_weight=25.0, var_weight=25.0, cov_weight=1.0)),
    # fundamentalvision/UniGrad configs/unigrad.py, project/model.py, project/pretrainer.py
    "unigrad/original": dict(**_UNIGRAD_STEP, options=dict(lam=100.0, rho=0.99)),
    # the gradient forms in UniGrad's frame: configs/simclr_grad_mm.py (moco_t 0.2),
    # configs/byol_directpred_grad.py (rho 0.99, eps 0.3), configs/barlow_twins_grad_mm.py (lambd 50)
    "simclr/gradient": dict(**_UNIGRAD_STEP, options=dict(temperature=0.2)),
    "moco/gradient": dict(**_UNIGRAD_STEP),
    "byol/gradient": dict(**_UNIGRAD_STEP, options=dict(rho=0.99, eps=0.3)),
    "simsiam/gradient": dict(**_UNIGRAD_STEP, options=dict(rho=0.99, eps=0.3)),
    "barlow_twins/gradient": dict(**_UNIGRAD_STEP, options=dict(lam=50.0)),
    "vicreg/gradient": dict(**_UNIGRAD_STEP, options=dict(lam=50.0)),
    "unigrad/gradient": dict(**_UNIGRAD_STEP, options=dict(lam=100.0, rho=0.99)),
}

# the arXiv 2312.10725 grids: AdamW lr 1e-3 (not scaled), wd 1e-6; Barlow Twins / VICReg heads as
# their official code (widths are the grids' variable)
_SMALL_PROJ = {"barlow_twins": dict(head=REFERENCE["barlow_twins/original"]["head"]),
               "vicreg": dict(head=REFERENCE["vicreg/original"]["head"])}

# settings a grid sweeps on purpose
_SWEPT = {"unigrad_lambda": {"lam"}, "directpred": {"eps", "rho", "pred_layers"}}


def _paper_runs():
    for name, exp in EXPERIMENTS.items():
        if name == "digits_methods":  # the embedded digits at the CPU demo defaults, no paper settings
            continue
        for size in exp.sizes:
            if size.startswith("paper"):
                for label, settings in exp.runs_for(size):
                    yield name, size, label, settings


def _reference(exp: str, method: str, form: str) -> dict | None:
    if exp in ("small_projectors", "many_views"):
        return None
    if exp == "directpred" and method == "byol":
        return REFERENCE["byol/luckmatters"]
    return REFERENCE[f"{method}/{form}"]


def _check_head(spec, options, prefix, expected, where):
    head = head_spec(spec, options, prefix)
    for flag, value in expected.items():
        assert getattr(head, flag) == value, f"{where}: {prefix} {flag}={getattr(head, flag)}, reference {value}"


PAPER_RUNS = list(_paper_runs())


def test_every_paper_grid_is_covered():
    grids = {name for name, *_ in PAPER_RUNS}
    assert {"unigrad_table1", "unigrad_table2", "methods", "directpred", "unigrad_lambda"} <= grids
    assert len(PAPER_RUNS) > 60


@pytest.mark.parametrize("exp,size,label,settings", PAPER_RUNS, ids=[f"{e}-{s}-{l}" for e, s, l, _ in PAPER_RUNS])
def test_paper_size_run_uses_the_reference_settings(exp, size, label, settings):
    cfg = build_config([*EXPERIMENTS[exp].sizes[size], *settings])
    opts = dict(cfg.method)
    method = opts.pop("name")
    o = resolve_options(method, **opts)
    spec = REGISTRY[method]
    where = f"{exp}/{size}/{label}"
    ref = _reference(exp, method, o["form"])
    if ref is None:  # arXiv 2312.10725 presets
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.lr_scaling, cfg.optim.weight_decay) == \
            ("adamw", 1e-3, "none", 1e-6), where
        _check_head(spec.projector, o, "proj", _SMALL_PROJ[method]["head"], where)
        return
    swept = _SWEPT.get(exp, set())
    hidden, out, layers = ref["widths"]
    assert (o["proj_hidden_dim"], o["proj_output_dim"], o["proj_layers"]) == (hidden, out, layers), where
    _check_head(spec.projector, o, "proj", ref["head"], where)
    if "pred" in ref and o["pred_layers"] == 2:  # the MLP predictor (the directpred grid also trains a linear one)
        assert o["pred_hidden_dim"] == ref["pred"]["hidden"], where
        _check_head(spec.predictor, o, "pred", ref["pred"]["head"], where)
    elif "pred" in ref and o["pred_layers"] == 1:
        _check_head(spec.predictor, o, "pred", {"last_bias": ref["pred"]["linear_bias"]}, where)
    name, lr, wd, warmup = ref["optim"]
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_epochs) == (name, lr, wd, warmup), \
        f"{where}: optimizer {cfg.optim.name} lr {cfg.optim.lr} wd {cfg.optim.weight_decay} warmup " \
        f"{cfg.optim.warmup_epochs}, reference {ref['optim']}"
    assert cfg.optim.lr_scaling == "linear" and cfg.optim.momentum == 0.9, where
    if name == "lars":
        assert cfg.optim.lars_eta == ref["eta"], where
    assert (cfg.optim.min_lr_ratio == 1.0) == ref.get("constant_lr", False), where
    if "momentum" in ref:
        assert (o["momentum"], o["momentum_schedule"]) == ref["momentum"], where
    for key, value in ref.get("options", {}).items():
        if key not in swept:
            assert o[key] == value, f"{where}: {key}={o[key]}, reference {value}"
    if "view_bn" not in ref.get("options", {}):
        assert o["view_bn"] == "per_view", where  # the other references forward the views separately


@pytest.mark.parametrize("preset,ref", [("cifar10_resnet18", "unigrad/original"),
                                        ("stl10_resnet18", "directpred/original")])
def test_presets_are_the_references(preset, ref):
    cfg = build_config([f"preset={preset}"])
    opts = dict(cfg.method)
    method = opts.pop("name")
    o = resolve_options(method, **opts)
    r = REFERENCE[ref]
    assert (o["proj_hidden_dim"], o["proj_output_dim"], o["proj_layers"]) == r["widths"]
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_epochs) == r["optim"]
    assert (o["momentum"], o["momentum_schedule"]) == r["momentum"]
    for key, value in r.get("options", {}).items():
        assert o[key] == value, key
