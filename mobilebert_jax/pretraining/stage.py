"""The MLM + NSP pretraining stage (the IB-BERT teacher, or a student from scratch)."""

from __future__ import annotations

import os
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax.experimental import multihost_utils

from mobilebert_jax import flops
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.data import config as data_config
from mobilebert_jax.modeling import MobileBertForPreTraining
from mobilebert_jax.pretraining.objective import PretrainingObjective
from mobilebert_jax.train.stage import Spec, Stage, StatefulIterator, StageIO


def model_config(config: ml_collections.ConfigDict) -> MobileBertConfig:
    return MobileBertConfig.from_dict(config.model.to_dict())


def prepared_data_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """`config.data` with its prepared_dir resolved and the data prepared (once, by process 0)."""
    from mobilebert_jax.data.prepare import prepare

    data_cfg = data_config.read(config.data)  # a copy, the optional fields filled in
    if not data_cfg.prepared_dir:
        data_cfg.prepared_dir = os.path.join(workdir, "data")
    if jax.process_index() == 0:
        prepare(data_cfg, data_cfg.prepared_dir)  # logs what it prepared or reused; a damaged shard is redone
    multihost_utils.sync_global_devices("prepared data")
    return data_cfg


def pretraining_example(seq_len: int, predictions: int) -> dict[str, jax.ShapeDtypeStruct]:
    """One MLM + NSP example as the loader yields it (data/masking.py's FEATURE_DTYPES), without its batch axis."""
    from mobilebert_jax.data.masking import FEATURE_DTYPES

    length = {"input_ids": seq_len, "input_mask": seq_len, "segment_ids": seq_len, "masked_lm_positions": predictions,
              "masked_lm_ids": predictions, "masked_lm_weights": predictions}
    return {k: jax.ShapeDtypeStruct((length[k],) if k in length else (), jnp.dtype(dtype))
            for k, dtype in FEATURE_DTYPES.items()}


def check_sequence_length(seq_len: int, model: MobileBertConfig, field: str) -> None:
    """`field` names the model's config (config.model, config.teacher_model)."""
    if seq_len > model.max_position_embeddings:
        raise ConfigError(f"config.data.max_seq_length={seq_len} exceeds {field}.max_position_embeddings="
                          f"{model.max_position_embeddings}")


def check_vocabulary(config: ml_collections.ConfigDict, model: MobileBertConfig) -> None:
    """The tokenizer (read from disk) fits the model's embedding table."""
    from mobilebert_jax.data.tokenizers import load_tokenizer

    vocab = load_tokenizer(config.data.tokenizer).vocab_size
    if vocab > model.vocab_size:
        # JAX clamps out-of-range gather indices, so this would train silently on wrong embeddings.
        raise ConfigError(f"config.data.tokenizer={config.data.tokenizer!r} has {vocab} tokens but "
                          f"config.model.vocab_size={model.vocab_size}; set --config.model.vocab_size={vocab}")


def pretraining_data(config: ml_collections.ConfigDict, workdir: str) -> tuple[StatefulIterator, Optional[Callable]]:
    """(train iterator, eval-batches factory or None): the MLM + NSP loaders over `config.data` (prepared on first
    use), this process's share of each batch."""
    from mobilebert_jax.data.loader import make_pretraining_loader

    data_cfg = prepared_data_config(config, workdir)
    process = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train_iterator = make_pretraining_loader(data_cfg, split="train", global_batch_size=config.batch_size,
                                             seed=config.seed, **process)
    eval_batches = config.eval.num_batches

    def make_eval_iterator() -> Iterator[dict]:
        loader = make_pretraining_loader(data_cfg, split="eval", global_batch_size=config.eval.batch_size,
                                         seed=config.seed, num_epochs=None, **process)
        return (next(loader) for _ in range(eval_batches))

    return train_iterator, make_eval_iterator if eval_batches > 0 else None


def spec(config: ml_collections.ConfigDict) -> Spec:
    c = model_config(config)
    data = data_config.read(config.data)
    seq_len, predictions = data.max_seq_length, data.max_predictions_per_seq
    check_sequence_length(seq_len, c, "config.model")
    model = MobileBertForPreTraining(c)
    return Spec(
        name="pretraining",
        objective=PretrainingObjective(model),
        init_params=lambda rng: model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"],
        example=pretraining_example(seq_len, predictions),
        tokens_per_example=seq_len,
        train_flops_per_example=flops.pretraining_train_flops_per_sequence(c, seq_len, predictions),
        models=(c,),
    )


def read(config: ml_collections.ConfigDict, workdir: str, stage_spec: Spec) -> StageIO:
    c = model_config(config)
    check_vocabulary(config, c)
    train_iterator, eval_batches = pretraining_data(config, workdir)
    return StageIO(spec=stage_spec, train_iterator=train_iterator, eval_batches=eval_batches,
                describe=f"{flops.parameter_count(c):,} backbone parameters, {c.num_hidden_layers} layers of "
                         f"{c.hidden_size}, sequences of {config.data.max_seq_length}")


PRETRAINING = Stage(spec=spec, read=read, sections=dict(data=data_config.SCHEMA))
