"""One run per workdir: the lock (taken, refused, stale, taken over) and the config a workdir may resume with."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import ml_collections
import pytest

from mobilebert_jax import ConfigError
from mobilebert_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(path):
    with open(os.path.join(path, workdir_lib.LOCK_KEY)) as f:
        return json.load(f)


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with workdir_lib.WorkdirLock(str(tmp_path)) as lock:
        holder = _record(tmp_path)
        assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
        with pytest.raises(workdir_lib.WorkdirInUseError,
                           match=f"in use by host {socket.gethostname()} pid {os.getpid()} .*last heartbeat"):
            workdir_lib.WorkdirLock(str(tmp_path)).acquire()
        lock.check()
    assert not os.path.exists(tmp_path / workdir_lib.LOCK_KEY)  # released
    with workdir_lib.WorkdirLock(str(tmp_path)):  # free again
        pass


def _write_lock(path, **fields):
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "heartbeat": time.time(),
              "command": "an earlier run"} | fields
    with open(os.path.join(path, "LOCK.new"), "w") as f:
        json.dump(record, f)
    os.replace(os.path.join(path, "LOCK.new"), os.path.join(path, workdir_lib.LOCK_KEY))  # never seen half-written


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, capfd):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _write_lock(tmp_path, pid=int(dead.stdout))
    with workdir_lib.WorkdirLock(str(tmp_path)):
        assert _record(tmp_path)["pid"] == os.getpid()
    assert f"its process {int(dead.stdout)} on this host no longer exists" in capfd.readouterr().err


def test_a_lock_without_heartbeat_expires(tmp_path, capfd):
    _write_lock(tmp_path, host="another-host", pid=1, heartbeat=time.time() - 700)
    with workdir_lib.WorkdirLock(str(tmp_path), stale_after_seconds=600):
        assert _record(tmp_path)["pid"] == os.getpid()
    assert "taking over the lock" in capfd.readouterr().err
    _write_lock(tmp_path, host="another-host", pid=1, heartbeat=time.time() - 100)  # fresh: still held
    with pytest.raises(workdir_lib.WorkdirInUseError, match="in use by host another-host pid 1"):
        workdir_lib.WorkdirLock(str(tmp_path), stale_after_seconds=600).acquire()


def test_heartbeat_keeps_the_lock_fresh_and_notices_a_takeover(tmp_path):
    with workdir_lib.WorkdirLock(str(tmp_path), heartbeat_seconds=0.05) as lock:
        first = _record(tmp_path)["heartbeat"]
        for _ in range(600):  # up to a minute: bounded by progress, not by a tight time limit
            if _record(tmp_path)["heartbeat"] > first:
                break
            time.sleep(0.1)
        assert _record(tmp_path)["heartbeat"] > first
        _write_lock(tmp_path, host="another-host", pid=1)  # another run took it over (as if ours had gone stale)
        with pytest.raises(workdir_lib.WorkdirInUseError, match="taken over by host another-host pid 1"):
            for _ in range(600):
                lock.check()
                time.sleep(0.1)
    assert _record(tmp_path)["host"] == "another-host"  # the other run's lock is left alone


def _config(**fields):
    c = ml_collections.ConfigDict(dict(seed=0, total_steps=10, optimizer=dict(lr=1e-3), mesh=dict(shape=(8, 1, 1)),
                                       checkpoint=dict(every_steps=5), fn=_config))
    c.update_from_flattened_dict(fields)
    return c


def test_resuming_with_another_config_is_refused_naming_the_fields(tmp_path):
    workdir_lib.check_config_unchanged(_config(), str(tmp_path))  # nothing recorded yet
    (tmp_path / "config.json").write_text(_config().to_json_best_effort(indent=2, sort_keys=True))
    workdir_lib.check_config_unchanged(_config(), str(tmp_path))
    workdir_lib.check_config_unchanged(  # fields that may change on resume
        _config(total_steps=20, **{"mesh.shape": (2, 2, 2), "checkpoint.every_steps": 1}), str(tmp_path))
    with pytest.raises(ConfigError, match=r"config.optimizer.lr: 0.001 recorded, now 0.002; config.seed: 0 "
                                          r"recorded, now 1\. Use a new --workdir"):
        workdir_lib.check_config_unchanged(_config(seed=1, **{"optimizer.lr": 2e-3}), str(tmp_path))
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        workdir_lib.check_config_unchanged(_config(), str(tmp_path))


def test_a_model_field_added_since_the_run_started_is_no_change_at_its_default(tmp_path):
    """A workdir recorded before `scan_layers` existed resumes when the field is at its default, not otherwise."""
    recorded = dict(seed=0, model=dict(hidden_size=8), teacher_model=dict(hidden_size=8))
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    now = ml_collections.ConfigDict(recorded)
    now.model.scan_layers = False
    now.teacher_model.explicit_weight_gradients = False
    workdir_lib.check_config_unchanged(now, str(tmp_path))
    now.model.scan_layers = True
    with pytest.raises(ConfigError, match=r"config.model.scan_layers: False recorded, now True"):
        workdir_lib.check_config_unchanged(now, str(tmp_path))
    now.model.scan_layers = False
    now.new_section_field = 1  # outside the model sections an added field is still a change
    with pytest.raises(ConfigError, match=r"config.new_section_field: '<absent>' recorded, now 1"):
        workdir_lib.check_config_unchanged(now, str(tmp_path))


def _other_value(value):
    """A value other than `value`, of a kind config.json holds."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, (list, tuple)):
        return [0]
    if isinstance(value, dict):
        return {"x": {"pattern": "x"}}
    return 7  # None


def _optional_fields(schema, path=()):
    """(path under the section, default) of every optional field of `schema` and its nested sections."""
    for field, default in schema.optional.items():
        yield path + (field,), default
    for name, nested in schema.sections.items():
        yield from _optional_fields(nested, path + (name,))


@pytest.mark.parametrize("spec, stage", [
    ("teacher_ib_bert_large.py:smoke", "mobilebert_jax.pretraining.stage:PRETRAINING"),
    ("distill_progressive.py:smoke", "mobilebert_jax.distill.stage:DISTILLATION"),
    ("finetune_glue.py:task=mrpc,smoke", "mobilebert_jax.finetune.stage:GLUE"),
    ("finetune_squad.py:version=1.1,smoke", "mobilebert_jax.finetune.stage:SQUAD"),
])
def test_a_section_field_added_since_the_run_started_is_no_change_at_its_default(tmp_path, spec, stage):
    """Every optional field of every section a stage reads (the trainer's and the stage's own): a run recorded
    without it resumes when the field is at its schema's default, and is refused at another value unless the
    section may change on resume."""
    from mobilebert_jax import experiment_config
    from mobilebert_jax.train import trainer

    module, attribute = stage.split(":")
    stage = getattr(__import__(module, fromlist=[attribute]), attribute)
    sections = {**trainer.SECTIONS, **stage.sections}
    assert set(sections) >= {"optimizer", "checkpoint", "mesh", "data"}
    config = json.loads(experiment_config.load_experiment(os.path.join(REPO, "experiments", spec))
                        .to_json_best_effort())
    assert set(sections) <= set(config), "a stage names a section its experiment does not have"
    checked = 0
    for name, schema in sections.items():
        schema.read(config[name], f"config.{name}")  # the experiment's section is what the schema describes
        for path, default in _optional_fields(schema):
            recorded, now = json.loads(json.dumps(config)), json.loads(json.dumps(config))
            parent, leaf = recorded[name], path[-1]
            for key in path[:-1]:
                parent = parent[key]
            parent.pop(leaf, None)
            (tmp_path / "config.json").write_text(json.dumps(recorded))
            parent = now[name]
            for key in path[:-1]:
                parent = parent[key]
            parent[leaf] = default
            workdir_lib.check_config_unchanged(ml_collections.ConfigDict(now), str(tmp_path), sections)
            parent[leaf] = _other_value(default)
            field = ".".join((name,) + path)
            if any(field == f or field.startswith(f + ".") for f in workdir_lib.RESUMABLE_FIELDS):
                workdir_lib.check_config_unchanged(ml_collections.ConfigDict(now), str(tmp_path), sections)
            else:
                with pytest.raises(ConfigError, match=rf"config\.{re.escape(field)}[.:]"):
                    workdir_lib.check_config_unchanged(ml_collections.ConfigDict(now), str(tmp_path), sections)
            checked += 1
    assert checked >= len(trainer.SECTIONS)


def test_a_distillation_run_recorded_with_stage_steps_resumes(tmp_path):
    """Progressive transfer's phases recorded as distill.stage_steps / last_stage and the layer multipliers'
    stage_steps: read under their current names, the same config resumes, and a changed one is still refused."""
    from mobilebert_jax import experiment_config, stages
    from mobilebert_jax.train import trainer

    config = experiment_config.load_experiment("experiments/distill_progressive.py:smoke")
    recorded = json.loads(config.to_json_best_effort())
    recorded["distill"]["stage_steps"] = recorded["distill"].pop("phase_steps")
    recorded["distill"]["last_stage"] = recorded["distill"].pop("last_phase")
    multipliers = [g["multiplier"] for g in recorded["optimizer"]["groups"].values()
                   if isinstance(g.get("multiplier"), dict) and "phase_steps" in g["multiplier"]]
    assert len(multipliers) == config.model.num_hidden_layers + 1  # each layer's and the embedding norm's
    for m in multipliers:
        m["stage_steps"] = m.pop("phase_steps")
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    sections = {**trainer.SECTIONS, **stages.lookup(config.stage).sections}
    workdir_lib.check_config_unchanged(config, str(tmp_path), sections)  # no change
    upgraded = experiment_config.read_recorded(str(tmp_path))
    assert (upgraded.distill.phase_steps, upgraded.distill.last_phase) == (config.distill.phase_steps,
                                                                          config.distill.last_phase)
    assert "stage_steps" not in upgraded.distill and "last_stage" not in upgraded.distill
    assert upgraded.optimizer.groups.layer_0.multiplier.phase_steps == config.distill.phase_steps
    config.distill.phase_steps += 1
    with pytest.raises(ConfigError, match=r"config\.distill\.phase_steps: \d+ recorded"):
        workdir_lib.check_config_unchanged(config, str(tmp_path), sections)


def test_a_run_recorded_under_renamed_fields_resumes(tmp_path):
    """Fine-tuning's data.vocab/scratch_vocab (now data.tokenizer/scratch_tokenizer) and the removed model_preset
    of a run recorded before the renames are read under their current names: the same config resumes."""
    from mobilebert_jax import experiment_config

    config = experiment_config.load_experiment("experiments/finetune_glue.py:task=rte,smoke")
    config.data.tokenizer = "/vocab/bert-uncased-vocab.txt"
    recorded = json.loads(config.to_json_best_effort())
    recorded["data"]["vocab"] = recorded["data"].pop("tokenizer")
    recorded["data"]["scratch_vocab"] = recorded["data"].pop("scratch_tokenizer")
    recorded["model_preset"] = "mobilebert_test"
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    workdir_lib.check_config_unchanged(config, str(tmp_path))  # no change
    upgraded = experiment_config.read_recorded(str(tmp_path))
    assert upgraded.data.tokenizer == "/vocab/bert-uncased-vocab.txt" and "vocab" not in upgraded.data
    assert "model_preset" not in upgraded
    config.data.tokenizer = "/another/vocab.txt"
    with pytest.raises(ConfigError, match=r"config.data.tokenizer: '/vocab/bert-uncased-vocab.txt' recorded"):
        workdir_lib.check_config_unchanged(config, str(tmp_path))
