"""Data-pipeline throughput: tokenization next to HF, preparation, and the loader at two configurations.

    python benchmarks/data_pipeline.py [--shared_data=../shared/data] [--loader_batches=30]

1. Tokenization tokens/s on the same lines: this project's WordPiece next to
   HF `tokenizers` (BertWordPieceTokenizer) and transformers' BertTokenizerFast,
   on the shared corpora with the MobileBERT vocabulary; and the builtin
   SentencePiece tokenizer next to `sentencepiece` itself on the embedded corpus.
2. `prepare` on the embedded corpus at the smoke configuration (128 tokens).
3. The loader's sequences/s, one process, at the smoke configuration (global
   batch 16 of 128 tokens) and at the full configuration's shape (512 tokens,
   20 predictions, a host's share of 256 sequences), in its default threads and
   with 2 worker processes.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time

from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("shared_data", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
                    "the shared real data (vocabulary and corpora)")
flags.DEFINE_integer("loader_batches", 30, "timed batches per loader configuration")


def rate(fn, units: float, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return units / best


def tokenization(shared: str) -> None:
    import tokenizers
    from transformers import BertTokenizerFast

    from mobilebert_jax.data.tokenizers import load_tokenizer

    vocab = os.path.join(shared, "vocab", "bert-uncased-vocab.txt")
    lines = []
    for name in ("wikitext-2-raw-test.txt", "tinyshakespeare.txt", "botchan.txt"):
        with open(os.path.join(shared, "corpus", name), encoding="utf-8-sig") as f:
            lines += [l.strip() for l in f if l.strip()]
    ours = load_tokenizer(vocab)
    n_tokens = sum(len(ids) for ids in ours.encode_batch(lines))
    hf = tokenizers.BertWordPieceTokenizer(vocab, lowercase=True)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(vocab, os.path.join(tmp, "vocab.txt"))
        fast = BertTokenizerFast.from_pretrained(tmp)
    print(f"WordPiece on {len(lines):,} lines ({n_tokens:,} tokens), batch of all lines:")
    print(f"  ours (mobilebert_jax)            {rate(lambda: ours.encode_batch(lines), n_tokens):12,.0f} tokens/s")
    print(f"  HF tokenizers BertWordPiece      "
          f"{rate(lambda: hf.encode_batch(lines, add_special_tokens=False), n_tokens):12,.0f} tokens/s")
    print(f"  transformers BertTokenizerFast   "
          f"{rate(lambda: fast(lines, add_special_tokens=False), n_tokens):12,.0f} tokens/s")
    one = lines[:5000]
    n_one = sum(len(ours.encode(l)) for l in one)
    print(f"  ours, one line at a time         {rate(lambda: [ours.encode(l) for l in one], n_one):12,.0f} tokens/s")


def sentencepiece_tokenization() -> None:
    import sentencepiece as spm

    from mobilebert_jax.data.sources import SkipLog, python_docs
    from mobilebert_jax.data.tokenizers import load_tokenizer

    sentences = [s for part in python_docs.unit_parts() for d in python_docs.read_documents(*part, SkipLog()) for s in d]
    ours = load_tokenizer("builtin:python_docs_sentencepiece")
    raw = spm.SentencePieceProcessor(model_file=ours.spec)
    n_tokens = sum(len(i) for i in ours.encode_batch(sentences))
    print(f"SentencePiece (builtin, 4000 pieces) on {len(sentences):,} sentences ({n_tokens:,} tokens):")
    print(f"  ours                             {rate(lambda: ours.encode_batch(sentences), n_tokens):12,.0f} tokens/s")
    print(f"  sentencepiece itself             {rate(lambda: raw.encode(sentences), n_tokens):12,.0f} tokens/s")


def loader_rate(config, global_batch: int, hosts: int, batches: int) -> float:
    from mobilebert_jax.data.loader import make_pretraining_loader
    loader = make_pretraining_loader(config, split="train", global_batch_size=global_batch, process_index=0,
                                     process_count=hosts, seed=0)
    for _ in range(3):  # warm up (and start workers)
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    seconds = time.perf_counter() - start
    if config.loader_workers:
        loader.close()
    return batches * global_batch // hosts / seconds


def main(argv) -> None:
    del argv
    from mobilebert_jax.data.prepare import prepare
    from mobilebert_jax.experiment_config import load_module

    common = load_module(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                                      "common.py"))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    shared = os.path.abspath(FLAGS.shared_data)
    have_shared = os.path.isfile(os.path.join(shared, "README.md"))
    if have_shared:
        tokenization(shared)
    else:
        print(f"(no shared data at {shared}: WordPiece timings skipped)")
    sentencepiece_tokenization()

    with tempfile.TemporaryDirectory() as tmp:
        smoke = common.pretraining_data(max_seq_length=128, max_predictions_per_seq=20)
        common.embedded_corpus(smoke)
        smoke.prepared_dir = os.path.join(tmp, "smoke")
        start = time.perf_counter()
        manifest = prepare(smoke, smoke.prepared_dir)
        seconds = time.perf_counter() - start
        corpus = manifest["corpus"]
        print(f"prepare builtin:python_docs at 128 tokens, prepare_workers={smoke.prepare_workers}: {seconds:.1f} s "
              f"({corpus['documents']} documents, {corpus['tokens']:,} tokens, "
              f"{manifest['splits']['train']['instances']:,} train instances)")

        full = common.pretraining_data(max_seq_length=512, max_predictions_per_seq=20)
        full.prepared_dir = os.path.join(tmp, "full")
        common.embedded_corpus(full)
        full.num_shards = 8
        if have_shared:
            full.corpus = os.path.join(shared, "corpus", "wikitext-2-raw-test.txt")
            full.corpus_format = "wikitext"
            full.tokenizer = os.path.join(shared, "vocab", "bert-uncased-vocab.txt")
        prepare(full, full.prepared_dir)

        print("loader sequences/s (one process):")
        for name, config, global_batch, hosts in (("smoke: global batch 16 x 128", smoke, 16, 1),
                                                  ("full shape: 512 tokens, host share 256", full, 4096, 16)):
            for workers in (0, 2):
                c = config.copy_and_resolve_references()
                c.loader_workers = workers
                print(f"  {name:40s} workers={workers}: "
                      f"{loader_rate(c, global_batch, hosts, FLAGS.loader_batches):10,.0f} sequences/s")


if __name__ == "__main__":
    from mobilebert_jax import cli

    cli.run_absl(main)
