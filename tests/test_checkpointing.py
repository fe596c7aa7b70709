"""Checkpoint round trips, re-sharding on restore, retention, crash safety and SIGTERM handling."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mobilebert_jax import ConfigError, checkpointing, optim, partitioning
from limits import HANG_S
from synthetic_training import COMMON


class FakeIterator:
    """Stands in for the data loader: an opaque state it can report and be rewound to."""

    def __init__(self, state):
        self.state = state

    def get_state(self):
        return self.state

    def set_state(self, state):
        self.state = state


def make_state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params = {"encoder": {"layer_0": {"kernel": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
                                      "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}},
              "embeddings": {"embedding": jnp.asarray(rng.normal(size=(16, 8)), jnp.bfloat16)}}
    cfg = COMMON.optimizer("lamb", lr=1e-3)
    cfg.groups = dict(frozen=dict(pattern="embeddings", multiplier=0.0))
    tx = optim.build_optimizer(cfg, params)
    opt_state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
    _, opt_state = tx.update(grads, opt_state, params)  # non-zero moments and counts
    return {"params": params, "opt_state": opt_state, "step": jnp.asarray(7, jnp.int32),
            "phase": jnp.asarray(2, jnp.int32)}


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x).reshape(-1).view(np.uint8), np.asarray(y).reshape(-1).view(np.uint8))


def abstract_of(state, sharding=None):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or x.sharding), state)


def test_roundtrip_is_bitwise_and_carries_data_state_and_config(tmp_path):
    config = ml_collections.ConfigDict(dict(batch_size=8, optimizer=dict(lr=1e-3), mesh=dict(shape=(8, 1, 1))))
    state = make_state()
    with checkpointing.Checkpointer(str(tmp_path), every_steps=7, keep_last=2, config=config) as ckpt:
        assert ckpt.save(7, state, FakeIterator({"epoch": 1, "position": [3, 5]}))
        assert not ckpt.save(8, state)  # not a multiple of every_steps
        assert ckpt.save(9, state, FakeIterator(b"\x00grain-bytes\xff"), force=True)
        ckpt.wait()
        assert list(ckpt.all_steps()) == [7, 9]

    with checkpointing.Checkpointer(str(tmp_path), every_steps=10, keep_last=2) as ckpt:
        it = FakeIterator(None)
        assert_bitwise_equal(ckpt.restore(abstract_of(state), step=7, data_iterator=it), state)
        assert it.state == {"epoch": 1, "position": [3, 5]}
        assert_bitwise_equal(ckpt.restore(abstract_of(state), data_iterator=it), state)  # latest = 9
        assert it.state == b"\x00grain-bytes\xff"
        # What model_source reads back from a trainer checkpoint.
        saved = json.loads((tmp_path / "7" / checkpointing.CONFIG / "config.json").read_text())
        assert saved == config.to_dict() | {"mesh": {"shape": [8, 1, 1]}}
        with pytest.raises(FileNotFoundError, match=r"no finished checkpoint for step 8 .* available: \[7, 9\]"):
            ckpt.restore(abstract_of(state), step=8)


def test_restore_onto_a_different_mesh(tmp_path):
    mesh_a = partitioning.make_mesh({"shape": (8, 1, 1)})
    mesh_b = partitioning.make_mesh({"shape": (2, 2, 2)})
    rng = np.random.default_rng(0)
    host = {"kernel": rng.normal(size=(16, 8)).astype(np.float32), "table": rng.normal(size=(4, 8)).astype(np.float32)}
    on_a = {"kernel": jax.device_put(host["kernel"], NamedSharding(mesh_a, P("data", None))),
            "table": jax.device_put(host["table"], NamedSharding(mesh_a, P(None, "data")))}
    with checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep_last=1) as ckpt:
        ckpt.save(1, on_a)
        ckpt.wait()
    targets = {"kernel": NamedSharding(mesh_b, P("fsdp", "tensor")), "table": NamedSharding(mesh_b, P(("data", "fsdp")))}
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=targets[k]) for k, v in host.items()}
    with checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep_last=1) as ckpt:
        restored = ckpt.restore(abstract)
    for k in host:
        assert restored[k].sharding == targets[k]
        np.testing.assert_array_equal(np.asarray(restored[k]), host[k])


def test_keeps_last_k_milestones_and_period(tmp_path):
    state = {"w": jnp.arange(4.0)}
    ckpt = checkpointing.Checkpointer.from_config(
        str(tmp_path), ml_collections.ConfigDict(dict(every_steps=2, keep_last=2, keep_steps=(3,), keep_period=4,
                                                      async_save=True)))
    saved = [step for step in range(1, 15) if ckpt.save(step, {"w": state["w"] + step})]
    ckpt.wait()
    assert saved == [2, 3, 4, 6, 8, 10, 12, 14]
    assert list(ckpt.all_steps()) == [3, 4, 8, 12, 14]  # milestone 3, period 4, last two 12 and 14
    np.testing.assert_array_equal(np.asarray(ckpt.restore(abstract_of(state), step=3)["w"]), np.arange(4.0) + 3)
    ckpt.close()


def test_checkpoint_config_errors(tmp_path):
    section = COMMON.checkpoint(every_steps=1, keep_last=1).to_dict()
    with pytest.raises(ConfigError, match=r"config.checkpoint has unknown field\(s\) \['every'\]"):
        checkpointing.Checkpointer.from_config(str(tmp_path), dict(every=5))
    with pytest.raises(ConfigError, match="config.checkpoint.keep_last=0: must be a positive integer"):
        checkpointing.Checkpointer.from_config(str(tmp_path), dict(section, keep_last=0))
    with pytest.raises(ConfigError, match="config.checkpoint.keep_steps='10'"):
        checkpointing.Checkpointer.from_config(str(tmp_path), dict(section, keep_steps="10"))
    with checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep_last=1) as ckpt:
        with pytest.raises(FileNotFoundError, match="no finished checkpoint in"):
            ckpt.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})


def test_checkpoint_section_holds_no_values():
    """The values are the experiment's (experiments/common.checkpoint): a missing required field is named; the two
    optional ones mean no milestones and no periodic keeps."""
    section = COMMON.checkpoint(every_steps=5, keep_last=2).to_dict()
    for field in ("every_steps", "keep_last", "async_save"):
        partial = {k: v for k, v in section.items() if k != field}
        with pytest.raises(ConfigError, match=re.escape(f"missing required field(s) ['{field}']: set "
                                                        f"config.checkpoint.{field}")):
            checkpointing.read_config(partial)
    required = dict(every_steps=5, keep_last=2, async_save=False)
    assert checkpointing.read_config(required) == dict(required, keep_steps=(), keep_period=None)


def run_script(source: str, *args: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(source), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_checkpoint_of_a_killed_process_is_ignored(tmp_path):
    proc = run_script("""
        import os, sys
        import jax.numpy as jnp, numpy as np
        from mobilebert_jax import checkpointing
        ckpt = checkpointing.Checkpointer(sys.argv[1], every_steps=1, keep_last=5)
        ckpt.save(1, {"w": jnp.ones((1024, 1024))})
        ckpt.wait()
        ckpt.save(2, {"w": jnp.asarray(np.random.default_rng(0).normal(size=(4096, 4096)), jnp.float32)})
        os._exit(3)  # dies while the async save of step 2 is being written
    """, str(tmp_path))
    _, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 3, err
    partial = [p.name for p in tmp_path.iterdir() if p.name.startswith("2.")]
    assert partial and "orbax-checkpoint-tmp" in partial[0], sorted(p.name for p in tmp_path.iterdir())

    with checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep_last=5) as ckpt:
        assert list(ckpt.all_steps()) == [1] and ckpt.latest_step() == 1
        restored = ckpt.restore({"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32,
                                                           sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))})
        np.testing.assert_array_equal(np.asarray(restored["w"]), 1.0)
        ckpt.save(2, {"w": jnp.zeros((1024, 1024))})
        ckpt.wait()
        assert list(ckpt.all_steps()) == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name) == []


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    proc = run_script("""
        import sys, time
        import jax.numpy as jnp
        from mobilebert_jax import checkpointing
        ckpt = checkpointing.Checkpointer(sys.argv[1], every_steps=1000, keep_last=2)
        with checkpointing.PreemptionGuard() as guard:
            state = {"w": jnp.zeros((4,))}
            for step in range(1, 10_000):
                state = {"w": state["w"] + 1}
                if step == 3:
                    print("READY", flush=True)
                if guard.should_stop(step):
                    ckpt.save(step, state, force=True)
                    ckpt.wait()
                    print("STOPPED", step, flush=True)
                    break
                time.sleep(0.01)
        ckpt.close()
    """, str(tmp_path))
    assert proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, err
    step = int(out.split()[-1])
    assert 3 <= step < 10_000
    with checkpointing.Checkpointer(str(tmp_path), every_steps=1000, keep_last=2) as ckpt:
        assert ckpt.latest_step() == step
        restored = ckpt.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32,
                                                           sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))})
    np.testing.assert_array_equal(np.asarray(restored["w"]), float(step))


def test_guard_restores_the_previous_handler():
    before = signal.getsignal(signal.SIGTERM)
    with checkpointing.PreemptionGuard() as guard:
        assert signal.getsignal(signal.SIGTERM) != before
        assert not guard.should_stop(0)
    assert signal.getsignal(signal.SIGTERM) == before


def test_restoring_data_state_that_was_never_saved_says_so(tmp_path):
    state = {"w": jnp.arange(4.0)}
    with checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep_last=1) as ckpt:
        ckpt.save(1, state)
        ckpt.wait()
        with pytest.raises(checkpointing.CheckpointError, match="holds no data iterator state"):
            ckpt.restore(abstract_of(state), data_iterator=FakeIterator(None))


def corrupt(step_dir, kind):
    """Damages checkpoint `step_dir` as a crash or a storage fault might; returns the damaged file."""
    if kind == "truncated array file":
        path = max((step_dir / "state").glob("ocdbt.process_0/d/*"), key=lambda p: p.stat().st_size)
        os.truncate(path, 100)
    elif kind == "deleted manifest.ocdbt":
        path = step_dir / "state" / "manifest.ocdbt"
        path.unlink()
    elif kind == "emptied _METADATA":
        path = step_dir / "state" / "_METADATA"
        path.write_text("")
    elif kind == "deleted data file":
        path = step_dir / "data" / "process_0-of-1.json"
        path.unlink()
    return path


CORRUPTIONS = ["truncated array file", "deleted manifest.ocdbt", "emptied _METADATA", "deleted data file"]


def _save_steps(directory, steps, state_of):
    with checkpointing.Checkpointer(str(directory), every_steps=1, keep_last=10) as ckpt:
        for step in steps:
            ckpt.save(step, state_of(step), FakeIterator({"position": step}))
        ckpt.wait()


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_restore_moves_an_unreadable_latest_step_aside_and_uses_the_one_before(tmp_path, capfd, corruption):
    state_of = lambda step: {"w": jnp.arange(100_000.0) + step}  # noqa: E731
    _save_steps(tmp_path, (1, 2), state_of)
    bad_file = corrupt(tmp_path / "2", corruption)
    with checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep_last=10) as ckpt:
        it = FakeIterator(None)
        restored = ckpt.restore(abstract_of(state_of(0)), data_iterator=it)
        assert list(ckpt.all_steps()) == [1]
    assert_bitwise_equal(restored, state_of(1))
    assert it.state == {"position": 1}
    err = capfd.readouterr().err
    assert "checkpoint step 2 is unreadable" in err and bad_file.name in err, err
    moved = list(tmp_path.glob("corrupt-*"))
    assert len(moved) == 1 and moved[0].name.startswith("corrupt-2-"), moved  # moved aside, never deleted
    assert (moved[0] / "state").is_dir() and not (tmp_path / "2").exists()


def test_no_intact_checkpoint_is_an_error_naming_the_directory(tmp_path):
    state_of = lambda step: {"w": jnp.arange(4.0) + step}  # noqa: E731
    _save_steps(tmp_path, (1, 2), state_of)
    for step in (1, 2):
        (tmp_path / str(step) / "state" / "_METADATA").write_text("{")
    with checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep_last=10) as ckpt:
        with pytest.raises(checkpointing.CheckpointError, match=f"no intact checkpoint in {tmp_path}"):
            ckpt.restore(abstract_of(state_of(0)))
    assert sorted(p.name.split("-")[1] for p in tmp_path.glob("corrupt-*")) == ["1", "2"]


def test_a_target_that_does_not_fit_is_an_error_not_corruption(tmp_path):
    _save_steps(tmp_path, (1,), lambda step: {"w": jnp.arange(4.0)})
    with checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep_last=10) as ckpt:
        with pytest.raises(ValueError):
            ckpt.restore({"w": jax.ShapeDtypeStruct((5,), jnp.float32,
                                                    sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))})
        assert list(ckpt.all_steps()) == [1]  # a model that changed must not move good checkpoints aside
    assert not list(tmp_path.glob("corrupt-*"))


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (needs root; skipped otherwise), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("async_save", [True, False])
def test_a_save_that_runs_out_of_space_stops_naming_the_step(small_disk, async_save):
    small, big = {"w": jnp.ones((100_000,))}, {"w": jnp.arange(2_000_000.0)}  # 0.4 MB fits, 8 MB does not
    # keep_last=1: the save of step 2 would remove step 1, but only once it has committed
    ckpt = checkpointing.Checkpointer(str(small_disk / "ckpt"), every_steps=1, keep_last=1, async_save=async_save)
    ckpt.save(1, small)
    ckpt.wait()
    with pytest.raises(checkpointing.CheckpointError,
                       match=r"saving checkpoint step 2 in .* failed: .*(No space left|RESOURCE_EXHAUSTED).*"
                             r"latest intact: 1"):
        ckpt.save(2, big)
        ckpt.wait()  # an asynchronous save's failure shows here at the latest (or at the next save or check)
    with checkpointing.Checkpointer(str(small_disk / "ckpt"), every_steps=1, keep_last=5) as again:
        assert list(again.all_steps()) == [1]
        assert_bitwise_equal(again.restore(abstract_of(small)), small)


def _as_written_by(step_dir, count, states):
    """Rewrites `step_dir`'s data item as if `count` processes had saved `states` (one per process)."""
    data = step_dir / "data"
    saved = {p.name: p.read_text() for p in data.glob("process_*.json")}
    assert list(saved) == ["process_0-of-1.json"], saved
    for name in saved:
        (data / name).unlink()
    for i, state in enumerate(states):
        (data / f"process_{i}-of-{count}.json").write_text(
            saved["process_0-of-1.json"].replace('"position": 3', f'"position": {state}'))


def test_a_data_position_saved_by_two_processes_restores_on_one(tmp_path):
    """The iterator state is the global stream position: the same in every process's file, usable by any count
    (two processes -> one and one -> two run for real in tests/test_multihost.py)."""
    state_of = lambda step: {"w": jnp.arange(8.0) + step}  # noqa: E731
    _save_steps(tmp_path, (3,), state_of)
    _as_written_by(tmp_path / "3", 2, [3, 3])
    with checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep_last=10) as ckpt:
        it = FakeIterator(None)
        ckpt.restore(abstract_of(state_of(0)), data_iterator=it)
    assert it.state == {"position": 3}


def test_per_process_positions_are_refused_on_another_process_count(tmp_path):
    state_of = lambda step: {"w": jnp.arange(8.0) + step}  # noqa: E731
    _save_steps(tmp_path, (3,), state_of)
    _as_written_by(tmp_path / "3", 2, [3, 4])
    with checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep_last=10) as ckpt:
        with pytest.raises(checkpointing.CheckpointError, match=r"the 2 processes that wrote it saved different data "
                                                                r"iterator states.*resume with 2 processes"):
            ckpt.restore(abstract_of(state_of(0)), data_iterator=FakeIterator(None))


def test_a_missing_process_file_of_another_count_is_an_unreadable_step(tmp_path, capfd):
    state_of = lambda step: {"w": jnp.arange(8.0) + step}  # noqa: E731
    _save_steps(tmp_path, (2, 3), state_of)
    _as_written_by(tmp_path / "3", 2, [3])  # process 1's file never written
    with checkpointing.Checkpointer(str(tmp_path), every_steps=1, keep_last=10) as ckpt:
        it = FakeIterator(None)
        ckpt.restore(abstract_of(state_of(0)), data_iterator=it)
    assert it.state == {"position": 2}
    assert "process_1-of-2.json is missing" in capfd.readouterr().err
