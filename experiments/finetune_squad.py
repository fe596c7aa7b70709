r"""Fine-tune MobileBERT on SQuAD (REFERENCE section 6): `--config=experiments/finetune_squad.py:version=1.1|2.0`.

    python -m mobilebert_jax.main --config=experiments/finetune_squad.py:version=1.1 --workdir=runs/squad11 \
        --config.init_checkpoint=path/to/mobilebert_params \
        --config.data.train_file=path/to/train-v1.1.json --config.data.dev_file=path/to/dev-v1.1.json
    python -m mobilebert_jax.evaluate --workdir=runs/squad11            # predictions.json (+ null_odds.json), EM/F1

Or from TFDS: `--config.data.source=tfds --config.data.tfds_data_dir=...` (squad/v1.1, squad/v2.0).

Recipe (REFERENCE section 6): lr 4e-5, batch 32, 5 epochs, 10% warmup then linear decay, AdamW; features of
384 tokens, doc_stride 128, questions cut to 64 tokens; decoding with n-best 20 and answers of at most 30 tokens.
The step count assumes one feature per question (87,599 / 130,319 training questions); long contexts give
about 1% more features, so the last epoch is cut short by that much.

Smoke (2 CPU cores, minutes, no checkpoint, a small model from scratch): trains on the shared dev-v1.1 file itself,
which shows the pipeline runs end to end and nothing about accuracy:

    python -m mobilebert_jax.main --config=experiments/finetune_squad.py:version=1.1,smoke --workdir=runs/squad_smoke
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
TRAIN_QUESTIONS = {"1.1": 87599, "2.0": 130319}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, "finetune_squad.py", version="", smoke=False)
    version, smoke = args.version.removeprefix("v"), args.smoke
    if version not in TRAIN_QUESTIONS:
        raise ConfigError(f"finetune_squad.py needs version=1.1 or version=2.0, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.stage = "squad_finetuning"
    c.version = version
    c.seed = 0
    c.init_checkpoint = ""
    c.model = ml_collections.ConfigDict(get_preset("mobilebert").to_dict())
    c.model_overrides = ml_collections.ConfigDict()
    c.batch_size = 32
    c.microbatches = 1
    # A FieldReference: --config.total_steps=N moves the schedule's length with it.
    c.total_steps = ml_collections.FieldReference(math.ceil(5 * TRAIN_QUESTIONS[version] / c.batch_size))
    c.log_every = 50
    squad = os.path.join(SHARED_DATA, "squad")
    c.data = ml_collections.ConfigDict(dict(
        source="json", train_file=os.path.join(squad, f"train-v{version}.json"),
        dev_file=os.path.join(squad, f"dev-v{version}.json"), tfds_data_dir="",
        # "" = the tokenizer recorded with config.init_checkpoint (an explicit different one is refused);
        # scratch_tokenizer: the tokenizer of a model trained from scratch (no init_checkpoint).
        tokenizer="", scratch_tokenizer=os.path.join(SHARED_DATA, "vocab", "bert-uncased-vocab.txt"),
        max_seq_length=384, doc_stride=128, max_query_length=64))

    c.optimizer = common.optimizer("adamw", lr=4e-5)
    c.optimizer.schedule.kind = "warmup_linear_decay"
    c.optimizer.schedule.warmup_fraction = 0.1
    c.optimizer.schedule.total_steps = c.get_ref("total_steps")

    # The smoke run skips evaluation: the dev pass over 10,833 features would dominate it.
    common.trainer_sections(c, mesh=common.DATA_PARALLEL, checkpoint_every=50 if smoke else 2000, keep_last=2,
                            enabled=not smoke, every_steps=100 if smoke else 2000, batch_size=64, n_best_size=20,
                            max_answer_length=30)
    if smoke:
        c.model = ml_collections.ConfigDict(
            get_preset("mobilebert_test", vocab_size=30522, max_position_embeddings=384).to_dict())
        c.data.train_file = c.data.dev_file = os.path.join(squad, "dev-v1.1.json")
        c.total_steps = 100
        c.batch_size = 16
        c.log_every = 10
        c.optimizer.lr = 1e-3
    return c
