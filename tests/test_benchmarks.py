"""The speed benchmarks run end to end on a tiny model and print every row they promise (not their speed).

Slow (a LiteRT conversion, torch, two compiles): `python -m pytest -q -m slow tests/test_benchmarks.py`.
"""

import os
import re
import subprocess
import sys

import pytest

from tests.limits import HANG_S

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args):
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_inference_benchmark_prints_a_median_for_every_runtime_and_thread_count(tmp_path):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("torch")
    runtimes = ["litert_float32", "torch_float32", "jax_float32"]
    out = _run("inference.py", "--presets=mobilebert_test", "--seq_len=32", "--threads=2,1", "--runs=2",
               "--warmup=1", f"--runtimes={','.join(runtimes)}", f"--cache_dir={tmp_path}")
    for runtime in runtimes:
        row = re.search(rf"^mobilebert_test\s+{runtime}\s+([\d.]+)\s+([\d.]+)\s*$", out, re.M)
        assert row, f"no row for {runtime} in:\n{out}"
        assert all(float(ms) > 0 for ms in row.groups())
    assert os.path.exists(tmp_path / "mobilebert_test_s32_float32.tflite")


@pytest.mark.slow
def test_train_step_benchmark_reports_both_sides_and_the_peak_fraction():
    pytest.importorskip("torch")
    out = _run("train_step.py", "--preset=mobilebert_test", "--batch_size=2", "--seq_len=32", "--predictions=4",
               "--steps=1", "--repeats=1")
    assert "matmul peak" in out
    for side in ("mobilebert-jax (LAMB", "HF same work", "HF as-is"):
        assert side in out, out


@pytest.mark.slow
def test_step_bound_benchmark_reports_every_lever_the_matmul_floor_and_the_optimizer():
    out = _run("step_bound.py", "--preset=mobilebert_test", "--batch_size=2", "--seq_len=32", "--predictions=4",
               "--steps=1", "--repeats=1", "--dot_repeats=1",
               "--levers=explicit_weight_gradients,xla_cpu_enable_fast_math=true")
    for variant in ("default", "explicit_weight_gradients", "xla_cpu_enable_fast_math=true"):
        assert re.search(rf"^{re.escape(variant)}\s+\d+ \(\d+\.\.\d+\)\s+[\d.]+x$", out, re.M), out
    # The dots of the step are found (a format change in XLA's HLO text would make this list empty).
    shapes = re.search(r"^(\d+) matmul shapes, (\d+) dots", out, re.M)
    assert shapes and int(shapes.group(2)) > 0, out
    assert "LAMB update alone, per parameter" in out and "one flat buffer" in out


@pytest.mark.slow
def test_compile_time_benchmark_reports_both_layouts():
    out = _run("compile_time.py", "--preset=mobilebert_test", "--batch_size=2", "--seq_len=16", "--predictions=2",
               "--steps=1")
    for layout in ("unrolled", "scanned"):
        assert re.search(rf"^{layout}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+\d+ \(\d+\.\.\d+\)\s*$", out, re.M), out
    assert "scanned / unrolled: trace+lower" in out
