"""The pipeline's pieces that need no training: its stage configs and the held-out table (plots: test_plot.py)."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax import experiment_config, optim
from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.distill import strategies
from mobilebert_jax.experiments import pipeline
from mobilebert_jax.distill import config as distill_config
from mobilebert_jax.modeling import MobileBertForPreTraining

SCALE = pipeline.default_scale()
JOB = pipeline  # experiments/pipeline.py: each stage's config at the README job's scale


@pytest.fixture(scope="module")
def teacher():
    return JOB.teacher_config(SCALE, "/nonexistent/data")


def test_stage_configs_chain_and_validate(teacher):
    data = "/nonexistent/data"
    progressive = JOB.distill_config("progressive", SCALE, teacher.model, "T", data)
    pd = JOB.distill_config("pd", SCALE, teacher.model, "T", data, student_init="P")
    scratch = JOB.scratch_config(SCALE, teacher.model, data)
    assert progressive.total_steps == SCALE.layers * SCALE.phase_steps
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
    strategies.check_progressive_groups(progressive.optimizer, abstract, SCALE.layers, SCALE.phase_steps)
    optim.build_optimizer(progressive.optimizer, abstract)
    assert tuple(progressive.optimizer.exclude) == strategies.COPIED_FROM_TEACHER
    assert distill_config.read(progressive.distill).weights == distill_config.read(pd.distill).weights
    # TF1's defaults: layer losses divided by the layer count, the embedding norm frozen until PD.
    d = distill_config.read(progressive.distill)
    assert d.layer_loss_scaling == "tf1" and not d.train_embedding_norm_in_transfer
    strategies.check_embedding_norm(progressive.optimizer, abstract, train=False)


def test_ablation_overrides_reach_config_distill(teacher):
    c = JOB.distill_config("progressive", SCALE, teacher.model, "T", "D", weights={"attention": 0.0})
    d = distill_config.read(c.distill)
    assert d.weights["attention"] == 0.0 and d.weights["feature_map"] == 100.0
    c = JOB.distill_config("pd", SCALE, teacher.model, "T", "D", student_init="P", alpha=1.0)
    assert distill_config.read(c.distill).alpha == 1.0


def test_markdown_table():
    rows = [dict(model="teacher", params=1234567, steps=10, mlm_accuracy=0.1234, mlm_loss=5.6789, nsp_accuracy=0.5)]
    table = pipeline.markdown_table(rows)
    assert table.splitlines()[2] == "| teacher | 1,234,567 | 10 | 12.34% | 5.679 | 50.00% |"


def test_scale_defaults_fit_the_positions(teacher):
    assert teacher.model.max_position_embeddings == SCALE.seq_len
    assert SCALE.max_predictions == int(np.ceil(0.15 * SCALE.seq_len))


def test_a_signal_during_a_stage_stops_the_pipeline_before_the_next_stage_and_the_table(tmp_path, monkeypatch):
    import threading

    from mobilebert_jax import preemption
    from mobilebert_jax.train import trainer

    monkeypatch.setattr(preemption, "STOP", threading.Event())
    trained = []

    def train(config, workdir, stage):  # the teacher stage gets SIGTERM: it saves and returns early
        trained.append(workdir)
        preemption.STOP.set()

    monkeypatch.setattr(trainer, "train", train)
    assert pipeline.run(str(tmp_path)) == []
    assert trained == [str(tmp_path / "teacher")]
    assert not (tmp_path / "results.md").exists()


def test_results_keep_the_run_that_trained(tmp_path):
    import json

    names = pipeline.STAGE_NAMES
    first = {"teacher pretraining": 100.0, "total": 1856.0}
    runs, kept = pipeline._runs(str(tmp_path), first, [], 1, "cpu")
    assert kept is runs[0] and runs[0]["trained"] == list(names)
    assert pipeline._wall_time(runs, kept) == "Wall time: teacher pretraining 100s, total 1856s on 1 cpu device(s)."
    (tmp_path / "results.json").write_text(json.dumps(dict(timings=kept["timings"], runs=runs)))
    # A rerun that only resumes keeps the first run's timings and says so.
    runs, kept = pipeline._runs(str(tmp_path), {"total": 50.0}, list(names), 1, "cpu")
    assert kept is runs[0] and kept["timings"]["total"] == 1856.0 and runs[1]["trained"] == []
    text = pipeline._wall_time(runs, kept)
    assert text.startswith("Wall time: teacher pretraining 100s, total 1856s (the run that trained the models")
    assert "This run resumed every stage (already trained), trained nothing and re-evaluated: total 50s." in text
    (tmp_path / "results.json").write_text(json.dumps(dict(timings=kept["timings"], runs=runs)))
    # A rerun that trains more (a stage deleted, say) is the record now, and lists the earlier runs.
    runs, kept = pipeline._runs(str(tmp_path), {"total": 300.0}, list(names[:3]), 1, "cpu")
    assert kept is runs[2] and kept["trained"] == [names[3]]
    text = pipeline._wall_time(runs, kept)
    assert text.startswith(f"Wall time of this run, which resumed {', '.join(names[:3])} (already trained) and "
                           f"trained {names[3]}: total 300s")
    assert text.count("Earlier run (finished ") == 2 and "total 1856s" in text
