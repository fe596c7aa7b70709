"""Every setting of the pretraining-data pipeline; stage configs embed it as `config.data`."""

from __future__ import annotations

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # --- what to read ---
    # A file, directory or glob, tfds:NAME[:split], or builtin:python_docs; several joined by commas.
    c.corpus = "builtin:python_docs"
    c.corpus_format = "bert"  # local files: "bert" | "paragraphs" | "wikitext" (see sources/text_files.py)
    c.tfds_data_dir = ""  # "" is TFDS's default data_dir
    c.tfds_text_field = "text"
    c.max_line_bytes = 100_000  # longer lines are skipped and counted
    # --- how to tokenize ---
    # A WordPiece vocab.txt (the released MobileBERT one: bert-uncased-vocab.txt), a SentencePiece
    # .model, or builtin:python_docs_sentencepiece (trained on the embedded corpus, cached; offline).
    c.tokenizer = "builtin:python_docs_sentencepiece"
    # --- instances (fixed at preparation; changing one needs a new prepared_dir) ---
    c.prepared_dir = ""  # where `prepare` writes and the loader reads
    c.max_seq_length = 512
    c.short_seq_prob = 0.1
    c.dupe_factor = 1  # passes over the corpus with fresh segmentations; BERT used 10 with static masks
    c.held_out_fraction = 0.01  # of documents, kept for the eval split
    c.num_shards = 8  # ArrayRecord files per split
    c.seed = 12345  # the preparation's random choices
    # Processes for `prepare`; 0 or 1 works inline. Starting a process costs seconds, so inline is faster
    # for small corpora (the embedded one); set it to the core count for Wikipedia-sized ones.
    c.prepare_workers = 0
    c.unit_bytes = 64 << 20  # local files are read in groups of about this size
    c.tfds_examples_per_unit = 20_000
    # --- masking (at load time; may change between runs) ---
    c.max_predictions_per_seq = 20  # MobileBERT's setting at 512 tokens
    c.masked_lm_prob = 0.15
    c.whole_word_masking = False
    c.dynamic_masking = True  # fresh masks each epoch; False: an example keeps its masks forever
    # --- loader ---
    c.loader_workers = 0  # grain worker processes; 0 reads in this process's threads
    c.loader_threads = 4
    c.prefetch_buffer_size = 64
    return c
