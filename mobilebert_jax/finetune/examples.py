"""A fine-tuning run's examples, from the source its config names (TSV/JSON files or TFDS)."""

from __future__ import annotations

import ml_collections

from mobilebert_jax.errors import ConfigError
from mobilebert_jax.finetune import glue, glue_tfds, squad_data


def glue_examples(config: ml_collections.ConfigDict, task: glue.GlueDataset, split: str) -> list[glue.GlueExample]:
    data = config.data
    if data.source == "tsv":
        return glue.read_split(task, data.glue_dir, split, skip_malformed=data.get("skip_malformed", False))
    if data.source == "tfds":
        return glue_tfds.read_tfds(task, split, data.get("tfds_data_dir") or None)
    raise ConfigError(f"config.data.source={data.source!r}: choose 'tsv' or 'tfds'")


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
