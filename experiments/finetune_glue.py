r"""Fine-tune MobileBERT on one GLUE task (REFERENCE section 6): `--config=experiments/finetune_glue.py:task=NAME`.

    python -m mobilebert_jax.main --config=experiments/finetune_glue.py:task=rte --workdir=runs/rte \
        --config.init_checkpoint=path/to/mobilebert_params   # convert.save_params or HF directory
    python -m mobilebert_jax.evaluate --workdir=runs/rte            # official metrics + GLUE test submission

NAME: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli. Data: the GLUE TSV
download (`--config.data.glue_dir`, default ../shared/data/glue) or TFDS
(`--config.data.source=tfds --config.data.tfds_data_dir=...`).

Smoke (2 CPU cores, a few minutes, no checkpoint: a small model from scratch on the shared RTE/SST-2 files):

    python -m mobilebert_jax.main --config=experiments/finetune_glue.py:task=sst2,smoke --workdir=runs/sst2_smoke

Recipe: AdamW (eps 1e-6, weight decay 0.01 except norms and biases), 10% warmup then linear decay, dropout 0.1
on the pooled [CLS] vector (REFERENCE section 6). The paper searched batch {16, 32, 48}, lr (1-10)e-5 and 2-10
epochs per task without publishing the winners; the defaults below (batch 32, lr 5e-5; 3 epochs on the
large tasks, 5 on the small ones) are this project's starting point, not the paper's numbers.
"""

from __future__ import annotations

import math
import os

import ml_collections

from mobilebert_jax.config import get_preset
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.experiment_config import load_module

common = load_module(os.path.join(os.path.dirname(__file__), "common.py"))
SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
# Training examples in the GLUE release (sets the step count before any data is read).
TRAIN_SIZES = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "qqp": 363846, "mnli": 392702,
               "qnli": 104743, "rte": 2490, "wnli": 635}
LARGE_TASKS = ("sst2", "qqp", "mnli", "qnli")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, "finetune_glue.py", task="", smoke=False)
    task, smoke = args.task.lower().replace("-", ""), args.smoke
    if task not in TRAIN_SIZES:
        raise ConfigError(f"finetune_glue.py needs task=NAME with NAME one of {sorted(TRAIN_SIZES)}, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.stage = "glue_finetuning"
    c.task = task
    c.seed = 0
    c.init_checkpoint = ""  # required for real runs; empty trains config.model from scratch
    c.model = ml_collections.ConfigDict(get_preset("mobilebert").to_dict())
    c.model_overrides = ml_collections.ConfigDict(dict(classifier_dropout=0.1))
    c.batch_size = 32
    c.microbatches = 1
    epochs = 3 if task in LARGE_TASKS else 5
    # A FieldReference: --config.total_steps=N moves the schedule's length with it.
    c.total_steps = ml_collections.FieldReference(math.ceil(epochs * TRAIN_SIZES[task] / c.batch_size))
    c.log_every = 50

    c.data = ml_collections.ConfigDict(dict(
        source="tsv", glue_dir=os.path.join(SHARED_DATA, "glue"), tfds_data_dir="", skip_malformed=task == "qqp",
        # "" = the tokenizer recorded with config.init_checkpoint (an explicit different one is refused);
        # scratch_tokenizer: the tokenizer of a model trained from scratch (no init_checkpoint).
        tokenizer="", scratch_tokenizer=os.path.join(SHARED_DATA, "vocab", "bert-uncased-vocab.txt"), max_seq_length=128))

    c.optimizer = common.optimizer("adamw", lr=5e-5)
    c.optimizer.schedule.kind = "warmup_linear_decay"
    c.optimizer.schedule.warmup_fraction = 0.1
    c.optimizer.schedule.total_steps = c.get_ref("total_steps")

    every = 100 if smoke else 1000
    common.trainer_sections(c, mesh=common.DATA_PARALLEL, checkpoint_every=every, keep_last=2, enabled=True,
                            every_steps=every, batch_size=64)
    if smoke:
        c.model = ml_collections.ConfigDict(
            get_preset("mobilebert_test", vocab_size=30522, max_position_embeddings=128).to_dict())
        c.data.max_seq_length = 64
        c.total_steps = 200
        c.log_every = 20
        c.optimizer.lr = 1e-3
    return c
