"""The pretraining stage through the command line, on the embedded corpus, and its input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from limits import HANG_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "teacher_ib_bert_large.py") + ":smoke"
TINY = ["--config.total_steps=6", "--config.optimizer.schedule.total_steps=6",
        "--config.optimizer.schedule.warmup_steps=2", "--config.log_every=2",
        "--config.eval.every_steps=3", "--config.eval.num_batches=1", "--config.eval.batch_size=8",
        "--config.batch_size=8", "--config.data.max_seq_length=32", "--config.model.num_hidden_layers=1",
        "--config.checkpoint.every_steps=3"]


def _main(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "mobilebert_jax.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=HANG_S)


def test_smoke_pretraining_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    r = _main(f"--config={CONFIG}", f"--workdir={workdir}", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "step 6/6 | loss" in out and "tokens/s" in out and "eval at step 6: mlm_loss" in out
    assert f"checkpoints in {workdir}/checkpoints" in out
    metrics = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert {"mlm_loss", "nsp_accuracy", "learning_rate", "grad_norm"} <= set().union(*metrics)
    assert sorted(os.listdir(workdir / "checkpoints"))[-1] == "6"
    assert (workdir / "config.py").exists() and (workdir / "data" / "manifest.json").exists()
    # The same command again: nothing left to do, the run is complete.
    r = _main(f"--config={CONFIG}", f"--workdir={workdir}", *TINY)
    assert r.returncode == 0 and "resumed from step 6" in r.stdout


@pytest.mark.parametrize("override,message", [
    ("--config.data.corpus=/nonexistent/corpus.txt", "/nonexistent/corpus.txt"),
    ("--config.model.vocab_size=100", "config.model.vocab_size=100"),
    ("--config.modle.vocab_size=100", "modle"),
])
def test_bad_input_is_named_before_training(tmp_path, override, message):
    r = _main(f"--config={CONFIG}", f"--workdir={tmp_path}", *TINY, override)
    assert r.returncode == 1
    assert "FATAL" in r.stderr and message in r.stderr
    assert not (tmp_path / "checkpoints").exists()
