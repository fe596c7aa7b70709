"""Loading experiment files with overrides, the pre-compile checks, and the resolved-config files."""

import json
import os
import re

import ml_collections
import pytest

from mobilebert_jax import ConfigError, experiment_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXAMPLE = f"""
import ml_collections
from mobilebert_jax.experiment_config import load_module

common = load_module({os.path.join(REPO, "experiments", "common.py")!r})


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.model = arg or "mobilebert_test"
    c.batch_size = 16
    c.mesh = dict(shape=(-1, 1, 1), rules=())
    c.optimizer = common.optimizer("lamb", lr=1.5e-3)
    c.optimizer.schedule.kind = "warmup_linear_decay"
    c.optimizer.schedule.warmup_steps = 10
    c.optimizer.schedule.total_steps = 100
    c.optimizer.groups = dict(layer_0=dict(pattern="layer_0/",
                                           multiplier=dict(kind="progressive", layer=0, phase_steps=50)))
    c.checkpoint = common.checkpoint(every_steps=1000, keep_last=3)
    c.data = dict(path=ml_collections.config_dict.placeholder(str))
    return c
"""


@pytest.fixture
def example(tmp_path):
    path = tmp_path / "example.py"
    path.write_text(EXAMPLE)
    return str(path)


def test_load_with_arg_and_overrides(example):
    c = experiment_config.load_experiment(f"{example}:mobilebert_tiny_test", [
        "--config.optimizer.lr=2e-3", "config.batch_size=32", "mesh.shape=(2, 2, 2)", "--config.data.path=/data/x",
        "--config.optimizer.schedule.kind=warmup_polynomial_decay"])
    assert c.model == "mobilebert_tiny_test"
    assert c.optimizer.lr == 2e-3 and isinstance(c.optimizer.lr, float)
    assert c.batch_size == 32 and c.mesh.shape == (2, 2, 2) and c.data.path == "/data/x"
    assert c.optimizer.schedule.kind == "warmup_polynomial_decay"
    assert c.optimizer.schedule.warmup_steps == 10  # untouched siblings stay
    with pytest.raises(AttributeError):  # locked: no new fields by accident
        c.new_field = 1


@pytest.mark.parametrize("override, message", [
    ("--config.optimizer.lrr=1e-3", "config.optimizer has no field 'lrr'"),
    ("--config.optimizer.lrr=1e-3", "did you mean config.optimizer.lr?"),
    ("--config.optimzer.lr=1e-3", "config has no field 'optimzer'"),
    ("--config.batch_size.x=1", "config.batch_size holds a int value, not a config section"),
    ("--config.batch_size=1.5", "flag --config.batch_size=1.5: invalid literal for int()"),
    ("--config.optimizer.lr=fast", "flag --config.optimizer.lr=fast: could not convert string to float"),
    ("--config.batch_size", "expected --config.FIELD.SUBFIELD=VALUE"),
    ("--config.mesh.shape[0]=2", "expected --config.FIELD.SUBFIELD=VALUE"),
])
def test_bad_overrides_name_the_field(example, override, message):
    with pytest.raises(ConfigError) as e:
        experiment_config.load_experiment(example, [override])
    assert message in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="experiment config file '.*nope.py' not found"):
        experiment_config.load_experiment(str(tmp_path / "nope.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    with pytest.raises(ConfigError, match="broken.py: could not load the config"):
        experiment_config.load_experiment(str(broken))
    not_a_dict = tmp_path / "not_a_dict.py"
    not_a_dict.write_text("def get_config():\n    return 3\n")
    with pytest.raises(ConfigError, match=r"get_config\(\) returned int, expected a ConfigDict"):
        experiment_config.load_experiment(str(not_a_dict))


def test_experiment_arguments_are_parsed_by_one_function():
    """experiments/common.py's parse_arg reads every file's `:arg`; a bad one is a ConfigError naming the file."""
    common = experiment_config.load_module(os.path.join(REPO, "experiments", "common.py"))
    args = common.parse_arg("task=rte,smoke", "x.py", task="", smoke=False, steps=10)
    assert args.to_dict() == {"task": "rte", "smoke": True, "steps": 10}
    assert common.parse_arg(None, "x.py", smoke=False).smoke is False
    assert common.parse_arg("steps=3,smoke=false", "x.py", smoke=True, steps=10).to_dict() == {"smoke": False,
                                                                                              "steps": 3}
    for arg, message in (("bogus", "x.py: unknown argument 'bogus' in 'bogus'; it takes smoke,steps=..."),
                         ("steps", "x.py: argument 'steps' needs a value"),
                         ("steps=many", "x.py: argument 'steps=many': not of type int"),
                         ("smoke=yes", "x.py: argument 'smoke=yes': smoke is true or false")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            common.parse_arg(arg, "x.py", smoke=False, steps=10)
    for spec, message in (("finetune_glue.py:task=rte,smok", "unknown argument 'smok'"),
                          ("finetune_glue.py:smoke", "needs task=NAME"),
                          ("finetune_squad.py:version=3.0", "needs version=1.1 or version=2.0"),
                          ("teacher_ib_bert_large.py:large", "unknown argument 'large'"),
                          ("distill_joint.py:smoke=maybe", "distill_joint.py: argument 'smoke=maybe'")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            experiment_config.load_experiment(os.path.join(REPO, "experiments", spec))
    with pytest.raises(ConfigError, match="experiment module '.*nowhere.py' not found"):
        experiment_config.load_module(os.path.join(REPO, "experiments", "nowhere.py"))


def test_validate_accepts_a_good_config(example):
    experiment_config.validate(experiment_config.load_experiment(example), device_count=8)
    experiment_config.validate(experiment_config.load_experiment(example, ["mesh.shape=(2, 4, 1)"]), device_count=8)


def test_validate_reports_every_problem(example):
    c = experiment_config.load_experiment(example, [
        "mesh.shape=(2, 2, 1)", "optimizer.schedule.total_steps=5", "checkpoint.keep_last=0"])
    with pytest.raises(ConfigError) as e:
        experiment_config.validate(c, device_count=8)
    msg = str(e.value)
    assert "config.mesh.shape=(2, 2, 1) covers 4 devices, but 8 are available" in msg
    assert "config.optimizer.schedule.total_steps=5 must exceed the warmup (10 steps)" in msg
    assert "config.checkpoint.keep_last=0: must be a positive integer" in msg

    c = experiment_config.load_experiment(example, ["mesh.shape=(2, 4, 1)", "batch_size=12", "data.path=x"])
    with pytest.raises(ConfigError, match=r"config.batch_size=12 is not divisible by data=2 \* fsdp=4 = 8"):
        experiment_config.validate(c, device_count=8)
    c = experiment_config.load_experiment(example, ["batch_size=16"])
    with pytest.raises(ConfigError, match="config.batch_size=16 is not divisible by the 3 processes"):
        experiment_config.validate(c, device_count=8, process_count=3)
    with pytest.raises(ConfigError, match="config.mesh is required"):
        experiment_config.validate(ml_collections.ConfigDict(dict(batch_size=8)), device_count=8)


def test_saved_config_reloads_identically(example, tmp_path):
    c = experiment_config.load_experiment(example, ["optimizer.lr=3e-4", "data.path=/d"])
    workdir = tmp_path / "workdir"
    experiment_config.save_resolved(c, str(workdir))
    again = experiment_config.load_experiment(str(workdir / "config.py"))
    assert again.to_dict() == c.to_dict()
    assert json.loads((workdir / "config.json").read_text())["optimizer"]["lr"] == 3e-4


def test_non_literal_values_are_flagged_in_config_py(tmp_path):
    c = ml_collections.ConfigDict(dict(f=len, nested=dict(ok=1)))
    experiment_config.save_resolved(c, str(tmp_path))
    text = (tmp_path / "config.py").read_text()
    assert "# not a literal, written as its repr: config.f" in text
    assert experiment_config.load_experiment(str(tmp_path / "config.py")).f == repr(len)


def test_argv_splitting(example):
    spec, overrides, rest = experiment_config.split_argv(
        ["prog", "--config", example, "--config.batch_size=8", "--workdir=/w", "-config.mesh.shape=(8,1,1)"])
    assert spec == example and rest == ["prog", "--workdir=/w"]
    assert overrides == ["--config.batch_size=8", "-config.mesh.shape=(8,1,1)"]
    config, argv = experiment_config.absl_flags_parser(["prog", f"--config={example}:x", "--config.batch_size=8"])
    assert (config.model, config.batch_size, argv) == ("x", 8, ["prog"])
    with pytest.raises(SystemExit):
        experiment_config.absl_flags_parser(["prog", "--config.batch_size=8"])
