"""Runs on gs:// paths against a Cloud Storage emulator on 127.0.0.1 (tests/gcs_emulator.py).

Each command runs as a pod user would start it, in a subprocess whose working
directory is an empty temporary directory; afterwards that directory must still
be empty and no `gs:` directory may exist anywhere we can see: a gs:// path
never becomes a local one. Files ArrayRecord needs locally go to the per-host
scratch directory (MOBILEBERT_JAX_SCRATCH), which the tests point elsewhere.

CI runs `test_teacher_run_on_gcs` (data preparation + a smoke teacher run with
checkpoints). The rest is marked slow; run everything with
    python -m pytest -q tests/test_gcs.py -m "slow or not slow"
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mobilebert_jax import storage
from gcs_emulator import gcs  # noqa: F401  (the fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(ROOT, "experiments", "teacher_ib_bert_large.py") + ":smoke"
DATA = ["--max_seq_length=32", "--num_shards=4"]
TINY = ["--config.optimizer.schedule.warmup_steps=2", "--config.log_every=2",
        "--config.eval.every_steps=3", "--config.eval.num_batches=1", "--config.eval.batch_size=8",
        "--config.batch_size=8", "--config.data.max_seq_length=32", "--config.model.num_hidden_layers=1",
        "--config.checkpoint.every_steps=3"]


def _steps(n: int) -> list[str]:
    return [f"--config.total_steps={n}", f"--config.optimizer.schedule.total_steps={n}"]


@pytest.fixture
def sandbox(tmp_path):
    """(cwd, env): an empty working directory and a scratch directory outside it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["MOBILEBERT_JAX_SCRATCH"] = str(tmp_path / "scratch")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    yield cwd, env
    assert not os.listdir(cwd), f"written to the working directory: {os.listdir(cwd)}"
    for where in (tmp_path, ROOT):
        leaked = [os.path.join(r, d) for r, dirs, _ in os.walk(where) for d in dirs if d == "gs:"]
        assert not leaked, f"a gs:// path became a local directory: {leaked}"


def _run(module: str, *args: str, sandbox) -> subprocess.CompletedProcess:
    cwd, env = sandbox
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, "\n".join(l for l in (r.stdout[-2000:] + r.stderr[-20000:]).splitlines() if "Traceback" in l or "Error" in l or l.startswith("  File") or l.startswith("FATAL"))
    return r.stdout


def _prepare(gcs, sandbox) -> str:
    data = gcs.uri("data32")
    _ok(_run("mobilebert_jax.data.prepare", f"--output_dir={data}", *DATA, sandbox=sandbox))
    return data


def test_teacher_run_on_gcs(gcs, sandbox):
    data = _prepare(gcs, sandbox)
    objects = gcs.list("data32")
    assert "data32/manifest.json" in objects and "data32/train-00000-of-00004.array_record" in objects
    workdir = gcs.uri("teacher")
    out = _ok(_run("mobilebert_jax.main", f"--config={TEACHER}", f"--workdir={workdir}", *TINY, *_steps(6),
                   f"--config.data.prepared_dir={data}", sandbox=sandbox))
    assert "step 6/6 | loss" in out and f"checkpoints in {workdir}/checkpoints" in out
    objects = gcs.list("teacher")
    assert {"teacher/config.json", "teacher/config.py", "teacher/metrics.jsonl"} <= set(objects)
    assert any(o.startswith("teacher/checkpoints/6/") for o in objects)
    assert any(o.startswith("teacher/tensorboard/events.out.tfevents") for o in objects)
    metrics = [json.loads(line) for line in storage.path(workdir, "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "mlm_loss" in m and "learning_rate" in m][-1] == 6
    # Again: the run is complete and resumes from its last gs:// checkpoint.
    out = _ok(_run("mobilebert_jax.main", f"--config={TEACHER}", f"--workdir={workdir}", *TINY, *_steps(6),
                   f"--config.data.prepared_dir={data}", sandbox=sandbox))
    assert "resumed from step 6" in out
