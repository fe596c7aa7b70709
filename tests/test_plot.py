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


def _write_distillation_metrics(workdir, phase_steps=5, layers=3):
    """A progressive run as the trainer logs it: ungated distances of every layer, the gated layer loss, the
    per-layer learning-rate multipliers, an evaluation at the end of each phase."""
    with open(workdir / "metrics.jsonl", "w") as f:
        for step in range(1, layers * phase_steps + 1):
            phase = (step - 1) // phase_steps
            t = step - phase * phase_steps
            record = {"step": step, "time": "t", "phase": float(phase), "loss": 3.0 / step, "learning_rate": 1e-3,
                      "transfer_loss": 3.0 / step, "tokens_per_second": 1000.0 + step}
            for i in range(layers):
                distance = 10.0 / t if i == phase else (0.5 if i < phase else 20.0)
                record.update({f"layer_{i}/{k}": distance * w for k, w in
                               (("feature_map", 1.0), ("mean", 1e-4), ("variance", 2.0), ("attention", 0.1))})
                record[f"layer_{i}/loss"] = distance if i == phase else 0.0
                record[f"lr_multiplier/layer_{i}"] = 3.0 if i == phase else (0.3 if i < phase else 0.0)
            f.write(json.dumps(record) + "\n")
            if step % phase_steps == 0:
                f.write(json.dumps({"step": step, "eval/loss": 1.0, "eval/mlm_accuracy": 0.2,
                                    "eval/nsp_accuracy": 0.6, "eval/layer_0/feature_map": 0.5}) + "\n")
        # A resumed run appends the last step again; the later record wins.
        f.write(json.dumps({"step": layers * phase_steps, "phase": float(layers - 1), "loss": 0.1}) + "\n")


def test_reads_training_and_evaluation_records_with_layers_and_phases(tmp_path):
    _write_distillation_metrics(tmp_path)
    train, evals = plot.read_metrics(str(tmp_path))
    assert [r["step"] for r in train] == list(range(1, 16))
    assert [r["step"] for r in evals] == [5, 10, 15]
    assert train[-1]["loss"] == 0.1 and train[-1]["tokens_per_second"] == 1015.0  # later record merged over earlier
    assert plot.phase_boundaries(train) == [5, 10]
    # The standard layout leaves the per-layer families out.
    panels = plot.standard_panels(train, evals)
    assert [p.title for p in panels] == ["loss", "accuracy and evaluation metrics", "learning rate",
                                         "tokens per second"]
    assert all("/" not in line.key[len("eval/"):] for p in panels for line in p.lines)


def test_layer_transfer_layout_heat_maps_and_learning_rates(tmp_path):
    _write_distillation_metrics(tmp_path)
    train, evals = plot.read_metrics(str(tmp_path))
    panels = plot.layer_transfer_panels(train, evals)
    assert [p.title.split(" ")[0] for p in panels] == ["loss", "accuracy", "feature", "mean", "variance",
                                                          "attention", "effective", "tokens"]
    fm = panels[2].heat
    assert fm.steps == list(range(1, 16)) and len(fm.rows) == 3 and fm.rows[0][4] == 2.0 and fm.rows[2][0] == 20.0
    assert panels[2].boundaries == (5, 10)
    lr = panels[6]
    assert [line.label for line in lr.lines] == ["layer 0", "layer 1", "layer 2"] and lr.heat is None
    assert plot.series(train, "lr_multiplier/layer_1", "learning_rate")[1][5] == pytest.approx(3e-3)
    assert all(len(p.lines) <= plot.MAX_SERIES for p in panels)


def test_many_layers_make_the_learning_rates_a_heat_map(tmp_path):
    _write_distillation_metrics(tmp_path, phase_steps=2, layers=12)
    train, evals = plot.read_metrics(str(tmp_path))
    lr = plot.layer_transfer_panels(train, evals)[6]
    assert not lr.lines and len(lr.heat.rows) == 12 and lr.heat.rows[3][6] == pytest.approx(3e-3)
    out = plot.plot_run(str(tmp_path), layout="layer_transfer")
    _assert_png(out, 8)


def test_the_recorded_config_chooses_the_layout(tmp_path):
    from mobilebert_jax import experiment_config
    from mobilebert_jax.experiments import pipeline

    job, scale = pipeline, pipeline.default_scale()
    teacher = job.teacher_config(scale, "D")
    assert plot.recorded_layout(str(tmp_path)) == "standard"  # no config.json
    cases = {"progressive": job.distill_config("progressive", scale, teacher.model, "T", "D"),
             "pd": job.distill_config("pd", scale, teacher.model, "T", "D", student_init="P"), "teacher": teacher}
    for name, config in cases.items():
        experiment_config.save_resolved(config, str(tmp_path / name))
    assert [plot.recorded_layout(str(tmp_path / name)) for name in cases] == ["layer_transfer", "standard", "standard"]
    _write_distillation_metrics(tmp_path / "progressive")
    _assert_png(plot.plot_run(str(tmp_path / "progressive")), 8)  # the layout its recorded config chooses


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
    # The panel count, read back: with an odd count the last row's right half is empty, else it is drawn on.
    cell = image[height - int(plot.PANEL_INCHES[1] * plot.DPI) + 40:height - 10, width // 2 + 10:width - 10, :3]
    assert (cell.min() == 1.0) == (n_panels % 2 == 1)


def test_distillation_run_png_has_eight_panels(tmp_path):
    _write_distillation_metrics(tmp_path)
    out = plot.plot_run(str(tmp_path), layout="layer_transfer")
    assert out == str(tmp_path / "curves.png")
    _assert_png(out, 8)
    assert plot.figure_pixels(8) == (1200, 1400)


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
