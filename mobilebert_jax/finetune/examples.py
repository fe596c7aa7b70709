"""A fine-tuning run's examples, from the source its config names (TSV/JSON files or TFDS)."""

from __future__ import annotations

import ml_collections

from mobilebert_jax.config_schema import Schema
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.finetune import glue, glue_tfds, squad_data

# config.data of each fine-tuning stage; the values are the experiments' (finetune_glue.py, finetune_squad.py).
# Optional: tfds_data_dir ("": TFDS's default data_dir), skip_malformed (False: a malformed TSV row is an error).
GLUE_DATA = Schema(fields=("source", "glue_dir", "tfds_data_dir", "skip_malformed", "tokenizer", "scratch_tokenizer",
                           "max_seq_length"),
                   optional=dict(tfds_data_dir="", skip_malformed=False))
SQUAD_DATA = Schema(fields=("source", "train_file", "dev_file", "tfds_data_dir", "tokenizer", "scratch_tokenizer",
                            "max_seq_length", "doc_stride", "max_query_length"),
                    optional=dict(tfds_data_dir=""))


def glue_examples(config: ml_collections.ConfigDict, task: glue.GlueDataset, split: str) -> list[glue.GlueExample]:
    data = GLUE_DATA.read(config.data, "config.data")
    if data["source"] == "tsv":
        return glue.read_split(task, data["glue_dir"], split, skip_malformed=data["skip_malformed"])
    if data["source"] == "tfds":
        return glue_tfds.read_tfds(task, split, data["tfds_data_dir"] or None)
    raise ConfigError(f"config.data.source={data['source']!r}: choose 'tsv' or 'tfds'")


def squad_examples(config: ml_collections.ConfigDict, split: str) -> list[squad_data.SquadExample]:
    data = SQUAD_DATA.read(config.data, "config.data")
    if data["source"] == "json":
        return squad_data.read_squad_json(data["train_file"] if split == "train" else data["dev_file"],
                                          config.version)
    if data["source"] == "tfds":
        return squad_data.read_squad_tfds(config.version, "train" if split == "train" else "validation",
                                          data["tfds_data_dir"] or None)
    raise ConfigError(f"config.data.source={data['source']!r}: choose 'json' or 'tfds'")


def squad_feature_options(config: ml_collections.ConfigDict) -> dict[str, int]:
    d = config.data
    return dict(max_seq_length=d.max_seq_length, doc_stride=d.doc_stride, max_query_length=d.max_query_length)
