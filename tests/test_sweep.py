"""tools/sweep: grid x zipped expansion with distinct workdirs, errors before anything runs, two real smoke runs one
after another with a summary of their final metrics (and no rerun of finished ones), and the per-slice launch."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from mobilebert_jax.errors import ConfigError
from mobilebert_jax.tools import sweep
from limits import HANG_S

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_sweep(tmp_path, body: str, name: str = "s.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_axes_are_crossed_and_settings_within_an_axis_zipped():
    runs = sweep.expand_axes([{"optimizer.lr": [1e-3, 2e-3, 3e-3]},
                              {"model.intermediate_size": [64, 128], "model.num_feedforward_networks": [4, 2]}])
    assert runs == [{"optimizer.lr": lr, "model.intermediate_size": i, "model.num_feedforward_networks": n}
                    for lr in (1e-3, 2e-3, 3e-3) for i, n in ((64, 4), (128, 2))]


@pytest.mark.parametrize("axes,message", [
    ([{"a": [1, 2], "b": [1]}], r"zipped settings need lists of one length, got \{'a': 2, 'b': 1\}"),
    ([{"a": [1]}, {"a": [2]}], r"setting\(s\) \['a'\] appear on more than one axis"),
    ([{"a": 1}], r"axes\[0\]\['a'\]: must be a non-empty list"),
    ({"a": [1]}, "must be a list of axes"),
])
def test_bad_axes_are_named(axes, message):
    with pytest.raises(ConfigError, match=message):
        sweep.expand_axes(axes)


def test_runs_get_distinct_workdirs_and_bad_fields_fail_before_running(tmp_path):
    path = write_sweep(tmp_path, """
        def get_sweep():
            return dict(config="experiments/teacher_ib_bert_large.py:smoke", fixed={"total_steps": 10},
                        axes=[{"optimizer.lr": [1e-3, 2e-3]}, {"seed": [0, 1]}])
    """)
    s = sweep.build(path, str(tmp_path / "root"))
    assert [r.name for r in s.runs] == ["000_lr=0.001,seed=0", "001_lr=0.001,seed=1", "002_lr=0.002,seed=0",
                                        "003_lr=0.002,seed=1"]
    assert len({r.workdir for r in s.runs}) == 4 and all(r.total_steps == 10 for r in s.runs)
    assert s.runs[3].workdir == str(tmp_path / "root" / "s" / "003_lr=0.002,seed=1")

    bad = write_sweep(tmp_path, """
        def get_sweep():
            return dict(config="experiments/teacher_ib_bert_large.py:smoke", axes=[{"optimizer.lrate": [1e-3]}])
    """, "bad.py")
    with pytest.raises(ConfigError, match=r"run 0 .*config.optimizer has no field 'lrate'"):
        sweep.build(bad, str(tmp_path))
    unknown = write_sweep(tmp_path, "def get_sweep():\n    return dict(config='x.py', axes=[], grid=[])\n", "u.py")
    with pytest.raises(ConfigError, match=r"u.py: get_sweep\(\) has unknown field\(s\) \['grid'\]"):
        sweep.build(unknown, str(tmp_path))


def test_example_sweeps_expand():
    glue = sweep.build(os.path.join(REPO, "experiments", "sweeps", "glue_mrpc.py"), "/tmp/unused")
    assert len(glue.runs) == 3 * 5 * 4
    first = glue.runs[0]  # batch 16, lr 1e-5, 2 epochs of MRPC's 3,668 examples
    assert first.overrides["total_steps"] == first.overrides["optimizer.schedule.total_steps"] == 459
    arch = sweep.build(os.path.join(REPO, "experiments", "sweeps", "mha_ffn_ratio.py"), "/tmp/unused")
    mobilebert = next(r for r in arch.runs if r.settings["ffns"] == 4 and r.settings["intermediate"] == 512)
    assert mobilebert.overrides["model.num_feedforward_networks"] == 4


def test_smoke_sweep_runs_here_and_summarizes(tmp_path):
    path = write_sweep(tmp_path, f"""
        def get_sweep():
            return dict(
                config="experiments/teacher_ib_bert_large.py:smoke",
                fixed={{"total_steps": 3, "optimizer.schedule.total_steps": 3, "optimizer.schedule.warmup_steps": 1,
                       "batch_size": 8,
                        "model.num_hidden_layers": 1, "data.max_seq_length": 32, "eval.num_batches": 0,
                        "log_every": 1, "data.prepared_dir": "{tmp_path / 'data'}"}},
                axes=[{{"optimizer.lr": [1e-3, 3e-3]}}],
                metrics=["loss", "mlm_accuracy"])
    """, "tiny.py")
    root = tmp_path / "root"
    command = [sys.executable, "-m", "mobilebert_jax.tools.sweep", path, "run", f"--root={root}"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (root / "tiny" / "summary.md").read_text().splitlines()
    assert lines[0] == "| run | optimizer.lr | status | loss | mlm_accuracy |"
    assert [line.split(" | ")[:3] for line in lines[2:]] == [["| 000_lr=0.001", "0.001", "done"],
                                                            ["| 001_lr=0.003", "0.003", "done"]]
    rows = json.loads((root / "tiny" / "summary.json").read_text())
    for row in rows:  # the final metrics are each run's own last logged values
        with open(root / "tiny" / row["run"] / "metrics.jsonl") as f:
            last = [json.loads(line) for line in f][-1]
        assert last["step"] == 3 and row["metrics"]["loss"] == last["loss"]
    assert rows[0]["metrics"]["loss"] != rows[1]["metrics"]["loss"]

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=HANG_S)
    assert again.returncode == 0 and again.stdout.count("finished before, skipped") == 2


def test_launch_starts_one_slice_per_run(tmp_path):
    path = write_sweep(tmp_path, """
        def get_sweep():
            return dict(config="experiments/teacher_ib_bert_large.py:smoke", axes=[{"seed": [0, 1]}])
    """)
    out = subprocess.run([sys.executable, "-m", "mobilebert_jax.tools.sweep", path, "launch", "--root=gs://b/sw",
                          "--slice_prefix=mb", "--tpu_run_args=--zone=us-central1-a --accelerator=v3-8", "--dry_run"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert [shlex.split(line) for line in out.splitlines()] == [
        [os.path.join(REPO, "launch", "tpu_run.sh"), f"--name=mb-{i}", "--zone=us-central1-a", "--accelerator=v3-8",
         "start", "--", "--config=experiments/teacher_ib_bert_large.py:smoke", f"--workdir=gs://b/sw/s/00{i}_seed={i}",
         f"--config.seed={i}"] for i in (0, 1)]


def test_seed_table_reports_mean_and_spread():
    from mobilebert_jax.tools.sweep import seed_table

    rows = [{"run": f"r{i}", "lr": lr, "seed": seed, "status": "done", "metrics": {"eval/accuracy": acc}}
            for i, (lr, seed, acc) in enumerate([(1e-5, 0, 0.60), (1e-5, 1, 0.64), (1e-5, 2, 0.62),
                                                 (2e-5, 0, 0.70), (2e-5, 1, 0.70)])]
    rows.append({"run": "r5", "lr": 2e-5, "seed": 2, "status": "step 3/10", "metrics": {"eval/accuracy": 0.1}})
    lines = seed_table(rows, ["lr"], ["eval/accuracy"]).splitlines()
    assert lines[0] == "| lr | seeds | eval/accuracy |"
    assert lines[2] == "| 1e-05 | 3 | 0.62 ± 0.02 |"  # sample std of 0.60, 0.64, 0.62
    assert lines[3] == "| 2e-05 | 2 | 0.7 ± 0 |"  # the unfinished third seed is left out
