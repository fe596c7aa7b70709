"""`python -m mobilebert_jax.plot`: the curves of any run, from its metrics.jsonl, as a real PNG of a known size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import matplotlib.image
import pytest

from limits import HANG_S
from mobilebert_jax import plot
from mobilebert_jax.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_distillation_metrics(workdir, stage_steps=5, layers=3):
    with open(workdir / "metrics.jsonl", "w") as f:
        for step in range(1, layers * stage_steps + 1):
            stage = (step - 1) // stage_steps
            record = {"step": step, "time": "t", "stage": float(stage), "loss": 3.0 / step, "learning_rate": 1e-3,
                      "mlm_accuracy": step / 100, "tokens_per_second": 1000.0 + step}
            record.update({f"layer_{i}/loss": (10.0 / (step - stage * stage_steps) if i == stage else 0.0)
                           for i in range(layers)})
            f.write(json.dumps(record) + "\n")
            if step % stage_steps == 0:
                f.write(json.dumps({"step": step, "eval/loss": 1.0, "eval/mlm_accuracy": 0.2}) + "\n")
        # A resumed run appends the last step again; the later record wins.
        f.write(json.dumps({"step": layers * stage_steps, "stage": float(layers - 1), "loss": 0.1,
                            **{f"layer_{i}/loss": 0.5 if i == layers - 1 else 0.0 for i in range(layers)}}) + "\n")


def test_reads_training_and_evaluation_records_with_layers_and_stages(tmp_path):
    _write_distillation_metrics(tmp_path)
    train, evals = plot.read_metrics(str(tmp_path))
    assert [r["step"] for r in train] == list(range(1, 16))
    assert [r["step"] for r in evals] == [5, 10, 15]
    assert train[-1]["loss"] == 0.1 and train[-1]["tokens_per_second"] == 1015.0  # later record merged over earlier
    layers = plot.layer_loss_series(train)
    assert sorted(layers) == [0, 1, 2]
    assert layers[1][0] == [6, 7, 8, 9, 10] and layers[1][1][0] == 10.0
    assert layers[2][1][-1] == 0.5
    assert plot.stage_boundaries(train) == [5, 10]
    titles = [title for title, _, _ in plot.panels(train, evals)]
    assert titles == ["loss", "accuracy and evaluation metrics", "learning rate", "tokens per second"]


def test_a_line_cut_short_is_skipped_with_a_warning(tmp_path, caplog):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2}\n{"step": 2, "lo{"step": 3, "loss": 1}\n'
                                            '{"step": 4, "loss": 0.5}\n{"loss": ')
    train, _ = plot.read_metrics(str(tmp_path))
    assert [r["step"] for r in train] == [1, 4]
    assert "metrics.jsonl, line 2: skipped" in caplog.text and "line 4: skipped" in caplog.text, caplog.text


def _assert_png(path, n_panels):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)  # decodes every pixel: a truncated file fails here
    width, height = plot.figure_pixels(n_panels)
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_distillation_run_png_has_five_panels(tmp_path):
    _write_distillation_metrics(tmp_path)
    out = plot.plot_run(str(tmp_path))
    assert out == str(tmp_path / "curves.png")
    _assert_png(out, 5)
    assert plot.figure_pixels(5) == (1200, 1050)


def test_command_line_on_a_fine_tuning_run(tmp_path):
    lines = [{"step": s, "loss": 1.0 / s, "accuracy": 0.5, "learning_rate": 1e-4, "examples_per_second": 9.0}
             for s in (10, 20, 30)] + [{"step": 30, "eval/accuracy": 0.7, "eval/loss": 0.6}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "fig.png"
    r = subprocess.run([sys.executable, "-m", "mobilebert_jax.plot", str(tmp_path), f"--out={out}"], cwd=REPO,
                       capture_output=True, text=True, timeout=HANG_S)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    _assert_png(out, 4)


def test_bad_metrics_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="metrics.jsonl: not found"):
        plot.plot_run(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"loss": 3}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl, line 2: not a metrics record"):
        plot.read_metrics(str(tmp_path))
