"""The pipeline's pieces that need no training: its stage configs, the held-out table, the transfer-loss plot."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax import experiment_config, optim
from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.distill import pipeline, plot, strategies
from mobilebert_jax.distill import config as distill_config
from mobilebert_jax.modeling import MobileBertForPreTraining

SCALE = pipeline.Scale()


@pytest.fixture(scope="module")
def teacher():
    return pipeline.teacher_config(SCALE, "/nonexistent/data")


def test_stage_configs_chain_and_validate(teacher):
    data = "/nonexistent/data"
    progressive = pipeline.distill_config("progressive", SCALE, teacher.model, "T", data)
    pd = pipeline.distill_config("pd", SCALE, teacher.model, "T", data, student_init="P")
    scratch = pipeline.scratch_config(SCALE, teacher.model, data)
    assert progressive.total_steps == SCALE.layers * SCALE.stage_steps
    assert pd.total_steps == SCALE.pd_steps and pd.distill.student_init == "P"
    assert scratch.total_steps == progressive.total_steps + pd.total_steps == SCALE.student_steps
    assert scratch.model.to_dict() == pd.model.to_dict() == progressive.model.to_dict()
    assert teacher.model.num_hidden_layers == progressive.model.num_hidden_layers == SCALE.layers
    for c in (teacher, progressive, pd, scratch):
        experiment_config.validate(c, jax.device_count())
        assert c.data.prepared_dir == data and c.data.max_seq_length == SCALE.seq_len
    # The progressive groups fit the student, and the copied parameters are frozen.
    student = MobileBertForPreTraining(MobileBertConfig.from_dict(progressive.model.to_dict()))
    abstract = jax.eval_shape(lambda: student.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    strategies.check_progressive_groups(progressive.optimizer, abstract, SCALE.layers, SCALE.stage_steps)
    optim.build_optimizer(progressive.optimizer, abstract)
    assert tuple(progressive.optimizer.exclude) == strategies.COPIED_FROM_TEACHER
    assert distill_config.read(progressive.distill).weights == distill_config.read(pd.distill).weights


def test_ablation_overrides_reach_config_distill(teacher):
    c = pipeline.distill_config("progressive", SCALE, teacher.model, "T", "D", weights={"attention": 0.0})
    d = distill_config.read(c.distill)
    assert d.weights["attention"] == 0.0 and d.weights["feature_map"] == 100.0
    c = pipeline.distill_config("pd", SCALE, teacher.model, "T", "D", student_init="P", alpha=1.0)
    assert distill_config.read(c.distill).alpha == 1.0


def test_markdown_table():
    rows = [dict(model="teacher", params=1234567, steps=10, mlm_accuracy=0.1234, mlm_loss=5.6789, nsp_accuracy=0.5)]
    table = pipeline.markdown_table(rows)
    assert table.splitlines()[2] == "| teacher | 1,234,567 | 10 | 12.34% | 5.679 | 50.00% |"


def _write_metrics(workdir, stage_steps=5, layers=3):
    with open(workdir / "metrics.jsonl", "w") as f:
        for step in range(1, layers * stage_steps + 1):
            stage = (step - 1) // stage_steps
            record = {"step": step, "stage": float(stage)}
            record.update({f"layer_{i}/loss": (10.0 / (step - stage * stage_steps) if i == stage else 0.0)
                           for i in range(layers)})
            f.write(json.dumps(record) + "\n")
            if step % stage_steps == 0:
                f.write(json.dumps({"step": step, "eval/loss": 1.0}) + "\n")
        # A resumed run appends the last step again; the later record wins.
        f.write(json.dumps({"step": layers * stage_steps, "stage": float(layers - 1),
                            **{f"layer_{i}/loss": 0.5 if i == layers - 1 else 0.0 for i in range(layers)}}) + "\n")


def test_plot_reads_per_layer_losses_and_stages(tmp_path):
    _write_metrics(tmp_path)
    records = plot.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == list(range(1, 16))
    series = plot.layer_loss_series(records)
    assert sorted(series) == [0, 1, 2]
    assert series[1][0] == [6, 7, 8, 9, 10] and series[1][1][0] == 10.0
    assert series[2][1][-1] == 0.5
    assert plot.stage_boundaries(records) == [5, 10]
    out = plot.plot_transfer_losses(str(tmp_path), str(tmp_path / "p.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_refuses_a_run_without_layer_losses(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    with pytest.raises(ValueError, match="not a layer-transfer run"):
        plot.plot_transfer_losses(str(tmp_path), str(tmp_path / "p.png"))


def test_scale_defaults_fit_the_positions(teacher):
    assert teacher.model.max_position_embeddings == SCALE.seq_len
    assert SCALE.max_predictions == int(np.ceil(0.15 * SCALE.seq_len))
