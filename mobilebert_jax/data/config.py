"""The `config.data` schema of the pretraining and distillation stages (and of `python -m mobilebert_jax.data.prepare`,
which takes the same config): its fields, which of them may be left out, and the reader that checks them.

The library holds no values: experiments/common.py's `pretraining_data(max_seq_length, max_predictions_per_seq)`
writes every field, with a comment on each. A missing required field is a ConfigError naming it. Fields that may
be left out have a neutral meaning, the one an absent setting has:

    config.data  required: corpus, corpus_format, tfds_text_field, max_line_bytes, tokenizer, max_seq_length,
                           short_seq_prob, dupe_factor, held_out_fraction, seed, unit_bytes,
                           tfds_examples_per_unit, max_predictions_per_seq, masked_lm_prob, dynamic_masking,
                           loader_threads, prefetch_buffer_size
                 optional: tfds_data_dir ("": TFDS's default data_dir), prepared_dir ("": a stage prepares into
                           WORKDIR/data; the prepare command needs it set), prepare_workers (0: one
                           process per core; 1: inline), num_shards (0: one shard per 2**26 tokens of a
                           split times dupe_factor, data/prepare.derived_num_shards),
                           whole_word_masking (False: masks pick single pieces), loader_workers (0: the loader
                           reads in this process's threads), verify_checksums (False: a stage and the
                           loader check each prepared shard's size against the manifest; True: its sha256 too,
                           which reads every byte; `data.prepare` always checks both)

What the values mean (which part of the data they fix): `corpus`...`max_line_bytes` what is read; `tokenizer` how
it is tokenized; `max_seq_length`...`tfds_examples_per_unit` the instances, fixed at preparation (a change needs a
new prepared_dir, data/prepare.py refuses to mix); `max_predictions_per_seq`...`dynamic_masking` the masks, drawn
at load time; the rest the loader's parallelism. `corpus` and `tokenizer` may not be empty (`require_sources`,
checked where data is prepared): the experiments give them no value outside their :smoke form.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from mobilebert_jax.config_schema import Schema
from mobilebert_jax.errors import ConfigError

SCHEMA = Schema(fields=("corpus", "corpus_format", "tfds_data_dir", "tfds_text_field", "max_line_bytes", "tokenizer",
          "prepared_dir", "max_seq_length", "short_seq_prob", "dupe_factor", "held_out_fraction", "num_shards",
          "seed", "prepare_workers", "unit_bytes", "tfds_examples_per_unit", "max_predictions_per_seq",
          "masked_lm_prob", "whole_word_masking", "dynamic_masking", "loader_workers", "loader_threads",
          "prefetch_buffer_size", "verify_checksums"),
                optional=dict(tfds_data_dir="", prepared_dir="", prepare_workers=0, num_shards=0, whole_word_masking=False,
                              loader_workers=0, verify_checksums=False))


SOURCES = {
    "corpus": "the text to pretrain on: a file, folder or glob (local or gs://), tfds:NAME[:split], several joined "
              "by commas, e.g. --config.data.corpus=tfds:wikipedia/20230601.en:train",
    "tokenizer": "a WordPiece vocab.txt or a SentencePiece .model (local or gs://), e.g. "
                 "--config.data.tokenizer=gs://BUCKET/bert-uncased-vocab.txt",
}


def require_sources(data_cfg: Any, where: str = "config.data") -> None:
    """The corpus and tokenizer must be given: a paper-scale config leaves them empty rather than default to the
    embedded Python-docs corpus (a run would train a toy model without a word said); its :smoke form sets them."""
    for field, what in SOURCES.items():
        if not str(data_cfg[field]).strip():
            raise ConfigError(f"{where}.{field} is empty: give {what} (the :smoke configs use the embedded "
                              "builtin:python_docs corpus and builtin:python_docs_sentencepiece)")


def read(data_cfg: Any, where: str = "config.data") -> ml_collections.ConfigDict:
    """`data_cfg` with the optional fields filled in, as a new ConfigDict; unknown and missing fields are
    ConfigErrors naming them. The values' ranges are checked where they are used (data/prepare.py, masking)."""
    return ml_collections.ConfigDict(SCHEMA.read(data_cfg, where))
