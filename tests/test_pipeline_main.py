"""The README's first command: `python -m mobilebert_jax.main` without --config runs the whole small pipeline.

Here at a toy scale (2 layers, a few steps per stage) through the same command line and code path; the
default scale's measured table is in docs/distillation.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from limits import HANG_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ["--teacher_steps=4", "--phase_steps=2", "--pd_steps=2", "--layers=2", "--seq_len=32", "--max_predictions=5",
       "--batch_size=8", "--eval_batch_size=8"]
STAGES = ("teacher", "progressive", "pd", "scratch")


def _main(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "mobilebert_jax.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=HANG_S)


def test_default_main_runs_teacher_transfer_pd_and_scratch_then_the_table(tmp_path):
    r = _main(f"--workdir={tmp_path}", *TOY)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in ("teacher pretraining", "progressive knowledge transfer", "pretraining distillation",
                  "student from scratch"):
        assert f"=== {stage}:" in r.stdout
    assert "| MobileBERT distilled (progressive + PD) |" in r.stdout
    assert "beat" in r.stdout and "the scratch student on held-out MLM accuracy" in r.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["steps"] for row in results["rows"]] == [4, 4, 6, 6]
    assert results["scale"]["layers"] == 2 and results["scale"]["teacher_steps"] == 4
    for row in results["rows"]:
        assert 0.0 <= row["mlm_accuracy"] <= 1.0 and row["mlm_loss"] > 0
    for stage in STAGES:
        assert (tmp_path / stage / "metrics.jsonl").exists()
        assert (tmp_path / stage / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Quiet: orbax's records are in log.txt, not on the terminal.
    assert "CheckpointManager" not in r.stdout + r.stderr and "CheckpointManager" in (tmp_path / "log.txt").read_text()
    # The distilled and scratch students have the same architecture and step budget.
    assert results["rows"][2]["params"] == results["rows"][3]["params"] < results["rows"][0]["params"]

    # Again: every stage is complete, so each only resumes, and the table is the same.
    again = _main(f"--workdir={tmp_path}", *TOY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("resumed from step") == len(STAGES)
    rerun = json.loads((tmp_path / "results.json").read_text())
    assert rerun["rows"] == results["rows"]
    # The original timings stay the record; the rerun is listed after it, having trained nothing.
    assert rerun["timings"] == results["timings"] and rerun["runs"][0] == results["runs"][0]
    assert len(rerun["runs"]) == 2 and rerun["runs"][1]["trained"] == [] and len(rerun["runs"][1]["resumed"]) == 4
    assert "This run resumed every stage (already trained), trained nothing" in (tmp_path / "results.md").read_text()


def test_bad_pipeline_flags_are_named_before_anything_is_written(tmp_path):
    r = _main(f"--workdir={tmp_path / 'run'}", "--layers=0")
    assert r.returncode == 1 and "FATAL config error: --layers=0: must be positive" in r.stderr
    assert not (tmp_path / "run").exists()
    r = _main("--config=experiments/teacher_ib_bert_large.py:smoke", f"--workdir={tmp_path / 'run'}",
              "--teacher_steps=3")
    assert r.returncode == 1 and "--teacher_steps" in r.stderr and "--config.FIELD=VALUE" in r.stderr
    r = _main("--config=experiments/teacher_ib_bert_large.py:smoke")
    assert r.returncode == 1 and "--workdir is required with --config" in r.stderr
    assert not (tmp_path / "run").exists()
