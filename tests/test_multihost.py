"""Two processes x 4 CPU devices on localhost distill, are preempted on one host, resume, and match 1 x 8 devices.

The stage is progressive transfer (the IB-BERT teacher a frozen argument of the step, a phase boundary at step
4) with the real data pipeline: process 0 prepares the bundled corpus, every process loads its own half of each
global batch. Storage is laid out like a pod's: the teacher, the prepared data and the workdir are on (emulated,
tests/gcs_emulator.py) gs://, and each process has only its own local scratch directory, as separate hosts do. The pytest process (8 devices from conftest) trains the reference in-process; the workers are
this file run as a script, each with its own process id, the coordinator on localhost and
JAX_NUM_CPU_DEVICES=4, the way launch/tpu_run.sh starts the trainer on every host of a pod.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from limits import HANG_S

from gcs_emulator import DownloadCounter, gcs  # noqa: F401  (the fixture)

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
MESH = (2, 4, 1)  # fsdp=4 shards parameters across the two processes' devices
LAYERS, PHASE_STEPS = 2, 4
TOTAL = LAYERS * PHASE_STEPS


def tiny_models():
    from mobilebert_jax import get_preset

    # The bundled tokenizer's 4000 tokens fit the vocabulary.
    return (get_preset("ib_bert_test", num_hidden_layers=LAYERS, vocab_size=4000),
            get_preset("mobilebert_test", num_hidden_layers=LAYERS, vocab_size=4000, num_feedforward_networks=2))


def _config(root):
    from test_distill_stage import make_config

    teacher, student = tiny_models()
    c = make_config("progressive", f"{root}/teacher", teacher, student, phase_steps=PHASE_STEPS)
    c.mesh.shape = MESH
    c.batch_size = 8
    c.data.max_seq_length = 32
    c.data.max_predictions_per_seq = 4
    c.data.prepared_dir = f"{root}/data"  # prepared once, read by every run
    c.eval.num_batches = 0
    c.checkpoint.every_steps = 2
    c.checkpoint.keep_last = 10
    c.log_every = 2
    return c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_workers(args: list[str], port: int, scratch, slow: float = 0.0, count: int = 2,
                  counters: list[DownloadCounter] = ()) -> list[subprocess.Popen]:
    """`count` processes of one job running this file with `args`: [ROOT, WORKDIR] (the distillation run),
    ["dcn", WORKDIR] (the two-slice run) or ["resume", WORKDIR, TOTAL_STEPS] (the process-count change).
    With `counters`, process i's prepared-data reads (ArrayRecord's client) go through counters[i]."""
    procs = []
    for i in range(count):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(count),
                   JAX_PROCESS_ID=str(i), JAX_NUM_CPU_DEVICES="4", JAX_PLATFORMS="cpu", SLOW_STEP_SECONDS=str(slow),
                   MOBILEBERT_JAX_SCRATCH=str(scratch / f"host_{i}"))
        if counters:
            env["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = counters[i].url
        env.pop("XLA_FLAGS", None)
        proc = subprocess.Popen([sys.executable, __file__, *map(str, args)], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # Drained as it comes: a worker whose output filled the pipe while the test polls would block in a write
        # (the gcsfs event loop's warnings, say) and hang the job.
        proc.lines = []
        proc.drain = threading.Thread(target=proc.lines.extend, args=(proc.stdout,), daemon=True)
        proc.drain.start()
        procs.append(proc)
    return procs


def output(proc: subprocess.Popen) -> str:
    return "".join(proc.lines)


def finish(procs, timeout=HANG_S) -> list[str]:
    outs = []
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        p.drain.join()
        outs.append(output(p))
    failed = [f"process {i} exited with {p.returncode}:\n{out[-5000:]}"
              for i, (p, out) in enumerate(zip(procs, outs)) if p.returncode != 0]
    assert not failed, "\n".join(failed)
    return outs


def _listing():
    """A gcsfs filesystem that lists from the server every time: the workers write there, not this process."""
    import gcsfs

    return gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)


def _is_dir(uri: str) -> bool:
    return _listing().isdir(uri)


def _data_states(step_dir) -> dict[str, int]:
    fs = _listing()
    out = {}
    for name in sorted(fs.ls(f"{step_dir}/data", detail=False)):
        if name.endswith(".json"):
            out[name.rsplit("/", 1)[-1]] = json.loads(fs.cat(name))["state"]
    return out


def _steps(workdir) -> list[int]:
    names = [n.rstrip("/").rsplit("/", 1)[-1] for n in _listing().ls(f"{workdir}/checkpoints", detail=False)]
    return sorted(int(n) for n in names if n.isdigit())


def test_two_processes_preempted_on_one_host_resume_and_equal_one_process(tmp_path, gcs):
    from test_distill_resume import _final_params as final_student
    from test_distill_stage import save_teacher

    from mobilebert_jax.config import MobileBertConfig
    from mobilebert_jax.distill.stage import DISTILLATION
    from mobilebert_jax.train.trainer import train

    root = gcs.uri("multihost")
    save_teacher(f"{root}/teacher", tiny_models()[0])
    c = _config(root)
    metrics = train(c, str(tmp_path / "single"), DISTILLATION)  # also prepares the workers' data
    assert metrics["phase"] == LAYERS - 1  # progressive transfer went through both phases

    multi = f"{root}/multi"
    counters = [DownloadCounter(gcs.url) for _ in range(2)]
    procs = start_workers([root, multi], free_port(), tmp_path / "scratch", slow=0.4, counters=counters)
    hung = time.time() + HANG_S  # only against a hang
    while not _is_dir(f"{multi}/checkpoints/2"):
        assert all(p.poll() is None for p in procs), finish(procs)
        if time.time() > hung:
            for p in procs:
                p.kill()
            pytest.fail("no checkpoint at step 2:\n" + "\n".join(output(p)[-3000:] for p in procs))
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # a maintenance event on the second host only
    out0, _ = finish(procs)
    for counter in counters:
        counter.close()
    _assert_each_read_only_its_rows(root, c, counters, tmp_path / "scratch")

    stopped = _steps(multi)[-1]
    assert 2 < stopped < TOTAL, out0
    assert f"preempted: saved a checkpoint at step {stopped}" in out0
    # Both hosts stopped after the same step, each having read its own half of every batch so far.
    states = _data_states(f"{multi}/checkpoints/{stopped}")
    assert sorted(states) == ["process_0-of-2.json", "process_1-of-2.json"]
    assert states["process_0-of-2.json"] == states["process_1-of-2.json"], states

    out0, _ = finish(start_workers([root, multi], free_port(), tmp_path / "scratch"))
    assert f"resumed from step {stopped}" in out0

    assert TOTAL in _steps(multi), out0
    student = MobileBertConfig.from_dict(c.model.to_dict())
    single, resumed = final_student(tmp_path / "single", student), final_student(multi, student)
    assert single.keys() == resumed.keys()
    for k in single:
        np.testing.assert_allclose(resumed[k], single[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _assert_each_read_only_its_rows(root: str, c, counters, scratch) -> None:
    """Each host fetched the prepared shards' indexes and, by ranged reads, the records of its own rows of the
    batches it trained and prefetched: nothing whole, nothing copied to its disk."""
    from mobilebert_jax.data.manifest import load_manifest

    train = load_manifest(c.data.prepared_dir)["splits"]["train"]
    rows = c.batch_size // 2 * (TOTAL + c.data.prefetch_buffer_size + c.data.loader_threads)
    prefix = c.data.prepared_dir.removeprefix(f"gs://{root.split('/')[2]}/") + "/train-"
    for i, counter in enumerate(counters):
        reads = {name: n for name, n in counter.requests.items() if name.startswith(prefix)}
        assert reads and not counter.whole, (i, counter.requests, counter.whole)
        assert sum(reads.values()) <= 2 * len(train["shards"]) + rows < train["instances"], (i, reads)
        assert not list((scratch / f"host_{i}").rglob("*.array_record")), i


DCN_STEPS = 2


def _dcn_config(dcn_shape=None):
    """The synthetic pretraining task (tests/synthetic_training.py) on mesh (data 2, fsdp 4); with `dcn_shape`,
    data crosses the slices."""
    import synthetic_training

    c = synthetic_training.config(total_steps=DCN_STEPS)
    c.mesh.shape = (2, 4, 1)
    if dcn_shape is not None:
        c.mesh.dcn_shape = dcn_shape
    c.checkpoint.every_steps = DCN_STEPS
    c.eval.num_batches = 0
    return c


@pytest.mark.slow  # two worker processes and a reference run, each compiling: about a minute on 2 idle cores
def test_two_processes_as_two_slices_match_one_slice(tmp_path, gcs):
    """Multislice without TPUs: CPU devices all report slice 0, so with `config.mesh.dcn_shape=(2, 1, 1)` each
    process is one slice (MaxText's process_is_granule) and the data axis crosses the data-center network. Each
    process's devices must form its own data row, each process's half of the global batch must land on its own
    devices in the global order, and two training steps must give the one-process, one-slice result."""
    import synthetic_training
    from test_distill_resume import _final_params as final_params

    from mobilebert_jax.config import MobileBertConfig
    from mobilebert_jax.train.trainer import train

    single = _dcn_config()
    train(single, str(tmp_path / "single"), synthetic_training.SYNTHETIC)
    model = MobileBertConfig.from_dict(single.model.to_dict())
    reference = final_params(tmp_path / "single", model)

    workdir = gcs.uri("dcn", tmp_path.name)
    procs = start_workers(["dcn", workdir], free_port(), tmp_path / "scratch")
    outs = finish(procs)
    layouts = [json.loads(line[4:]) for out in outs for line in out.splitlines() if line.startswith("DCN ")]
    assert sorted(x["process"] for x in layouts) == [0, 1], outs
    for layout in layouts:
        # Mesh (data, fsdp, tensor): data row i is all of process i's devices.
        assert layout["mesh_processes"] == [[0, 0, 0, 0], [1, 1, 1, 1]], layout
        p = layout["process"]
        assert layout["batch_rows_here"] == [[r, r + 1] for r in range(4 * p, 4 * p + 4)], layout
        assert layout["global_batch_is_the_whole_batch"], layout
    assert f"step {DCN_STEPS}/{DCN_STEPS}" in outs[0]

    two_slices = final_params(workdir, model)
    assert reference.keys() == two_slices.keys()
    for k in reference:
        np.testing.assert_allclose(two_slices[k], reference[k], rtol=1e-5, atol=1e-6, err_msg=k)


RESUME_AT, RESUME_TOTAL = 2, 4  # steps the first process count runs, then the second continues to RESUME_TOTAL


@pytest.mark.slow  # three worker processes in two rounds, each compiling: a few minutes on 2 loaded cores
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_on_another_process_count_continues_the_global_batches(tmp_path, gcs, before, after):
    """`before` processes train to step RESUME_AT and save; `after` processes resume there. Every global batch
    (the processes' rows in process order) equals the uninterrupted stream's batch of that step."""
    import synthetic_training

    workdir = gcs.uri("resume", tmp_path.name)
    first = finish(start_workers(["resume", workdir, RESUME_AT], free_port(), tmp_path / "scratch", count=before))
    second = finish(start_workers(["resume", workdir, RESUME_TOTAL], free_port(), tmp_path / "scratch",
                                  count=after))
    assert f"resumed from step {RESUME_AT}" in second[0], second[0]
    c = _resume_config(RESUME_TOTAL)
    stream = synthetic_training.SyntheticBatches(c.model.vocab_size, c.batch_size, c.seed)
    uninterrupted = [next(stream)["input_ids"].tolist() for _ in range(RESUME_TOTAL)]
    for outs, count, steps in ((first, before, range(RESUME_AT)), (second, after, range(RESUME_AT, RESUME_TOTAL))):
        rows = {}  # (step, process) -> that process's rows of the step's global batch
        for out in outs:
            for line in out.splitlines():
                if line.startswith("BATCH "):
                    record = json.loads(line[6:])
                    rows[record["step"], record["process"]] = record["input_ids"]
        assert sorted(rows) == [(t, p) for t in steps for p in range(count)], outs
        for t in steps:
            assert sum((rows[t, p] for p in range(count)), []) == uninterrupted[t], t


def _resume_config(total_steps):
    import synthetic_training

    c = synthetic_training.config(total_steps=total_steps)
    c.checkpoint.every_steps = RESUME_AT
    c.eval.num_batches = 0
    return c


def _resume_worker(workdir: str, total_steps: int) -> None:
    """One process of the process-count test: the synthetic stage, printing each global batch's rows it reads."""
    sys.path.insert(0, TESTS)
    from mobilebert_jax import multihost

    multihost.initialize()
    import dataclasses

    import jax
    import synthetic_training

    from mobilebert_jax.train.stage import Stage
    from mobilebert_jax.train.trainer import train

    class Recording:
        def __init__(self, batches):
            self.batches = batches

        def __iter__(self):
            return self

        def __next__(self):
            step = self.batches.get_state()["index"]  # the global batch about to be read
            batch = next(self.batches)
            print("BATCH " + json.dumps({"step": step, "process": jax.process_index(),
                                         "input_ids": batch["input_ids"].tolist()}), flush=True)
            return batch

        def get_state(self):
            return self.batches.get_state()

        def set_state(self, state):
            self.batches.set_state(state)

    def read(c, workdir, spec):
        io = synthetic_training.read_synthetic(c, workdir, spec)
        return dataclasses.replace(io, train_iterator=Recording(io.train_iterator))

    train(_resume_config(total_steps), workdir, Stage(spec=synthetic_training.synthetic_spec, read=read))


@pytest.mark.parametrize("field", ["--workdir", "config.data.prepared_dir"])
def test_local_paths_with_several_processes_are_refused(tmp_path, field):
    from mobilebert_jax import experiment_config
    from mobilebert_jax.errors import ConfigError

    c = _config("gs://bucket/run")
    workdir = "gs://bucket/run/multi"
    if field == "--workdir":
        workdir = str(tmp_path / "multi")
    else:
        c.data.prepared_dir = str(tmp_path / "data")
    experiment_config.check_shared_storage(c, workdir, process_count=1)  # one host: local is fine
    with pytest.raises(ConfigError, match=rf"{field}='{tmp_path}/.*' is a local path, but 2 processes .*"
                                          r"Use shared storage \(gs://"):
        experiment_config.check_shared_storage(c, workdir, process_count=2)
    assert not os.listdir(tmp_path)


def test_incomplete_settings_name_what_is_missing(monkeypatch):
    from mobilebert_jax import multihost
    from mobilebert_jax.errors import ConfigError

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


def _worker(root: str, workdir: str) -> None:
    """One host of the simulated job: initialize from the environment, then the trainer's ordinary path."""
    sys.path.insert(0, TESTS)
    from mobilebert_jax import multihost

    how = multihost.initialize()
    import jax

    from mobilebert_jax.data import loader
    from mobilebert_jax.distill.stage import DISTILLATION
    from mobilebert_jax.train.trainer import train

    if jax.process_index() == 0:
        print(how, flush=True)
    slow = float(os.environ.get("SLOW_STEP_SECONDS") or 0)
    if slow:  # leaves time to signal the run between steps
        original = loader.make_pretraining_loader

        def slow_loader(*args, **kwargs):
            batches = original(*args, **kwargs)
            return _Slow(batches, slow)

        loader.make_pretraining_loader = slow_loader
    train(_config(root), workdir, DISTILLATION)


def _dcn_worker(workdir: str) -> None:
    """One process (one "slice") of the DCN test: reports the mesh and where its batch rows land, then trains."""
    sys.path.insert(0, TESTS)
    from mobilebert_jax import multihost

    multihost.initialize()
    import jax
    import synthetic_training
    from jax.experimental import multihost_utils

    from mobilebert_jax import partitioning
    from mobilebert_jax.train.trainer import train

    c = _dcn_config((2, 1, 1))
    mesh = partitioning.make_mesh(c.mesh)
    vocab = c.model.vocab_size
    local = next(synthetic_training.SyntheticBatches(vocab, c.batch_size, c.seed, jax.process_index(),
                                                     jax.process_count()))
    ids = partitioning.make_global_batch(local, mesh)["input_ids"]
    whole = next(synthetic_training.SyntheticBatches(vocab, c.batch_size, c.seed))["input_ids"]
    gathered = multihost_utils.process_allgather(ids, tiled=True)
    print("DCN " + json.dumps({
        "process": jax.process_index(),
        "mesh_processes": [[d.process_index for d in row.flat] for row in mesh.devices],
        "batch_rows_here": sorted([s.index[0].start, s.index[0].stop] for s in ids.addressable_shards),
        "global_batch_is_the_whole_batch": bool(np.array_equal(gathered, whole)),
    }), flush=True)
    train(c, workdir, synthetic_training.SYNTHETIC)


class _Slow:
    """A data iterator that takes `seconds` per batch; state as the wrapped one's."""

    def __init__(self, batches, seconds: float):
        self.batches, self.seconds = batches, seconds

    def __iter__(self):
        return self

    def __next__(self):
        time.sleep(self.seconds)
        return next(self.batches)

    def get_state(self):
        return self.batches.get_state()

    def set_state(self, state):
        self.batches.set_state(state)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    if sys.argv[1] == "dcn":
        _dcn_worker(sys.argv[2])
    elif sys.argv[1] == "resume":
        _resume_worker(sys.argv[2], int(sys.argv[3]))
    else:
        _worker(sys.argv[1], sys.argv[2])
