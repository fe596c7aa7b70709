"""The pretraining stage through the command line, on the embedded corpus, and its input errors."""

from __future__ import annotations

import json
import os
import re
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

# An absl/Python log record as absl prints it: "I1130 13:46:10.553443 140077 checkpoint_manager.py:701] ...".
LOG_RECORD = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]", re.M)


def _main(*args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "mobilebert_jax.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=HANG_S)


def test_smoke_pretraining_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    r = _main(f"--config={CONFIG}", f"--workdir={workdir}", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "step 6/6 | loss" in out and "% padding) | ETA" in out and "eval at step 6: mlm_loss" in out
    assert f"checkpoints in {workdir}/checkpoints" in out
    metrics = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    # The scalars docs/training.md lists (the JSONL holds what TensorBoard gets); no MFU: CPUs have no known peak.
    assert {"mlm_loss", "nsp_accuracy", "learning_rate", "grad_norm", "examples_per_second", "tokens_per_second",
            "model_flops_per_second", "padding_fraction", "real_tokens_per_second",
            "useful_model_flops_per_second"} <= set().union(*metrics)
    assert not {"mfu", "useful_mfu", "real_tokens"} & set().union(*metrics)
    padding = [m["padding_fraction"] for m in metrics if "padding_fraction" in m]
    assert len(padding) == 3 and all(0 <= p < 1 for p in padding) and max(padding) > 0, padding
    assert sorted(os.listdir(workdir / "checkpoints"))[-1] == "6"
    assert (workdir / "config.py").exists() and (workdir / "data" / "manifest.json").exists()
    # Quiet by default: the project's own lines on the terminal, library INFO records (orbax's ~60 lines per
    # checkpoint) in log.txt.
    assert not LOG_RECORD.search(r.stdout + r.stderr), (r.stdout + r.stderr)[-3000:]
    assert "CheckpointManager" in (workdir / "log.txt").read_text()
    assert f"curves in {workdir}/curves.png" in out and (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    command = (workdir / "command.txt").read_text()
    assert f"python -m mobilebert_jax.main --config={CONFIG} --workdir={workdir}" in command and " git " in command
    assert "# Written by: python -m mobilebert_jax.main" in (workdir / "config.py").read_text()
    # The same command again (with -v 0: library records back on the terminal): nothing left to do.
    r = _main(f"--config={CONFIG}", f"--workdir={workdir}", *TINY, "-v", "0")
    assert r.returncode == 0 and "resumed from step 6" in r.stdout
    assert LOG_RECORD.search(r.stderr) and "CheckpointManager" in r.stderr
    assert len((workdir / "command.txt").read_text().splitlines()) == 4  # one entry (two lines) per start


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
