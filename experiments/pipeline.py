"""The README's main job: the whole MobileBERT recipe at small scale on the embedded corpus, its settings.

    python -m mobilebert_jax.main        # runs it (mobilebert_jax/distill/pipeline.py) in runs/pipeline

Not an experiment of one stage (no get_config): `SCALE` is the job's size (the fields of
`mobilebert_jax.distill.pipeline.Scale`, each a flag of main: `--teacher_steps=...`), and the functions below
turn a `Scale` into the four stages' configs, each the smoke experiment of that stage (experiments/*.py:smoke)
at this scale: the teacher, a distillation stage (progressive, pd; the ablation's joint and auxiliary), and the
student from scratch. The values are chosen for about ten minutes on two free CPU cores; docs/distillation.md
says why each one is what it is.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from mobilebert_jax import experiment_config
from mobilebert_jax.distill import strategies

HERE = os.path.dirname(os.path.abspath(__file__))

SCALE = dict(
    seq_len=64,
    max_predictions=10,  # 15% of 64
    held_out_fraction=0.05,  # about 400 held-out sequences
    batch_size=32,
    layers=4,  # teacher and student
    # The teacher smoke model's inner widths (256 / 512) learned no faster per step at this length and cost
    # three times as much; at 128 the "inverted" bottleneck is as wide as the 128-d inter-block features.
    teacher_intra_bottleneck_size=128,
    teacher_intermediate_size=256,
    teacher_steps=1000,
    stage_steps=100,  # progressive: layers x stage_steps transfer steps
    pd_steps=400,
    optimizer="adamw",
    teacher_lr=1e-3,
    transfer_lr=1e-3,  # the base rate; progressive multiplies it by 3 bg(t) at the current layer
    student_lr=1e-3,  # PD and the scratch student
    eval_batch_size=64,
)


def _smoke_experiment(name: str) -> ml_collections.ConfigDict:
    c = experiment_config.load_experiment(os.path.join(HERE, name) + ":smoke")
    c.unlock()
    return c


def _data(c: ml_collections.ConfigDict, scale, data_dir: str) -> None:
    c.data.prepared_dir = data_dir
    c.data.max_seq_length = scale.seq_len
    c.data.max_predictions_per_seq = scale.max_predictions
    c.data.held_out_fraction = scale.held_out_fraction
    c.batch_size = scale.batch_size
    c.eval.batch_size = scale.eval_batch_size
    c.eval.num_batches = 2


def _optimizer(c: ml_collections.ConfigDict, scale, lr: float, total_steps: int, warmup: bool = True) -> None:
    c.optimizer.name = scale.optimizer
    c.optimizer.lr = lr
    # Adam's first steps without bias correction are tiny; at a few hundred steps that matters.
    c.optimizer.bias_correction = scale.optimizer == "adamw"
    if warmup:
        c.optimizer.schedule.kind = "warmup_linear_decay"
        c.optimizer.schedule.warmup_steps = max(1, total_steps // 20)
        c.optimizer.schedule.total_steps = total_steps
        c.optimizer.schedule.end_lr = 0.0


def _no_dropout(model: ml_collections.ConfigDict) -> None:
    # A few hundred steps over 250K tokens underfit; dropout would only slow every model down.
    model.hidden_dropout_prob = 0.0
    model.attention_probs_dropout_prob = 0.0


def teacher_config(scale, data_dir: str) -> ml_collections.ConfigDict:
    c = _smoke_experiment("teacher_ib_bert_large.py").copy_and_resolve_references()
    c.unlock()
    c.model.num_hidden_layers = scale.layers
    c.model.intra_bottleneck_size = scale.teacher_intra_bottleneck_size
    c.model.intermediate_size = scale.teacher_intermediate_size
    _no_dropout(c.model)
    c.model.max_position_embeddings = scale.seq_len
    c.total_steps = scale.teacher_steps
    c.log_every = 50
    c.eval.every_steps = scale.teacher_steps
    c.checkpoint.every_steps = 200
    _data(c, scale, data_dir)
    _optimizer(c, scale, scale.teacher_lr, scale.teacher_steps)
    return c


def student_model(teacher: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    distill_common = experiment_config.load_module(os.path.join(HERE, "distill_common.py"))
    student = distill_common.smoke_student_model(teacher)
    _no_dropout(student)
    return student


def distill_config(strategy: str, scale, teacher: ml_collections.ConfigDict, teacher_dir: str,
                   data_dir: str, student_init: str = "", **distill: Any) -> ml_collections.ConfigDict:
    """A distillation stage at this scale; `distill` overrides fields of config.distill (ablations)."""
    c = _smoke_experiment(f"distill_{strategy}.py")
    c.teacher_model = ml_collections.ConfigDict(teacher.to_dict())
    c.model = student_model(teacher)
    c.distill.teacher = teacher_dir
    c.distill.student_init = student_init
    c.distill.stage_steps = scale.stage_steps
    for k, v in distill.items():
        if k == "weights":
            c.distill.weights.update(v)
        else:
            c.distill[k] = v
    c.optimizer.groups = ml_collections.ConfigDict()
    c.optimizer.exclude = ()
    strategies.optimizer_settings(c, strategy, scale.layers)
    steps = {"progressive": scale.transfer_steps, "joint": scale.transfer_steps, "auxiliary": scale.student_steps,
             "pd": scale.pd_steps}[strategy]
    if strategy == "progressive":
        c.distill.last_stage = scale.layers - 1
        _optimizer(c, scale, scale.transfer_lr, steps, warmup=False)
    else:
        c.total_steps = steps
        _optimizer(c, scale, scale.transfer_lr if strategy == "joint" else scale.student_lr, steps)
    c.log_every = 20  # divides stage_steps (the plot's stage boundaries); about 25 lines a stage on screen
    c.eval.every_steps = scale.stage_steps
    c.checkpoint.every_steps = 200
    _data(c, scale, data_dir)
    return c


def scratch_config(scale, teacher: ml_collections.ConfigDict, data_dir: str) -> ml_collections.ConfigDict:
    """The student trained with plain MLM + NSP for as many steps as transfer and PD together."""
    c = teacher_config(scale, data_dir)
    c.stage = "pretraining"
    c.model = student_model(teacher)
    c.total_steps = scale.student_steps
    c.eval.every_steps = scale.student_steps
    _optimizer(c, scale, scale.student_lr, scale.student_steps)
    return c
