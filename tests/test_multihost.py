"""Two processes x 4 CPU devices on localhost train, are preempted on one host, resume, and match 1 x 8 devices.

The pytest process (8 devices from conftest) trains the reference in-process;
the workers are this file run as a script, each with its own process id,
the coordinator on localhost and JAX_NUM_CPU_DEVICES=4, the way
launch/tpu_run.sh starts the trainer on every host of a pod.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
MESH = (2, 4, 1)  # fsdp=4 shards parameters across the two processes' devices
TOTAL = 8


def _config():
    import synthetic_training

    c = synthetic_training.config(total_steps=TOTAL)
    c.mesh.shape = MESH
    c.eval.num_batches = 0
    return c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_workers(workdir, port: int, slow: float = 0.0) -> list[subprocess.Popen]:
    procs = []
    for i in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i), JAX_NUM_CPU_DEVICES="4", JAX_PLATFORMS="cpu", SLOW_STEP_SECONDS=str(slow))
        env.pop("XLA_FLAGS", None)
        procs.append(subprocess.Popen([sys.executable, __file__, str(workdir)], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def finish(procs, timeout=300) -> list[str]:
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{out[-5000:]}"
    return outs


def _data_states(step_dir) -> dict[str, int]:
    out = {}
    for name in sorted(os.listdir(os.path.join(step_dir, "data"))):
        if name.endswith(".json"):
            with open(os.path.join(step_dir, "data", name)) as f:
                out[name] = json.load(f)["state"]["index"]
    return out


def test_two_processes_preempted_on_one_host_resume_and_equal_one_process(tmp_path):
    import synthetic_training
    from mobilebert_jax.train.trainer import train

    multi = tmp_path / "multi"
    procs = start_workers(multi, free_port(), slow=0.4)
    deadline = time.time() + 240
    while not os.path.isdir(multi / "checkpoints" / "2"):
        assert all(p.poll() is None for p in procs), finish(procs)
        assert time.time() < deadline, "no checkpoint at step 2"
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # a maintenance event on the second host only
    out0, _ = finish(procs)

    steps = sorted(int(n) for n in os.listdir(multi / "checkpoints") if n.isdigit())
    stopped = steps[-1]
    assert 2 < stopped < TOTAL, out0
    assert f"preempted: saved a checkpoint at step {stopped}" in out0
    # Both hosts stopped after the same step: each wrote its own data-iterator position there.
    assert _data_states(multi / "checkpoints" / str(stopped)) == {
        "process_0-of-2.json": stopped, "process_1-of-2.json": stopped}

    out0, _ = finish(start_workers(multi, free_port()))
    assert f"resumed from step {stopped}" in out0
    assert "process 0 of 2, coordinator localhost:" in out0

    c = _config()
    train(c, str(tmp_path / "single"), synthetic_training.build_synthetic_task)
    single, resumed = _final_params(tmp_path / "single", c), _final_params(multi, c)
    assert single is not None and resumed is not None and single.keys() == resumed.keys()
    for k in single:
        np.testing.assert_allclose(resumed[k], single[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _final_params(workdir, c) -> dict:
    """The latest checkpoint's parameters, read onto this process's first device whatever wrote them."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import synthetic_training
    from flax import traverse_util
    from mobilebert_jax import checkpointing, optim
    from mobilebert_jax.train.step import TrainState

    task = synthetic_training.build_synthetic_task(c, str(workdir))
    tx = optim.build_optimizer(c.optimizer, jax.eval_shape(task.init_params, jax.random.key(0)))

    def init():
        params = task.init_params(jax.random.key(0))
        return nn.meta.unbox(TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params)))

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), jax.eval_shape(init))
    with checkpointing.Checkpointer.from_config(os.path.join(workdir, "checkpoints"), c.checkpoint) as ckpt:
        state = ckpt.restore(target)
    assert int(state.step) == TOTAL
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(state.params)).items()}


def test_incomplete_settings_name_what_is_missing(monkeypatch):
    from mobilebert_jax import multihost
    from mobilebert_jax.config import ConfigError

    for var in (multihost.ENV_ADDRESS, multihost.ENV_COUNT, multihost.ENV_INDEX):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match=r"missing --process_id \(or JAX_PROCESS_ID\)"):
        multihost.initialize("localhost:1234", 2, None)
    monkeypatch.setenv(multihost.ENV_COUNT, "two")
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='two'"):
        multihost.initialize("localhost:1234", None, 0)
    with pytest.raises(ConfigError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
        multihost.initialize("localhost:1234", 2, 2)
    with pytest.raises(ConfigError, match="must be host:port"):
        multihost.initialize("localhost", 2, 0)


def _worker(workdir: str) -> None:
    """One host of the simulated job: initialize from the environment, then the trainer's ordinary path."""
    sys.path.insert(0, TESTS)
    from mobilebert_jax import multihost

    how = multihost.initialize()
    import jax
    import synthetic_training
    from mobilebert_jax.train.trainer import train

    if jax.process_index() == 0:
        print(how, flush=True)
    slow = float(os.environ.get("SLOW_STEP_SECONDS") or 0)
    if slow:  # leaves time to signal the run between steps
        original = synthetic_training.SyntheticBatches.__next__

        def slow_next(self):
            time.sleep(slow)
            return original(self)

        synthetic_training.SyntheticBatches.__next__ = slow_next
    train(_config(), workdir, synthetic_training.build_synthetic_task)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    _worker(sys.argv[1])
