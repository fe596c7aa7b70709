"""tools/aot_compile: the smoke PD stage (teacher in the step, built from its spec alone) compiled for TPU v3:2x2
by libtpu on this CPU-only machine, its memory checked against the state it must hold; a one-layer teacher compiled
with fsdp for every TPU generation (v4 and v5p as megacore); every slice --help names resolved; errors named.

Needs libtpu (the `aot` extra, or TPU_LIBRARY_PATH); the full-size table is docs/scale_out.md's benchmark command.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
from limits import HANG_S

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _libtpu_available() -> bool:
    from mobilebert_jax.tools import install_libtpu

    if os.environ.get("TPU_LIBRARY_PATH"):
        return os.path.isfile(os.environ["TPU_LIBRARY_PATH"])
    import importlib.util

    return os.path.isfile(install_libtpu.LIBRARY) or importlib.util.find_spec("libtpu") is not None


needs_libtpu = pytest.mark.skipif(not _libtpu_available(), reason="libtpu not installed: python -m "
                                  "mobilebert_jax.tools.install_libtpu (the README's test command runs it)")


def aot(*args, env=None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "mobilebert_jax.tools.aot_compile", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=HANG_S)


def _param_count(model_cfg) -> int:
    import jax
    import jax.numpy as jnp

    from mobilebert_jax.config import MobileBertConfig
    from mobilebert_jax.modeling import MobileBertForPreTraining
    from mobilebert_jax.partitioning import unbox_without_constraints

    model = MobileBertForPreTraining(MobileBertConfig.from_dict(model_cfg.to_dict()))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))["params"])
    return sum(math.prod(x.shape) for x in jax.tree.leaves(unbox_without_constraints(shapes)))


@needs_libtpu
def test_smoke_pd_compiles_for_v3_2x2_and_its_memory_holds_the_state(tmp_path):
    from mobilebert_jax import experiment_config

    out = tmp_path / "result.json"
    proc = aot("--config=experiments/distill_pd.py:smoke", "--topology=v3:2x2", f"--json_out={out}", "--mfu=0.5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = json.loads(out.read_text())
    assert (r["devices"], r["hosts"], r["device_kind"], r["mesh"]) == (8, 1, "TPU v3", {"data": 8, "fsdp": 1,
                                                                                        "tensor": 1})
    assert r["hbm_bytes"] == 16 << 30 and r["fits"] is True
    assert r["total_bytes"] == r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"] + r["code_bytes"]
    # Data parallel: every core holds the whole student with LAMB's two moments (PD trains every parameter), the
    # float32 teacher passed into the step, and an eighth of the batch; TPU layouts pad small dimensions to whole
    # tiles (the 2-way NSP kernel takes 128 lanes), a few percent at this size.
    config = experiment_config.load_experiment("experiments/distill_pd.py:smoke")
    state = 4 * 3 * _param_count(config.model) + 4 * _param_count(config.teacher_model)
    seq, predictions = config.data.max_seq_length, config.data.max_predictions_per_seq
    batch = 4 * (config.batch_size // 8) * (3 * seq + 3 * predictions + 1)
    assert state <= r["argument_bytes"] <= 1.1 * state + batch
    # XLA counts every operation of the step, recomputation included; the model count only the matmuls.
    assert r["model_flops_per_step"] <= r["xla_flops_per_step"] <= 3 * r["model_flops_per_step"]
    assert r["step_seconds"] == pytest.approx(r["model_flops_per_step"] / (0.5 * 61.5e12 * 8))
    assert r["run_seconds"] == pytest.approx(r["step_seconds"] * config.total_steps)
    assert "experiments/distill_pd.py:smoke on v3:2x2: 8 x TPU v3 (1 hosts)" in proc.stdout
    assert "of 16.00 GiB HBM: fits" in proc.stdout


@needs_libtpu
@pytest.mark.parametrize("args,message", [
    (["--topology=v3:3x7"], "--topology='v3:3x7'"),
    (["--topology=v3:2x2", "--config.mesh.shape=(3, 1, 1)"], "config.mesh.shape=(3, 1, 1) covers 3 devices, but 8"),
    (["--topology=v7x:2x2"], "--topology='v7x:2x2': must be GENERATION:SHAPE with GENERATION one of"),
])
def test_config_errors_are_named_before_compiling(args, message):
    proc = aot("--config=experiments/teacher_ib_bert_large.py:smoke", *args)
    assert proc.returncode == 1 and "FATAL config error" in proc.stderr and message in proc.stderr, proc.stderr[-3000:]


def test_missing_libtpu_is_named():
    env = {**os.environ, "TPU_LIBRARY_PATH": "/nonexistent/libtpu.so"}
    proc = aot("--config=experiments/teacher_ib_bert_large.py:smoke", "--topology=v3:2x2", env=env)
    assert proc.returncode == 1 and "TPU_LIBRARY_PATH='/nonexistent/libtpu.so' is not a file" in proc.stderr


# (topology, JAX devices, device kind, HBM per device in GiB): v4 and v5p are megacore (one device per chip).
GENERATIONS = [("v3:2x2", 8, "TPU v3", 16), ("v4:2x2x1", 4, "TPU v4", 32), ("v5p:2x2x1", 4, "TPU v5", 95),
               ("v5e:2x2", 4, "TPU v5 lite", 16), ("v6e:2x2", 4, "TPU v6 lite", 32)]


@needs_libtpu
@pytest.mark.parametrize("topology,devices,kind,hbm_gib", GENERATIONS, ids=[g[0] for g in GENERATIONS])
def test_one_layer_teacher_compiles_with_fsdp_for_each_generation(tmp_path, topology, devices, kind, hbm_gib):
    out = tmp_path / "result.json"
    tiny = ["--config.model.num_hidden_layers=1", "--config.data.max_seq_length=32",
            "--config.data.max_predictions_per_seq=4", "--config.batch_size=8"]
    proc = aot("--config=experiments/teacher_ib_bert_large.py:smoke", f"--topology={topology}",
               "--config.mesh.shape=(1, -1, 1)", *tiny, f"--json_out={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    r = json.loads(out.read_text())
    assert (r["devices"], r["device_kind"], r["hbm_bytes"], r["fits"]) == (devices, kind, hbm_gib << 30, True)
    assert r["mesh"] == {"data": 1, "fsdp": devices, "tensor": 1}
    assert r["model_flops_per_step"] <= r["xla_flops_per_step"] <= 3 * r["model_flops_per_step"]
    # fsdp: each device holds its shard of the parameters and LAMB moments, not the whole state.
    from mobilebert_jax import experiment_config

    config = experiment_config.load_experiment("experiments/teacher_ib_bert_large.py:smoke")
    config.model.num_hidden_layers = 1
    assert r["argument_bytes"] < 4 * 3 * _param_count(config.model) / 2


@needs_libtpu
def test_a_step_that_does_not_fit_the_hbm_is_one_fatal_line():
    """The TPU compiler's RESOURCE_EXHAUSTED is an answer about the config (too big a batch), not a traceback."""
    proc = aot("--config=experiments/teacher_ib_bert_large.py:smoke", "--topology=v3:2x2",
               "--config.model.num_hidden_layers=1", "--config.data.max_seq_length=512",
               "--config.model.max_position_embeddings=512", "--config.batch_size=32768")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    assert re.search(r"^FATAL config error: .*does not fit v3:2x2 at config.batch_size=32768: .*RESOURCE_EXHAUSTED",
                     proc.stderr, re.M), proc.stderr[-3000:]


@needs_libtpu
def test_scanned_teacher_compiles_with_fsdp_and_holds_what_the_unrolled_one_holds(tmp_path):
    """Layers under nn.scan (config.model.scan_layers): the stacked parameters and their optimizer state shard
    over fsdp like the unrolled ones (the layer axis replicated), and the step compiles for v3:2x2."""
    tiny = ["--config.model.num_hidden_layers=3", "--config.data.max_seq_length=32",
            "--config.data.max_predictions_per_seq=4", "--config.batch_size=8", "--config.mesh.shape=(1, -1, 1)"]
    results = {}
    for scan in (False, True):
        out = tmp_path / f"{scan}.json"
        proc = aot("--config=experiments/teacher_ib_bert_large.py:smoke", "--topology=v3:2x2", *tiny,
                   f"--config.model.scan_layers={scan}", f"--json_out={out}", *([] if scan else ["--nocompile"]))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        results[scan] = json.loads(out.read_text())
    unrolled, scanned = results[False], results[True]
    assert scanned["fits"] is True and scanned["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert scanned["state_bytes"] == unrolled["state_bytes"]
    assert scanned["argument_bytes"] <= 1.1 * scanned["state_bytes"] + (1 << 20)
    assert scanned["xla_flops_per_step"] is None  # XLA's cost analysis would count the scanned layer once


@needs_libtpu
def test_every_topology_in_the_help_resolves():
    from mobilebert_jax.tools.aot_compile import TOPOLOGY_EXAMPLES

    script = ("import json; from mobilebert_jax.tools import aot_compile as a; a.prepare_libtpu(); "
              "print(json.dumps({t: [len(d := a.topology_devices(t)), len({x.process_index for x in d}), "
              "d[0].device_kind] for t, _ in a.TOPOLOGY_EXAMPLES}))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found == {"v3:8x16": [256, 32, "TPU v3"], "v3:2x2": [8, 1, "TPU v3"], "v4:4x4x8": [128, 32, "TPU v4"],
                     "v5p:4x4x4": [64, 16, "TPU v5"], "v5e:16x16": [256, 64, "TPU v5 lite"],
                     "v6e:4x4": [16, 4, "TPU v6 lite"]}
    assert [t for t, _ in TOPOLOGY_EXAMPLES] == list(found)


@needs_libtpu
def test_nocompile_reports_what_fsdp_and_a_bfloat16_teacher_hold_per_device(tmp_path):
    from mobilebert_jax import experiment_config

    config = experiment_config.load_experiment("experiments/distill_pd.py:smoke")
    student, teacher = _param_count(config.model), _param_count(config.teacher_model)
    held = {}
    for name, mesh, dtype in (("dp", "(-1, 1, 1)", "float32"), ("fsdp", "(1, -1, 1)", "bfloat16")):
        out = tmp_path / f"{name}.json"
        proc = aot("--config=experiments/distill_pd.py:smoke", "--topology=v3:2x2", "--nocompile",
                   f"--config.mesh.shape={mesh}", f"--config.distill.teacher_dtype={dtype}", f"--json_out={out}")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        assert "not compiled (--nocompile)" in proc.stdout and f"({dtype})" in proc.stdout
        held[name] = json.loads(out.read_text())
        assert held[name]["compiled"] is False and held[name]["frozen_dtype"] == dtype
    # Data parallel: the whole student with LAMB's two moments (and a few step counters), the float32 teacher.
    assert 12 * student <= held["dp"]["state_bytes"] <= 12 * student + 64
    assert held["dp"]["frozen_bytes"] == 4 * teacher
    # fsdp over 8 cores: an eighth of each, give or take the few small dimensions that do not split.
    assert held["fsdp"]["state_bytes"] < 12 * student / 4
    assert held["fsdp"]["frozen_bytes"] < 2 * teacher / 4


def test_the_spec_example_is_what_the_pretraining_loader_yields(tmp_path):
    """The compiler builds the batch from the stage's spec alone; the real loader must yield exactly that."""
    from mobilebert_jax import experiment_config
    from mobilebert_jax.pretraining.stage import PRETRAINING

    config = experiment_config.load_experiment("experiments/teacher_ib_bert_large.py:smoke",
                                               ["--config.data.max_seq_length=32", "--config.batch_size=8"])
    task = PRETRAINING.open(config, str(tmp_path))
    batch = next(task.train_iterator)
    assert {k: (v.shape[1:], v.dtype) for k, v in batch.items()} == \
        {k: (v.shape, v.dtype) for k, v in task.spec.example.items()}
