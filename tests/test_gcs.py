"""Runs on gs:// paths against a Cloud Storage emulator on 127.0.0.1 (tests/gcs_emulator.py).

Each command runs as a pod user would start it, in a subprocess whose working
directory is an empty temporary directory; afterwards that directory must still
be empty and no `gs:` directory may exist anywhere we can see: a gs:// path
never becomes a local one. Files ArrayRecord needs locally go to the per-host
scratch directory (MOBILEBERT_JAX_SCRATCH), which the tests point elsewhere.

`-m "not slow"` runs only `test_teacher_run_on_gcs` (data preparation + a smoke
teacher run with checkpoints). The rest is marked slow; run it with
    python -m pytest -q tests/test_gcs.py -m slow
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from limits import HANG_S

from mobilebert_jax import storage
from gcs_emulator import gcs  # noqa: F401  (the fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(ROOT, "experiments", "teacher_ib_bert_large.py") + ":smoke"
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
                          timeout=HANG_S)


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, "\n".join(l for l in (r.stdout[-2000:] + r.stderr[-20000:]).splitlines() if "Traceback" in l or "Error" in l or l.startswith("  File") or l.startswith("FATAL"))
    return r.stdout


def _prepare(gcs, sandbox) -> str:
    data = gcs.uri("data32")
    # The stage's own config and data flags: the runs below, given the same, reuse this preparation.
    _ok(_run("mobilebert_jax.data.prepare", f"--config={TEACHER}", "--config.data.max_seq_length=32",
             f"--config.data.prepared_dir={data}", sandbox=sandbox))
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
    assert {"teacher/config.json", "teacher/config.py", "teacher/metrics.jsonl", "teacher/log.txt"} <= set(objects)
    assert "CheckpointManager" in storage.path(workdir, "log.txt").read_text()  # the library log, kept in the workdir
    assert any(o.startswith("teacher/checkpoints/6/") for o in objects)
    assert any(o.startswith("teacher/tensorboard/events.out.tfevents") for o in objects)
    metrics = [json.loads(line) for line in storage.path(workdir, "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "mlm_loss" in m and "learning_rate" in m][-1] == 6
    # Again: the run is complete and resumes from its last gs:// checkpoint.
    out = _ok(_run("mobilebert_jax.main", f"--config={TEACHER}", f"--workdir={workdir}", *TINY, *_steps(6),
                   f"--config.data.prepared_dir={data}", sandbox=sandbox))
    assert "resumed from step 6" in out


def _copy_as_another_process(src: str, dst: str) -> None:
    """Copies every object under `src` to `dst` through a gcsfs client of its own: as another process (another host
    of a pod, a stage run as a subprocess) writes, unseen by this process's cached listings."""
    import gcsfs
    other = gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)
    for name in other.find(src):
        other.pipe(dst + name[len(src.removeprefix("gs://")):], other.cat(name))


def test_a_long_lived_process_sees_the_steps_others_saved(gcs):
    """gcsfs (epath's gs:// backend) caches each listing for the life of the process. Without
    `storage.forget_listings` where steps are listed, a process that once listed `checkpoints/` kept that list:
    a new Checkpointer there, and model_source's latest step, missed a step another process had saved since."""
    import jax.numpy as jnp

    from mobilebert_jax import checkpointing, get_preset, model_source
    workdir = gcs.uri("listings")
    checkpoints = f"{workdir}/checkpoints"
    config = {"model": get_preset("mobilebert_test").to_dict()}  # what model_source reads of a checkpoint
    with checkpointing.Checkpointer(checkpoints, every_steps=1, keep_last=10, async_save=False,
                                    config=config) as ckpt:
        ckpt.save(2, {"params": {"w": jnp.arange(4.0)}})
    with checkpointing.Checkpointer(checkpoints, every_steps=1, keep_last=10) as ckpt:
        assert list(ckpt.all_steps()) == [2]  # listed here, and cached
    _copy_as_another_process(f"{checkpoints}/2", f"{checkpoints}/4")
    assert model_source.open_source(workdir, "test").path == f"{checkpoints}/4"
    _copy_as_another_process(f"{checkpoints}/2", f"{checkpoints}/6")
    with checkpointing.Checkpointer(checkpoints, every_steps=1, keep_last=10) as ckpt:
        assert list(ckpt.all_steps()) == [2, 4, 6]


def test_an_unreadable_step_on_gcs_is_moved_aside_and_kept(gcs):
    """The fallback past an unreadable newest step, on gs://. The moved step is a sibling of the steps, not inside a
    `checkpoints/corrupt/` folder: epath's rename refuses such a destination folder (on Cloud Storage a folder
    exists only through its objects), and a folder there without `commit_success.txt` is what orbax deletes as an
    unfinished save when it next opens the directory. The sibling survives that clean-up."""
    import gcsfs
    import jax
    import jax.numpy as jnp
    import numpy as np
    from test_checkpointing import abstract_of

    from mobilebert_jax import checkpointing
    checkpoints = gcs.uri("fallback", "checkpoints")
    state_of = lambda step: {"w": jnp.arange(1000.0) + step}  # noqa: E731
    with checkpointing.Checkpointer(checkpoints, every_steps=1, keep_last=10, async_save=False) as ckpt:
        for step in (1, 2):
            ckpt.save(step, state_of(step))
    other = gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)
    other.pipe(f"{checkpoints}/2/state/_METADATA", b"")  # emptied, as a storage fault might leave it
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with checkpointing.Checkpointer(checkpoints, every_steps=1, keep_last=10) as ckpt:
        restored = ckpt.restore(abstract_of(state_of(0), one_device))
        assert list(ckpt.all_steps()) == [1]
    np.testing.assert_array_equal(restored["w"], state_of(1)["w"])
    with checkpointing.Checkpointer(checkpoints, every_steps=1, keep_last=10, async_save=False) as ckpt:
        ckpt.save(3, state_of(3))  # waits for orbax's clean-up of unfinished saves, started when it opened
        assert list(ckpt.all_steps()) == [1, 3]
    moved = [n.rsplit("/", 1)[-1] for n in other.ls(checkpoints) if n.rsplit("/", 1)[-1].startswith("corrupt-")]
    assert len(moved) == 1 and moved[0].startswith("corrupt-2-"), moved
    assert other.exists(f"{checkpoints}/{moved[0]}/state/_METADATA")


def _teacher(gcs, sandbox) -> tuple[str, str]:
    """(data, teacher workdir) on gs://: prepared and trained for 6 steps (a finished run only resumes)."""
    data = _prepare(gcs, sandbox)
    workdir = gcs.uri("teacher")
    _ok(_run("mobilebert_jax.main", f"--config={TEACHER}", f"--workdir={workdir}", *TINY, *_steps(6),
             f"--config.data.prepared_dir={data}", sandbox=sandbox))
    return data, workdir


def _checkpoints(workdir: str) -> list[int]:
    """The finished checkpoint steps. On Cloud Storage orbax cannot rename a finished step directory into place:
    a step directory exists while it is written, and `commit_success.txt` in it marks it finished."""
    storage.forget_listings(workdir)  # another process writes there
    root = storage.path(workdir, "checkpoints")
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


def _state(workdir: str, step: int) -> dict:
    import jax
    import orbax.checkpoint as ocp
    storage.forget_listings(workdir)  # written by another process since this one last listed it
    tree = ocp.PyTreeCheckpointer().restore(storage.path(workdir, "checkpoints", str(step), "state"))
    # Every leaf, also those inside the optimizer state's lists and tuples (flatten_dict stops at dicts).
    return {jax.tree_util.keystr(k): jax.device_get(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_resumes_bit_exact(gcs, sandbox):
    import numpy as np
    data = _prepare(gcs, sandbox)
    total = 30
    args = [f"--config={TEACHER}", *TINY, *_steps(total), f"--config.data.prepared_dir={data}"]
    _ok(_run("mobilebert_jax.main", f"--workdir={gcs.uri('straight')}", *args, sandbox=sandbox))

    killed = gcs.uri("killed")
    cwd, env = sandbox
    proc = subprocess.Popen([sys.executable, "-m", "mobilebert_jax.main", f"--workdir={killed}", *args], cwd=cwd,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not _checkpoints(killed):  # bounded by the run itself: it ends by step `total`
            assert proc.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # no chance to save: only finished checkpoints remain
    finally:
        proc.wait()
    stopped = _checkpoints(killed)[-1]
    assert stopped < total, f"killed too late: the run had reached step {stopped}"

    out = _ok(_run("mobilebert_jax.main", f"--workdir={killed}", *args, sandbox=sandbox))
    assert f"resumed from step {stopped}" in out
    straight, resumed = _state(gcs.uri("straight"), total), _state(killed, total)
    assert straight.keys() == resumed.keys()
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)


@pytest.mark.slow
def test_distillation_reads_its_teacher_from_gcs(gcs, sandbox):
    data = _prepare(gcs, sandbox)
    teacher = gcs.uri("teacher4")  # the distillation smoke config's teacher: 4 layers
    _ok(_run("mobilebert_jax.main", f"--config={TEACHER}", f"--workdir={teacher}", *TINY, *_steps(3),
             "--config.model.num_hidden_layers=4", f"--config.data.prepared_dir={data}", sandbox=sandbox))
    workdir = gcs.uri("distill")
    out = _ok(_run("mobilebert_jax.main", f"--config={ROOT}/experiments/distill_progressive.py:smoke",
                   f"--workdir={workdir}", f"--config.distill.teacher={teacher}", "--config.distill.phase_steps=1",
                   "--config.total_steps=4", "--config.batch_size=8", "--config.log_every=1",
                   "--config.data.max_seq_length=32", "--config.data.num_shards=4",
                   f"--config.data.prepared_dir={data}", sandbox=sandbox))
    assert "step 4/4" in out, out[-2000:]
    assert 4 in _checkpoints(workdir)


@pytest.mark.slow
def test_glue_finetune_from_a_gcs_checkpoint(gcs, sandbox):
    glue_dir = os.path.join(ROOT, "..", "shared", "data", "glue")
    if not os.path.isdir(os.path.join(glue_dir, "MRPC")):
        pytest.skip("../shared/data/glue/MRPC is absent")
    import jax
    import jax.numpy as jnp

    from mobilebert_jax import convert, get_preset
    from mobilebert_jax.modeling import MobileBertForPreTraining
    model = get_preset("mobilebert_test", vocab_size=30522, max_position_embeddings=128)
    params = MobileBertForPreTraining(model).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    init = convert.native.save_params(gcs.uri("init"), model, params)
    workdir = gcs.uri("mrpc")
    out = _ok(_run("mobilebert_jax.main", f"--config={ROOT}/experiments/finetune_glue.py:task=mrpc,smoke",
                   f"--workdir={workdir}", f"--config.init_checkpoint={init}", "--config.total_steps=4",
                   "--config.optimizer.schedule.total_steps=4", "--config.log_every=2",
                   "--config.checkpoint.every_steps=4", "--config.eval.every_steps=4", "--config.batch_size=8",
                   # The params directory records no tokenizer; the model has BERT's uncased vocabulary.
                   f"--config.data.tokenizer={os.path.join(ROOT, '..', 'shared', 'data', 'vocab')}/bert-uncased-vocab.txt",
                   sandbox=sandbox))
    assert "step 4/4" in out, out[-2000:]
    objects = gcs.list("mrpc")
    assert "mrpc/metrics.jsonl" in objects and any(o.startswith("mrpc/checkpoints/4/") for o in objects)


@pytest.mark.slow
def test_whole_lifecycle_on_gcs(gcs, sandbox, tmp_path):
    """Tokenizer, corpus, prepared data, GLUE files and every workdir and output on gs://: teacher -> progressive
    distillation -> GLUE fine-tune -> evaluate -> int8 quantize -> ONNX and LiteRT export -> HF directory. Nothing is
    written locally but the scratch directory, bounded by the prepared documents' bytes at the end."""
    import gcsfs

    from mobilebert_jax.data.builtin_tokenizer import BUILTIN_TOKENIZER, builtin_tokenizer_path

    shared = os.path.join(ROOT, "..", "shared", "data")
    if not os.path.isdir(os.path.join(shared, "glue", "MRPC")) or not os.path.isdir(
            os.path.join(shared, "corpus", "state_union")):
        pytest.skip("../shared/data (glue/MRPC, corpus/state_union) is absent")
    pytest.importorskip("onnx")
    pytest.importorskip("ai_edge_litert")
    fs = gcsfs.GCSFileSystem()
    life = f"{gcs.bucket}/life"
    fs.put(builtin_tokenizer_path(BUILTIN_TOKENIZER), f"{life}/vocab/sp4000.model")
    fs.put(os.path.join(shared, "corpus", "state_union"), f"{life}/corpus", recursive=True)
    fs.put(os.path.join(shared, "glue", "MRPC"), f"{life}/glue/MRPC", recursive=True)
    uri = lambda *parts: gcs.uri("life", *parts)  # noqa: E731
    data = [f"--config.data.tokenizer={uri('vocab', 'sp4000.model')}", f"--config.data.corpus={uri('corpus')}",
            "--config.data.corpus_format=paragraphs", f"--config.data.prepared_dir={uri('data')}",
            "--config.data.max_seq_length=32", "--config.data.num_shards=4"]

    teacher = uri("teacher")
    out = _ok(_run("mobilebert_jax.main", f"--config={TEACHER}", f"--workdir={teacher}", *TINY, *_steps(3),
                   "--config.model.num_hidden_layers=4", *data, sandbox=sandbox))
    assert "step 3/3" in out and "data/manifest.json" in " ".join(fs.find(f"{life}/data"))

    distilled = uri("distill")
    out = _ok(_run("mobilebert_jax.main", f"--config={ROOT}/experiments/distill_progressive.py:smoke",
                   f"--workdir={distilled}", f"--config.distill.teacher={teacher}", "--config.distill.phase_steps=1",
                   "--config.total_steps=4", "--config.batch_size=8", "--config.log_every=1", *data,
                   sandbox=sandbox))
    assert "step 4/4" in out, out[-2000:]

    finetuned = uri("mrpc")
    out = _ok(_run("mobilebert_jax.main", f"--config={ROOT}/experiments/finetune_glue.py:task=mrpc,smoke",
                   f"--workdir={finetuned}", f"--config.init_checkpoint={distilled}", "--config.total_steps=4",
                   "--config.optimizer.schedule.total_steps=4", "--config.log_every=2",
                   "--config.checkpoint.every_steps=4", "--config.eval.every_steps=4", "--config.batch_size=8",
                   "--config.data.max_seq_length=32", f"--config.data.glue_dir={uri('glue')}", sandbox=sandbox))
    assert "step 4/4" in out, out[-2000:]

    _ok(_run("mobilebert_jax.evaluate", f"--workdir={finetuned}", "--batch_size=32", sandbox=sandbox))
    assert 0.0 <= json.loads(storage.path(finetuned, "eval", "metrics.json").read_text())["dev"]["accuracy"] <= 1
    _ok(_run("mobilebert_jax.quantization", f"--workdir={finetuned}", "--calibration_examples=16",
             "--batch_size=32", sandbox=sandbox))
    assert "ptq_config" in json.loads(storage.path(finetuned, "eval", "int8.json").read_text())
    for name in ("onnx/mrpc.onnx", "litert/mrpc.tflite"):  # apart: each writes its mrpc.json beside it
        _ok(_run("mobilebert_jax.export", f"--workdir={finetuned}", f"--output={uri('export', name)}",
                 "--seq_len=32", sandbox=sandbox))
        assert storage.size(uri("export", name)) > 0
    _ok(_run("mobilebert_jax.convert", "to-hf", f"--input={finetuned}", f"--output={uri('mrpc_hf')}",
             sandbox=sandbox))
    hf = {name.rsplit("/", 1)[-1] for name in fs.find(f"{life}/mrpc_hf")}
    assert {"config.json", "model.safetensors"} <= hf or {"config.json", "pytorch_model.bin"} <= hf, hf

    # The sandbox's MOBILEBERT_JAX_SCRATCH keeps only preparation's cached copies of its tokenized documents
    # (storage.local_copy), never more than those objects' bytes: no shard, log, model or output.
    scratch = tmp_path / "scratch"
    left = {str(p.relative_to(scratch)): p.stat().st_size for p in scratch.rglob("*") if p.is_file()}
    assert all(name.startswith(f"cache/gs/{life}/data/documents/") for name in left), left
    assert sum(left.values()) <= sum(fs.size(n) for n in fs.find(f"{life}/data/documents")), left
