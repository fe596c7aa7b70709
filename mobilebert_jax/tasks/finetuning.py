"""GLUE and SQuAD fine-tuning as `Task`s of the generic trainer (`train.trainer.train`).

The model starts from `config.init_checkpoint`: a directory written by
`convert.save_params` (a distilled or pretrained MobileBERT) or an HF
MobileBERT directory. Its backbone (`mobilebert/...`) is copied; the task head
is freshly initialized. With no checkpoint the model is trained from scratch
from `config.model` (smoke runs). `config.model_overrides` replaces fields
of the checkpoint's config (dropout for fine-tuning, the dtype).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from mobilebert_jax import flops, storage
from mobilebert_jax.config import ConfigError, MobileBertConfig
from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.modeling import MobileBertForQuestionAnswering, MobileBertForSequenceClassification
from mobilebert_jax.tasks import glue, glue_tfds, objectives, squad_data
from mobilebert_jax.tasks.batching import ShuffledBatches, padded_batches
from mobilebert_jax.train.task import Task

BACKBONE = "mobilebert"


def load_backbone(path: str) -> tuple[MobileBertConfig, dict[str, np.ndarray]]:
    """(config, flat backbone params "mobilebert/...") from a save_params or HF directory."""
    from mobilebert_jax import convert

    if not storage.path(path).is_dir():
        raise ConfigError(f"config.init_checkpoint={path!r}: not a directory")
    if storage.path(path, convert.native.PARAMS_FILE).is_file():
        model_config, params = convert.load_params(path)
    else:
        model_config, params = convert.from_hf(path)
    flat = traverse_util.flatten_dict(nn.unbox(params), sep="/")
    backbone = {k: np.asarray(v) for k, v in flat.items() if k.startswith(BACKBONE + "/")}
    if not backbone:
        raise ConfigError(f"config.init_checkpoint={path!r}: no {BACKBONE}/... parameters in it")
    return model_config, backbone


def model_config(config: ml_collections.ConfigDict) -> tuple[MobileBertConfig, Optional[dict[str, np.ndarray]]]:
    overrides = dict(config.get("model_overrides", {}) or {})
    if config.get("init_checkpoint"):
        base, backbone = load_backbone(config.init_checkpoint)
    else:
        base, backbone = MobileBertConfig.from_dict(config.model.to_dict()), None
    return (base.replace(**overrides) if overrides else base), backbone


def with_backbone(fresh_boxed: Any, backbone: Optional[dict[str, np.ndarray]]) -> Any:
    """The freshly initialized (boxed) tree with every backbone leaf taken from the checkpoint."""
    if backbone is None:
        return fresh_boxed
    flat = traverse_util.flatten_dict(fresh_boxed, sep="/")
    missing = sorted(k for k in flat if k.startswith(BACKBONE + "/") and k not in backbone)
    if missing:
        raise ConfigError(f"config.init_checkpoint lacks {len(missing)} backbone parameters of this model, "
                          f"e.g. {missing[:3]}; do the checkpoint's config and config.model_overrides match?")
    for key, box in flat.items():
        if key in backbone:
            value = box.value if isinstance(box, nn.meta.AxisMetadata) else box
            if tuple(value.shape) != backbone[key].shape:
                raise ConfigError(f"config.init_checkpoint: {key} has shape {backbone[key].shape}, the model wants "
                                  f"{tuple(value.shape)}")
            array = jnp.asarray(backbone[key], value.dtype)
            flat[key] = box.replace_boxed(array) if isinstance(box, nn.meta.AxisMetadata) else array
    return traverse_util.unflatten_dict(flat, sep="/")


def _process() -> dict[str, int]:
    return dict(process_index=jax.process_index(), process_count=jax.process_count())


def _make_task(name: str, config, model, model_cfg: MobileBertConfig, backbone, objective: objectives.Objective,
               train_arrays: dict[str, np.ndarray], eval_arrays: Optional[dict[str, np.ndarray]],
               seq_len: int, describe: str) -> Task:
    train_iterator = ShuffledBatches(train_arrays, config.batch_size, seed=config.seed, **_process())

    def init_params(rng):
        return with_backbone(model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"], backbone)

    def make_eval_iterator():
        return padded_batches(eval_arrays, config.eval.batch_size, **_process())

    # Forward + backward = 3 x the forward's matmul FLOPs.
    train_flops = 3 * flops.encoder_flops_per_token(model_cfg, seq_len) * seq_len
    return Task(
        name=name, init_params=init_params,
        make_sums_fn=lambda deterministic: objective.make_sums_fn(model, deterministic),
        train_iterator=train_iterator, make_eval_iterator=make_eval_iterator if eval_arrays is not None else None,
        tokens_per_example=seq_len, train_flops_per_example=train_flops, totals_fn=objective.totals_fn,
        loss_fn=objective.loss_fn, summarize_fn=objective.summarize_fn, progress_keys=objective.progress_keys,
        describe=lambda: f"{describe}; {train_iterator.batches_per_epoch} batches per epoch")


def glue_examples(config: ml_collections.ConfigDict, task: glue.GlueTask, split: str) -> list[glue.GlueExample]:
    data = config.data
    if data.source == "tsv":
        return glue.read_split(task, data.glue_dir, split, skip_malformed=data.get("skip_malformed", False))
    if data.source == "tfds":
        return glue_tfds.read_tfds(task, split, data.get("tfds_data_dir") or None)
    raise ConfigError(f"config.data.source={data.source!r}: choose 'tsv' or 'tfds'")


def build_glue_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
    del workdir
    task = glue.get_task(config.task)
    model_cfg, backbone = model_config(config)
    model = MobileBertForSequenceClassification(model_cfg, num_labels=task.num_labels)
    tokenizer = load_tokenizer(config.data.vocab)
    seq_len = config.data.max_seq_length
    train = glue.glue_features(task, glue_examples(config, task, "train"), tokenizer, seq_len)
    dev = glue.glue_features(task, glue_examples(config, task, task.eval_splits[0]), tokenizer, seq_len) \
        if config.eval.get("enabled", True) else None
    return _make_task(f"glue_{task.name}", config, model, model_cfg, backbone, objectives.for_glue(task.is_regression),
                      train, dev, seq_len,
                      f"GLUE {task.name}: {len(train['label']):,} training examples, sequences of {seq_len}, "
                      f"{'regression' if task.is_regression else f'{task.num_labels} classes'}")


def squad_examples(config: ml_collections.ConfigDict, split: str) -> list[squad_data.SquadExample]:
    data = config.data
    if data.source == "json":
        return squad_data.read_squad_json(data.train_file if split == "train" else data.dev_file, config.version)
    if data.source == "tfds":
        return squad_data.read_squad_tfds(config.version, "train" if split == "train" else "validation",
                                          data.get("tfds_data_dir") or None)
    raise ConfigError(f"config.data.source={data.source!r}: choose 'json' or 'tfds'")


def squad_feature_options(config: ml_collections.ConfigDict) -> dict[str, int]:
    d = config.data
    return dict(max_seq_length=d.max_seq_length, doc_stride=d.doc_stride, max_query_length=d.max_query_length)


def build_squad_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
    del workdir
    model_cfg, backbone = model_config(config)
    model = MobileBertForQuestionAnswering(model_cfg)
    tokenizer = load_tokenizer(config.data.vocab)
    options = squad_feature_options(config)
    train = squad_data.build_features(squad_examples(config, "train"), tokenizer, **options).arrays
    dev = squad_data.build_features(squad_examples(config, "dev"), tokenizer, **options).arrays \
        if config.eval.get("enabled", True) else None
    seq_len = options["max_seq_length"]
    return _make_task(f"squad_v{config.version}", config, model, model_cfg, backbone, objectives.SPANS, train, dev,
                      seq_len, f"SQuAD v{config.version}: {len(train['input_ids']):,} training features, "
                               f"sequences of {seq_len}")
