r"""Trains a SentencePiece vocabulary with the BERT special tokens at ids 0-4.

    python -m mobilebert_jax.data.train_sentencepiece --corpus=PATH_OR_SPEC \
        --model_prefix=out/sp32k --vocab_size=32000 [--corpus_format=paragraphs]

writes out/sp32k.model (use it as `--config.data.tokenizer=out/sp32k.model`) and out/sp32k.vocab; existing
files of those names are refused unless --overwrite (a vocabulary that data was prepared with must not change).
"""

from __future__ import annotations

import logging
from typing import Iterator

from absl import flags
from tqdm import tqdm

from mobilebert_jax import output_paths
from mobilebert_jax.data.sources import SkipLog, plan_units, read_unit
from mobilebert_jax.data.tokenizers import SentencePieceTokenizer
from mobilebert_jax.data.tokenizers.sentence_piece import train_sentencepiece


def train_sentencepiece_from_corpus(corpus: str, model_prefix: str, *, vocab_size: int,
                                    corpus_format: str = "bert", model_type: str = "unigram",
                                    lowercase: bool = True, max_sentences: int = 10_000_000,
                                    tfds_data_dir: str = "", tfds_text_field: str = "text",
                                    max_line_bytes: int = 100_000, seed: int = 0) -> SentencePieceTokenizer:
    """Reads the corpus as `prepare` does (skips counted and logged) and trains on its sentences."""
    units = plan_units(corpus, corpus_format=corpus_format, tfds_data_dir=tfds_data_dir,
                       tfds_text_field=tfds_text_field)
    skips = SkipLog()

    def sentences() -> Iterator[str]:
        for unit in tqdm(units, desc="reading corpus", unit="unit"):
            for document in read_unit(unit, skips, max_line_bytes=max_line_bytes):
                yield from document

    model = train_sentencepiece(sentences(), model_prefix, vocab_size=vocab_size, model_type=model_type,
                                lowercase=lowercase, max_sentences=max_sentences, seed=seed)
    if skips.counts:
        logging.warning("skipped while reading %s: %s", corpus, dict(skips.counts))
    return SentencePieceTokenizer(model)


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    output_paths.claim_files([f"{f.model_prefix}.model", f"{f.model_prefix}.vocab"], "--model_prefix", f.overwrite)
    tok = train_sentencepiece_from_corpus(
        f.corpus, f.model_prefix, vocab_size=f.vocab_size, corpus_format=f.corpus_format,
        model_type=f.model_type, lowercase=f.lowercase, max_sentences=f.max_sentences,
        tfds_data_dir=f.tfds_data_dir, tfds_text_field=f.tfds_text_field, seed=f.seed)
    print(f"wrote {f.model_prefix}.model: vocab_size={tok.vocab_size} content_hash={tok.content_hash}")


def define_flags() -> None:
    flags.DEFINE_string("corpus", None, "file, directory, glob, tfds:NAME[:split] or builtin:python_docs", required=True)
    flags.DEFINE_string("model_prefix", None, "writes PREFIX.model and PREFIX.vocab", required=True)
    flags.DEFINE_integer("vocab_size", 30522, "pieces, the 5 special tokens included")
    flags.DEFINE_enum("corpus_format", "bert", ["bert", "paragraphs", "wikitext"], "layout of local text files")
    flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe", "char", "word"], "SentencePiece model type")
    flags.DEFINE_bool("lowercase", True, "case-fold while normalizing (an uncased vocabulary)")
    flags.DEFINE_integer("max_sentences", 10_000_000, "sample at most this many sentences")
    flags.DEFINE_string("tfds_data_dir", "", "TFDS data_dir for tfds: corpora")
    flags.DEFINE_string("tfds_text_field", "text", "the text feature of a tfds: corpus")
    flags.DEFINE_integer("seed", 0, "SentencePiece's random seed")
    flags.DEFINE_bool("overwrite", False, "replace PREFIX.model and PREFIX.vocab if they exist")


if __name__ == "__main__":
    from mobilebert_jax import cli

    define_flags()
    cli.run_absl(main)
