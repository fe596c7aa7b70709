"""tools/preflight: a stage's configuration checked against a TPU slice it does not have (libtpu's compile-only
devices), each problem one FATAL line naming the field and the value to set.

The runs happen in subprocesses: libtpu is loaded there, not into the test process. They need libtpu
(`python -m mobilebert_jax.tools.install_libtpu`) and skip without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from limits import HANG_S

from mobilebert_jax.errors import ConfigError
from mobilebert_jax.tools import preflight

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def has_libtpu() -> bool:
    from mobilebert_jax.tools import install_libtpu

    if os.environ.get("TPU_LIBRARY_PATH") or os.path.isfile(install_libtpu.LIBRARY):
        return True
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return False
    return True


needs_libtpu = pytest.mark.skipif(not has_libtpu(), reason="libtpu is not installed "
                                  "(python -m mobilebert_jax.tools.install_libtpu)")


def _env():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return env


def preflight_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilebert_jax.tools.preflight", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=HANG_S)


def fatal_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("FATAL ")]


@pytest.mark.parametrize("accelerator, name", [
    ("v3-256", "v3:8x16"), ("v3-32", "v3:4x4"), ("v3-8", "v3:2x2"), ("v5litepod-256", "v5e:16x16"),
    ("v4-128", "v4:4x4x4"), ("v5p-128", "v5p:4x4x4"), ("v6e-16", "v6e:4x4"), ("v5e:16x16", "v5e:16x16")])
def test_cloud_accelerator_types_name_jax_topologies(accelerator, name):
    assert preflight.topology_name(accelerator) == name


def test_an_unknown_slice_size_names_the_flag():
    with pytest.raises(ConfigError, match=r"--topology='v3-48': no v3 slice of that size"):
        preflight.topology_name("v3-48")


@needs_libtpu
def test_the_smoke_teacher_passes_and_its_tokenizer_and_corpus_are_found():
    proc = preflight_cli("--config=experiments/teacher_ib_bert_large.py:smoke", "--topology=v5litepod-8",
                         "--nocompile")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 TPU v5 lite devices, 2 hosts" in proc.stdout
    assert "config.data.tokenizer: found" in proc.stdout and "config.data.corpus: found" in proc.stdout
    assert "preflight: no problems found" in proc.stdout


@needs_libtpu
def test_every_problem_is_one_fatal_line_naming_the_field(tmp_path):
    missing = str(tmp_path / "no_such_vocab.txt")
    proc = preflight_cli("--config=experiments/teacher_ib_bert_large.py:smoke", "--topology=v5e:2x4", "--nocompile",
                         f"--config.data.tokenizer={missing}", "--workdir=runs/local")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = fatal_lines(proc)
    assert len(lines) == 2, proc.stderr
    assert any("--workdir='runs/local' is a local path, but 2 processes" in line for line in lines), lines
    assert any("config.data.tokenizer" in line and missing in line for line in lines), lines
    assert "Traceback" not in proc.stderr

    proc = preflight_cli("--config=experiments/teacher_ib_bert_large.py:smoke", "--topology=v5e:2x4", "--nocompile",
                         "--config.batch_size=12", "--offline")
    assert proc.returncode == 1
    (line,) = fatal_lines(proc)
    assert "config.batch_size=12 is not divisible by data=8" in line, line


@needs_libtpu
def test_multislice_with_the_default_fsdp_mesh_names_the_mesh_that_works():
    """The paper's distillation on 2 x v5e-256: fsdp over every device (the experiments' default) cannot put the
    data axis across the slices; the line says which config.mesh.shape can, and that one passes."""
    args = ["--config=experiments/distill_progressive.py", "--topology=v5litepod-256", "--num_slices=2", "--offline",
            "--nocompile"]
    proc = preflight_cli(*args)
    assert proc.returncode == 1
    (line,) = fatal_lines(proc)
    assert line.startswith("FATAL config error: config.mesh.dcn_shape=(2, 1, 1) does not divide "
                           "config.mesh.shape=(1, 512, 1)"), line
    assert "set --config.mesh.shape='(2, 256, 1)'" in line
    proc = preflight_cli(*args, "--config.mesh.shape=(2, 256, 1)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mesh: {'data': 2, 'fsdp': 256, 'tensor': 1} over 2 slices" in proc.stdout


# The pod-scale stages (fine-tuning runs on one host).
PAPER_STAGES = ["teacher_ib_bert_large.py", "distill_progressive.py", "distill_pd.py", "distill_joint.py",
                "distill_auxiliary.py"]
# (topology, slices, mesh override): the paper's v3-256, a v5e-256, two v5e-256 slices, and a v3-32.
SLICES = [("v3-256", 1, None), ("v5litepod-256", 1, None), ("v5litepod-256", 2, (2, 256, 1)), ("v3-32", 1, None)]

_MATRIX_SCRIPT = """
import json, sys
from mobilebert_jax import experiment_config
from mobilebert_jax.tools import aot_compile, preflight
aot_compile.prepare_libtpu()
out = {}
for stage in json.loads(sys.argv[1]):
    for topology, slices, mesh in json.loads(sys.argv[2]):
        config = experiment_config.load_experiment(f"experiments/{stage}")
        if mesh is not None:
            config.mesh.shape = tuple(mesh)
        notes = []
        found = preflight.run(config, topology, num_slices=slices, offline=True, compile_step=False,
                              out=notes.append)
        out[f"{stage} {slices}x{topology}"] = found.lines()
print("RESULT " + json.dumps(out))
"""


@needs_libtpu
def test_every_paper_stage_passes_the_config_and_mesh_checks_on_the_paper_slices():
    """Without the compile (its memory check, minutes and ~14 GB per full-size stage, is the slow test below)."""
    proc = subprocess.run([sys.executable, "-c", _MATRIX_SCRIPT, json.dumps(PAPER_STAGES), json.dumps(SLICES)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    problems = {k: v for k, v in json.loads(result[7:]).items() if v}
    assert problems == {}, problems


@needs_libtpu
@pytest.mark.slow  # compiles the step several times (remat, then more microbatches)
def test_a_step_that_does_not_fit_names_the_remat_and_microbatches_that_do():
    """The smoke teacher with a global batch far beyond a v2 core's 8 GiB: the line names the settings with
    which the compile fits."""
    proc = preflight_cli("--config=experiments/teacher_ib_bert_large.py:smoke", "--topology=v2:2x2", "--offline",
                         "--config.batch_size=8192", "--config.data.max_seq_length=512")
    lines = fatal_lines(proc)
    assert proc.returncode == 1 and len(lines) == 1, proc.stdout + proc.stderr
    assert "the train step does not fit v2:2x2 at config.batch_size=8192" in lines[0], lines
    assert "set --config.model.remat=True" in lines[0] or "not even with" in lines[0], lines
