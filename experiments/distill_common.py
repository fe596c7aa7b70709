"""What the four distillation experiment files (distill_*.py) share: the paper's settings, and the `:smoke` scale.

Not an experiment itself (no get_config of one argument); each distill_STRATEGY.py calls
`get_config(STRATEGY, arg)` here.

Paper (REFERENCE sections 3-5): MobileBERT student, IB-BERT_LARGE teacher, LAMB at
1.5e-3, global batch 2048 x 512 tokens, at most 20 masked predictions per
sequence, 24 x 10K progressive steps (240K) then 500K PD steps (740K).

Smoke: the teacher of `teacher_ib_bert_large.py:smoke` (read from that file, so the two stay in step) and
a MobileBERT-shaped student of the same inter-block width on the embedded corpus, a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import os

import ml_collections

from mobilebert_jax.config import get_preset
from mobilebert_jax.distill import config as distill_config
from mobilebert_jax.distill import strategies
from mobilebert_jax.experiment_config import load_module

HERE = os.path.dirname(__file__)
common = load_module(os.path.join(HERE, "common.py"))

PAPER_PHASE_STEPS = 10_000  # x 24 layers = 240K transfer steps
PAPER_TRANSFER_STEPS = 240_000
PAPER_PD_STEPS = 500_000
PAPER_WARMUP_STEPS = 10_000
SMOKE_PHASE_STEPS = 50
SMOKE_PD_STEPS = 200
# Default workdirs the smoke commands chain through.
SMOKE_TEACHER_WORKDIR = os.path.join("runs", "teacher_smoke")
SMOKE_WORKDIRS = {s: os.path.join("runs", f"distill_{s}_smoke") for s in distill_config.STRATEGIES}


def distill(strategy: str) -> ml_collections.ConfigDict:
    """config.distill (fields: mobilebert_jax/distill/config.py) at the paper's and TF1's settings."""
    return ml_collections.ConfigDict(dict(
        strategy=strategy,
        teacher="",
        student_init="",
        copy_from_teacher=True,
        phase_steps=PAPER_PHASE_STEPS,
        last_phase=ml_collections.config_dict.placeholder(int),
        lower_layer_multiplier=0.1,  # TF1: the layers below the current phase at 0.1 of its rate
        train_embedding_norm_in_transfer=False,  # TF1: rate 0 outside the encoder layers until PD
        layer_loss_scaling="tf1",  # each layer's transfer loss divided by the number of layers
        layer_map=(),
        include_padding=False,
        student_dropout=False,  # TF1 distills without the student's dropout
        alpha=0.5,  # PD's target: half one-hot, half the teacher's distribution
        temperature=1.0,
        # The paper's loss weights (REFERENCE section 3): FMT 100, mean 5000, variance 5, AT 1; PD's MLM and NSP 1.
        weights=dict(feature_map=100.0, mean=5000.0, variance=5.0, attention=1.0, mlm=1.0, nsp=1.0),
        teacher_dtype="float32",
    ))


def smoke_teacher_model() -> ml_collections.ConfigDict:
    teacher = load_module(os.path.join(HERE, "teacher_ib_bert_large.py"))
    return ml_collections.ConfigDict(teacher.get_config("smoke").model.to_dict())


def smoke_student_model(teacher: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """MobileBERT's structure (bottlenecks, shared Q/K input, 4 FFNs, NoNorm, relu) at the teacher's widths."""
    student = get_preset("mobilebert", vocab_size=teacher.vocab_size, hidden_size=teacher.hidden_size,
                         embedding_size=teacher.embedding_size, max_position_embeddings=teacher.max_position_embeddings,
                         num_hidden_layers=teacher.num_hidden_layers, num_attention_heads=teacher.num_attention_heads,
                         intra_bottleneck_size=teacher.hidden_size // 4, intermediate_size=teacher.hidden_size)
    return ml_collections.ConfigDict(student.to_dict())


def _pd_schedule(c: ml_collections.ConfigDict, warmup: int) -> None:
    """Warm up to lr, then decay linearly to lr / 1e4 at total_steps (the PD recipe)."""
    c.optimizer.schedule.kind = "warmup_linear_decay"
    c.optimizer.schedule.warmup_steps = warmup
    c.optimizer.schedule.total_steps = c.get_ref("total_steps")
    c.optimizer.schedule.end_lr = c.optimizer.get_ref("lr") * 1e-4


def get_config(strategy: str, arg: str | None) -> ml_collections.ConfigDict:
    smoke = common.parse_arg(arg, f"distill_{strategy}.py", smoke=False).smoke
    c = ml_collections.ConfigDict()
    c.stage = "distillation"
    c.seed = 0
    c.microbatches = 1
    c.log_every = 100
    if smoke:
        c.teacher_model = smoke_teacher_model()
        c.model = smoke_student_model(c.teacher_model)
    else:
        c.teacher_model = ml_collections.ConfigDict(get_preset("ib_bert_large", dtype="bfloat16").to_dict())
        c.model = ml_collections.ConfigDict(get_preset("mobilebert", dtype="bfloat16", remat=True).to_dict())

    c.distill = distill(strategy)
    c.distill.teacher = SMOKE_TEACHER_WORKDIR if smoke else ""
    c.distill.phase_steps = SMOKE_PHASE_STEPS if smoke else PAPER_PHASE_STEPS
    if strategy == "pd":
        c.distill.student_init = SMOKE_WORKDIRS["progressive"] if smoke else ""

    c.data = common.pretraining_data(max_seq_length=512, max_predictions_per_seq=20)
    c.batch_size = 2048
    c.optimizer = common.optimizer("lamb", lr=1.5e-3)

    num_layers = c.model.num_hidden_layers
    transfer_steps = num_layers * c.distill.phase_steps if smoke else PAPER_TRANSFER_STEPS
    pd_steps = SMOKE_PD_STEPS if smoke else PAPER_PD_STEPS
    if strategy == "progressive":
        c.distill.last_phase = num_layers - 1
        c.total_steps = (c.distill.get_ref("last_phase") + 1) * c.distill.get_ref("phase_steps")
        # The per-phase warm-up lives in the layer multipliers (3 * bg(t)); the base rate is constant.
    else:
        c.total_steps = {"joint": transfer_steps, "auxiliary": transfer_steps + pd_steps, "pd": pd_steps}[strategy]
        _pd_schedule(c, warmup=max(1, c.total_steps // 50) if smoke else PAPER_WARMUP_STEPS)
    strategies.optimizer_settings(c, strategy, num_layers)

    # Paper scale: fully sharded (fsdp over every core) and a bfloat16 frozen teacher, each core holding 1/N of the
    # student's state and of the teacher for the same FLOPs; why, measured, in docs/scale_out.md. Smoke: data parallel.
    if not smoke:
        common.trainer_sections(c, mesh=common.FSDP, checkpoint_every=5_000, keep_last=3,
                                # 5,120 held-out sequences in batches of 1,024, which the 512 devices of a
                                # v3-256 or of two v5e-256 slices divide (tools.preflight checks it).
                                every_steps=c.distill.phase_steps, batch_size=1024, num_batches=5)
        c.distill.teacher_dtype = "bfloat16"
    else:
        common.trainer_sections(c, mesh=common.DATA_PARALLEL, checkpoint_every=50, keep_last=3, every_steps=50,
                                batch_size=32, num_batches=4)
        c.distill.teacher_dtype = "float32"
        c.batch_size = 16
        c.log_every = 10
        common.embedded_corpus(c.data)
        c.data.max_seq_length = 128
        c.optimizer.lr = 2e-3
    return c
