"""The training loop: exact resume after SIGTERM and SIGKILL, sharded runs, and config errors before compile.

Runs launched as subprocesses (tests/synthetic_training.py) see one CPU device;
in-process runs see conftest's 8.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import synthetic_training
from mobilebert_jax import compile_cache, experiment_config
from mobilebert_jax import workdir as workdir_lib
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.train.stage import Stage
from mobilebert_jax.train.trainer import train
from limits import HANG_S

SCRIPT = os.path.join(os.path.dirname(__file__), "synthetic_training.py")
TOTAL = 8


def _run(workdir, steps=TOTAL, slow=None, wait=True, overrides=()):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if slow:
        env["SLOW_STEP_SECONDS"] = str(slow)
    proc = subprocess.Popen([sys.executable, SCRIPT, str(workdir), str(steps), *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if wait:
        out, _ = proc.communicate(timeout=HANG_S)
        assert proc.returncode == 0, out
        return out
    return proc


def _params(workdir):
    with np.load(os.path.join(workdir, "final_params.npz")) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def straight_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    _run(workdir)
    return workdir


@pytest.fixture(scope="module")
def straight(straight_workdir):
    return _params(straight_workdir)


# Logged values that measure the machine's speed or the clock, not what was computed.
_TIMING = re.compile(r"^time$|per_second$|mfu$")


def _computed_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if not _TIMING.search(k)} for line in f]


def test_two_identical_runs_give_bit_identical_metrics_and_parameters(tmp_path, straight_workdir, straight):
    """What repeats on one machine: the same config and data give every logged metric (train and eval, to the last
    bit: JSON writes floats exactly) and every final parameter bit for bit, in a fresh process. Across CPUs XLA:CPU
    may compile other kernels (docs/distillation.md, "What repeats")."""
    _run(tmp_path)
    again = _computed_metrics(tmp_path)
    assert again == _computed_metrics(straight_workdir)
    assert any(k.startswith("eval") for m in again for k in m)  # the held-out metrics are among them
    _assert_bitwise_equal(_params(tmp_path), straight)


def _wait_for_checkpoint(workdir, step, proc, timeout=HANG_S):
    path = os.path.join(workdir, "checkpoints", str(step))
    deadline = time.time() + timeout
    while not os.path.isdir(path):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline, f"no checkpoint {step} after {timeout}s"
        time.sleep(0.1)


def _assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("sig,status,says", [
    (signal.SIGTERM, 75, "preempted, resume with the same command"),
    (signal.SIGINT, 130, "interrupted: the run stopped before its last step; resume with the same command"),
])
def test_resume_after_a_signal_is_exact(tmp_path, straight, sig, status, says):
    """A preemption's SIGTERM and Ctrl-C both save the step and exit non-zero: the run has not reached its end."""
    proc = _run(tmp_path, slow=0.3, wait=False)
    _wait_for_checkpoint(tmp_path, 2, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=HANG_S)
    assert proc.returncode == status, out
    assert "preempted: saved a checkpoint at step" in out and says in out, out
    assert "Traceback" not in out, out
    assert not os.path.exists(tmp_path / "final_params.npz")
    assert not os.path.exists(tmp_path / "FINISHED")
    # The first start stored its train step in the workdir's compilation cache; the restart loads it.
    steps_cached = _cached(tmp_path, "jit_step-")
    assert len(steps_cached) == 1, os.listdir(tmp_path / compile_cache.DIRNAME)
    out = _run(tmp_path)  # the same command again
    assert "resumed from step" in out
    _assert_bitwise_equal(_params(tmp_path), straight)
    assert (tmp_path / "FINISHED").read_text() == f"{TOTAL}\n"
    loaded = re.search(r"(\d+) programs loaded from the compilation cache", out)
    assert loaded and int(loaded.group(1)) >= 1, out
    assert _cached(tmp_path, "jit_step-") == steps_cached  # nothing compiled again for the step


def _cached(workdir, prefix):
    """The workdir's compilation-cache entries of the programs whose file name starts with `prefix`."""
    return sorted(f for f in os.listdir(os.path.join(workdir, compile_cache.DIRNAME)) if f.startswith(prefix))


def test_resume_after_sigkill_is_exact(tmp_path, straight):
    proc = _run(tmp_path, slow=0.3, wait=False)
    _wait_for_checkpoint(tmp_path, 4, proc)
    proc.kill()
    proc.communicate(timeout=HANG_S)
    out = _run(tmp_path)
    assert "resumed from step 4" in out or "resumed from step 6" in out
    _assert_bitwise_equal(_params(tmp_path), straight)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_training_equals_single_device(tmp_path, straight, shape):
    import jax

    assert jax.device_count() == 8
    c = synthetic_training.config(total_steps=TOTAL)
    c.mesh.shape = shape
    train(c, str(tmp_path), synthetic_training.SYNTHETIC)
    sharded = synthetic_training.final_params(str(tmp_path), c)
    assert sharded is not None and sharded.keys() == straight.keys()
    for k in straight:
        np.testing.assert_allclose(sharded[k], straight[k], rtol=2e-4, atol=2e-5, err_msg=k)


def _never_built(*args):
    raise AssertionError("the stage was built: the config error should have been raised first")


_NEVER = Stage(spec=_never_built, read=_never_built)


@pytest.mark.parametrize("overrides,message", [
    ({"mesh.shape": (3, 1, 1)}, re.escape("config.mesh.shape=(3, 1, 1) covers 3 devices, but 8")),
    ({"batch_size": 6}, "batch"),
    ({"optimizer.schedule.kind": "cosine"}, "config.optimizer.schedule.kind"),
    ({"optimizer.lr": float("nan")}, re.escape("config.optimizer.lr=nan: must be a finite number")),
    ({"optimizer.lr": -1e-3}, re.escape("config.optimizer.lr=-0.001: must be positive")),
    ({"microbatches": 3}, re.escape("config.microbatches=3 does not divide config.batch_size=8")),
    ({"eval.batch_size": 6}, re.escape("config.eval.batch_size=6 is not divisible by data=8")),
])
def test_bad_config_fails_before_anything_compiles(tmp_path, overrides, message):
    c = synthetic_training.config()
    c.update_from_flattened_dict(overrides)
    with pytest.raises(ConfigError, match=message):
        train(c, str(tmp_path), _NEVER)
    assert not os.path.exists(tmp_path / "checkpoints")


def test_unknown_override_is_named(tmp_path):
    with pytest.raises(ConfigError, match="optimizer.lrr"):
        experiment_config.load_experiment(
            os.path.join(os.path.dirname(__file__), "..", "experiments", "teacher_ib_bert_large.py") + ":smoke",
            ["--config.optimizer.lrr=1e-3"])


def test_a_failing_evaluation_loses_no_checkpoint(tmp_path):
    """Step 4 is a save and an evaluation step: the save comes first, so the failure costs no work."""
    c = synthetic_training.config(total_steps=TOTAL)  # saves every 2 steps, evaluates every 4

    def read(config, workdir, spec):
        io = synthetic_training.read_synthetic(config, workdir, spec)

        def failing():
            raise RuntimeError("evaluation failed")

        return dataclasses.replace(io, eval_batches=failing)

    with pytest.raises(RuntimeError, match="evaluation failed"):
        train(c, str(tmp_path), Stage(spec=synthetic_training.synthetic_spec, read=read))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """An uninterrupted in-process run (conftest's 8 devices) and its final parameters."""
    workdir = str(tmp_path_factory.mktemp("in_process"))
    c = synthetic_training.config(total_steps=TOTAL)
    train(c, workdir, synthetic_training.SYNTHETIC)
    return workdir, synthetic_training.final_params(workdir, c)


@pytest.mark.parametrize("corruption", ["truncated array file", "deleted manifest.ocdbt", "emptied _METADATA",
                                        "deleted data file"])
def test_resume_past_a_corrupt_latest_checkpoint_is_exact(tmp_path, in_process, capfd, corruption):
    from test_checkpointing import corrupt

    straight_workdir, straight_params = in_process
    workdir = tmp_path / "run"
    shutil.copytree(straight_workdir, workdir)
    bad = corrupt(workdir / "checkpoints" / str(TOTAL), corruption)
    c = synthetic_training.config(total_steps=TOTAL)
    train(c, str(workdir), synthetic_training.SYNTHETIC)  # the same command again
    out, err = capfd.readouterr()
    assert f"checkpoint step {TOTAL} is unreadable" in err and bad.name in err, err
    assert f"resumed from step {TOTAL - 2}" in out, out
    assert [p.name.split("-")[1] for p in (workdir / "checkpoints").glob("corrupt-*")] == [str(TOTAL)]
    _assert_bitwise_equal(synthetic_training.final_params(str(workdir), c), straight_params)


def test_sigterm_before_the_first_step_exits_cleanly(tmp_path):
    proc = _run(tmp_path, wait=False)
    while (line := proc.stdout.readline()) and line.strip() != "STARTED":  # the handler is installed
        pass
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 75, out
    assert "stopped by a signal before step 1: nothing new to save" in out, out
    assert "preempted, resume with the same command" in out, out
    assert not os.path.exists(tmp_path / "final_params.npz")


def _metrics_steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def test_second_run_is_refused_and_a_killed_run_loses_at_most_an_interval_plus_a_save_in_flight(tmp_path, straight):
    every = 2
    overrides = ["checkpoint.async_save=True", "log_every=1"]
    first = _run(tmp_path, slow=1.0, wait=False, overrides=overrides)
    _wait_for_checkpoint(tmp_path, 2, first, timeout=HANG_S)
    c = synthetic_training.config(total_steps=TOTAL)
    c.update_from_flattened_dict({"checkpoint.async_save": True, "log_every": 1})
    holder = f"is in use by host {socket.gethostname()} pid {first.pid}"
    with pytest.raises(workdir_lib.WorkdirInUseError, match=holder):
        train(c, str(tmp_path), _NEVER)  # the same run again, while the first holds the workdir
    assert first.poll() is None, "the first run ended before it could be killed mid-run; make its steps slower"
    first.kill()
    first.communicate(timeout=HANG_S)  # after kill(): only a hang waits long
    reached = max(_metrics_steps(tmp_path))
    out = _run(tmp_path, overrides=overrides)  # takes the dead run's lock over and resumes
    assert f"pid {first.pid}" in out and "no longer exists" in out, out
    resumed = int(re.search(r"resumed from step (\d+)", out)[1])
    # The save of the last multiple of `every` may still have been in flight (then not committed); the one before
    # it had committed, since orbax finishes a save before it starts the next.
    in_flight = reached - reached // every * every
    assert reached - resumed <= every + in_flight, (reached, resumed)
    _assert_bitwise_equal(_params(tmp_path), straight)


def test_a_full_disk_stops_the_run_at_the_failed_save(tmp_path):
    checkpoints = tmp_path / "checkpoints"  # only the checkpoints on the small disk: the metrics still get written
    checkpoints.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(checkpoints)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {mounted.stderr.strip()}")
    overrides = ["checkpoint.async_save=True", "log_every=1"]
    try:
        proc = _run(tmp_path, slow=0.3, wait=False, overrides=overrides)
        _wait_for_checkpoint(tmp_path, 2, proc, timeout=HANG_S)
        with open(checkpoints / "filler", "wb") as f:  # takes every free block
            # The run's next save may take blocks between the look and the allocation: what is free then is taken.
            for _ in range(200):  # halves what it asks for when the blocks went meanwhile
                free = os.statvfs(checkpoints)
                if free.f_bavail == 0:
                    break
                size = os.fstat(f.fileno()).st_size
                try:
                    os.posix_fallocate(f.fileno(), 0, size + max(1, free.f_bavail // 2) * free.f_frsize)
                except OSError:
                    if free.f_bavail == 1:
                        break
        out, _ = proc.communicate(timeout=HANG_S)
        assert proc.returncode != 0, out
        failed = int(re.search(r"saving checkpoint step (\d+) in .* failed: .*(No space left|RESOURCE_EXHAUSTED)",
                               out)[1])
        assert "earlier checkpoints are untouched" in out
        assert max(_metrics_steps(tmp_path)) <= failed + 2  # stopped at the next save at the latest
        (checkpoints / "filler").unlink()
        out = _run(tmp_path, overrides=overrides)  # the checkpoints before the failed save resume
        assert "resumed from step" in out
    finally:
        subprocess.run(["umount", "-l", str(checkpoints)], check=False)


def test_a_steps_metrics_are_fetched_after_the_next_step_is_dispatched(tmp_path, monkeypatch):
    """nanodo's order: step t's metrics come to the host once step t + 1 is queued (its batch drawn), except where
    the state is saved, evaluated or final: those are fetched (and checked for a non-finite loss) at once."""
    from mobilebert_jax.metrics_writer import MetricsWriter

    c = synthetic_training.config(total_steps=TOTAL, log_every=1)  # saves every 2 steps, evaluates every 4
    iterators = []

    def read(config, workdir, spec):
        io = synthetic_training.read_synthetic(config, workdir, spec)
        iterators.append(io.train_iterator)
        return io

    drawn_when_written = {}
    write = MetricsWriter.write

    def recording_write(self, step, metrics, progress=True):
        if progress:
            drawn_when_written[step] = iterators[0].index
        write(self, step, metrics, progress)

    monkeypatch.setattr(MetricsWriter, "write", recording_write)
    train(c, str(tmp_path), Stage(spec=synthetic_training.synthetic_spec, read=read))
    assert drawn_when_written == {step: step + (step % 2) for step in range(1, TOTAL + 1)}


def test_logged_padding_fraction_and_real_tokens_are_exact(tmp_path):
    """Batches with known padding (row r of step s keeps SEQ_LEN - (r + s) % 4 tokens): metrics.jsonl has each
    logging window's exact padding fraction, and real tokens/s is tokens/s times the real share."""
    c = synthetic_training.config(total_steps=6, log_every=2)  # rates from the third logging step
    seq, rows = synthetic_training.SEQ_LEN, c.batch_size

    class Padded(synthetic_training.SyntheticBatches):
        def __next__(self):
            step = self.index
            batch = super().__next__()
            for r in range(rows):
                batch["input_mask"][r, seq - (r + step) % 4:] = 0
            return batch

    def read(config, workdir, spec):
        io = synthetic_training.read_synthetic(config, workdir, spec)
        return dataclasses.replace(io, train_iterator=Padded(io.train_iterator.vocab, rows, config.seed))

    def padding(steps):
        return sum((r + s) % 4 for s in steps for r in range(rows)) / (len(steps) * rows * seq)

    train(c, str(tmp_path), Stage(spec=synthetic_training.synthetic_spec, read=read))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl") if '"loss"' in line]
    assert [(r["step"], r["padding_fraction"]) for r in records] == [
        (2, padding([0, 1])), (4, padding([2, 3])), (6, padding([4, 5]))]
    assert "real_tokens" not in records[-1]
    assert records[-1]["real_tokens_per_second"] == pytest.approx(
        records[-1]["tokens_per_second"] * (1 - padding([4, 5])), rel=1e-12)
    assert records[-1]["useful_model_flops_per_second"] == pytest.approx(
        records[-1]["model_flops_per_second"] * (1 - padding([4, 5])), rel=1e-12)
