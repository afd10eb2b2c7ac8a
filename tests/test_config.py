"""The config loader: layering, types, ranges, one-line errors; fuzzed with hypothesis."""

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from siamgrad.config import (Config, available_presets, build_config, dump_yaml, from_dict,
                             parse_overrides, to_dict)
from siamgrad.errors import ConfigError


def test_defaults_are_the_cpu_demo():
    cfg = build_config([])
    assert cfg.method["name"] == "unigrad" and cfg.data.name == "digits"
    assert cfg.augment.n_views == 2 and cfg.eval.knn_k == 200 and cfg.eval.knn_t == 0.1


def test_overrides_types_and_shorthands():
    cfg = build_config(["method=byol", "data=cifar10", "data.root=/x", "optim.lr=0.3", "epochs=7",
                        "augment.scale=[0.08, 1.0]", "optim.clip_grad=null", "method.momentum=0.99"])
    assert cfg.method["name"] == "byol" and cfg.method["momentum"] == 0.99
    assert cfg.data.name == "cifar10" and cfg.data.root == "/x"
    assert cfg.optim.lr == 0.3 and isinstance(cfg.epochs, int) and cfg.epochs == 7
    assert cfg.augment.scale == [0.08, 1.0] and cfg.optim.clip_grad is None


def test_method_change_keeps_projector_width_only():
    cfg = build_config(["method.lam=5", "method.proj_hidden_dim=64", "method=simclr"])
    assert cfg.method == {"name": "simclr", "proj_hidden_dim": 64, "proj_output_dim": 128}  # lam, momentum dropped


@pytest.mark.parametrize("arg,needle", [
    ("epochz=3", "unknown config key 'epochz'"),
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("epochs=abc", "epochs: expected an integer"),
    ("epochs=0", "epochs: 0 is out of range"),
    ("optim.lr=-1", "optim.lr: -1"),
    ("optim.name=rmsprop", "optim.name: 'rmsprop' is not valid; choose one of: sgd, lars, adamw"),
    ("data.fraction=1.5", "data.fraction: 1.5 is out of range"),
    ("progress=maybe", "progress: expected true or false"),
    ("epochs", "key=value"),
    ("optim=3", "optim: expected a mapping"),
    ("preset=nope", "unknown preset 'nope'"),
    ("config=/does/not/exist.yaml", "not found"),
    ("epochs=.nan", "epochs: expected an integer"),
    ("optim.lr=.inf", "optim.lr: expected a finite number"),
])
def test_bad_values_are_one_line_errors(arg, needle):
    with pytest.raises(ConfigError) as e:
        build_config([arg])
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_yaml_file_layering(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\noptim:\n  lr: 0.2\nmethod:\n  name: simclr\n  temperature: 0.5\n")
    cfg = build_config([f"config={f}", "optim.lr=0.4"])
    assert cfg.epochs == 3 and cfg.optim.lr == 0.4
    assert cfg.method["name"] == "simclr" and cfg.method["temperature"] == 0.5


def test_malformed_yaml_names_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("epochs: 3\noptim: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config([f"config={f}"])
    g = tmp_path / "list.yaml"
    g.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        build_config([f"config={g}"])


def test_round_trip_through_yaml():
    cfg = build_config(["method=vicreg", "optim.name=lars", "augment.n_views=4"])
    again = from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert to_dict(again) == to_dict(cfg)


def test_every_preset_loads():
    names = available_presets()
    assert "cifar10_cpu" in names
    for name in names:
        build_config([f"preset={name}"])


def test_parse_overrides_values():
    assert parse_overrides(["a.b=1", "c=[1,2]", "d=true", "e=text", "f="]) == [
        ("a.b", 1), ("c", [1, 2]), ("d", True), ("e", "text"), ("f", None)]


_keys = st.sampled_from(["epochs", "batch_size", "optim.lr", "optim.name", "data.name", "augment.n_views",
                         "eval.knn_k", "progress", "seed", "data.fraction", "optim.betas", "nonsense",
                         "optim.nope", "method", "method.lam", "eval", "data.root", "augment.scale"])
_values = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(max_size=12), st.none(), st.lists(st.floats(-2, 2), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_keys, _values), max_size=5))
def test_fuzz_loader_never_crashes_uncleanly(pairs):
    """Any key/value either builds a valid Config or raises a one-line ConfigError."""
    base = {}
    for k, v in pairs:
        base[k] = v
    try:
        cfg = build_config([], base=base)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert isinstance(cfg, Config)
    assert cfg.epochs >= 1 and cfg.batch_size >= 2 and 0 < cfg.data.fraction <= 1
    assert cfg.optim.name in ("sgd", "lars", "adamw")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_command_line_text(text):
    try:
        build_config([text])
    except ConfigError as e:
        assert "\n" not in str(e)


def test_every_command_checks_method_options_the_same_way(capsys, tmp_path):
    """`siamgrad config` validates method options as `siamgrad train` does: exit 2, one line."""
    from siamgrad.cli import main

    for argv in (["config", "method=byol", "method.no_such_option=1"],
                 ["train", "method=byol", "method.no_such_option=1", f"out_dir={tmp_path}"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "unknown option method.no_such_option for byol" in err
    assert not any(tmp_path.iterdir())  # train stopped before it wrote anything
