"""The MLM + NSP pretraining task (the IB-BERT teacher, or a student from scratch)."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
from jax.experimental import multihost_utils

from mobilebert_jax import flops
from mobilebert_jax.config import ConfigError, MobileBertConfig
from mobilebert_jax.modeling import MobileBertForPreTraining
from mobilebert_jax.train.step import pretraining_sums_fn
from mobilebert_jax.train.task import StatefulIterator, Task


def model_config(config: ml_collections.ConfigDict) -> MobileBertConfig:
    return MobileBertConfig.from_dict(config.model.to_dict())


def prepared_data_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """`config.data` with its prepared_dir resolved and the data prepared (once, by process 0)."""
    from mobilebert_jax.data.prepare import prepare

    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    if not data_cfg.prepared_dir:
        data_cfg.prepared_dir = os.path.join(workdir, "data")
    if jax.process_index() == 0:
        prepare(data_cfg, data_cfg.prepared_dir)  # logs what it prepared or reused
    multihost_utils.sync_global_devices("prepared data")
    return data_cfg


@dataclasses.dataclass
class PretrainingData:
    train_iterator: StatefulIterator
    make_eval_iterator: Optional[Callable[[], Iterator[dict]]]
    max_seq_length: int
    max_predictions_per_seq: int


def pretraining_data(config: ml_collections.ConfigDict, workdir: str) -> PretrainingData:
    """The MLM + NSP loaders over `config.data` (prepared on first use), this process's share of each batch."""
    from mobilebert_jax.data.loader import make_pretraining_loader

    data_cfg = prepared_data_config(config, workdir)
    process = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train_iterator = make_pretraining_loader(data_cfg, split="train", global_batch_size=config.batch_size,
                                             seed=config.seed, **process)
    eval_batches = config.eval.num_batches

    def make_eval_iterator():
        loader = make_pretraining_loader(data_cfg, split="eval", global_batch_size=config.eval.batch_size,
                                         seed=config.seed, num_epochs=None, **process)
        return (next(loader) for _ in range(eval_batches))

    return PretrainingData(train_iterator, make_eval_iterator if eval_batches > 0 else None,
                           data_cfg.max_seq_length, data_cfg.max_predictions_per_seq)


def build_pretraining_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
    from mobilebert_jax.data.tokenizers import load_tokenizer

    c = model_config(config)
    vocab = load_tokenizer(config.data.tokenizer).vocab_size
    if vocab > c.vocab_size:
        # JAX clamps out-of-range gather indices, so this would train silently on wrong embeddings.
        raise ConfigError(f"config.data.tokenizer={config.data.tokenizer!r} has {vocab} tokens but "
                          f"config.model.vocab_size={c.vocab_size}; set --config.model.vocab_size={vocab}")
    data = pretraining_data(config, workdir)
    seq_len, predictions = data.max_seq_length, data.max_predictions_per_seq
    if seq_len > c.max_position_embeddings:
        raise ConfigError(f"config.data.max_seq_length={seq_len} exceeds config.model.max_position_embeddings="
                          f"{c.max_position_embeddings}")
    model = MobileBertForPreTraining(c)

    def init_params(rng):
        ids = jnp.zeros((1, seq_len), jnp.int32)
        return model.init(rng, ids)["params"]

    return Task(
        name="pretraining",
        init_params=init_params,
        make_sums_fn=lambda deterministic: pretraining_sums_fn(model, deterministic),
        train_iterator=data.train_iterator,
        make_eval_iterator=data.make_eval_iterator,
        tokens_per_example=seq_len,
        train_flops_per_example=flops.pretraining_train_flops_per_sequence(c, seq_len, predictions),
        describe=lambda: f"{config.get('model_preset', 'custom')} model, {flops.parameter_count(c):,} backbone "
                         f"parameters, sequences of {seq_len}",
    )
