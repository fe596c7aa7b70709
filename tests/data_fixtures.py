"""Shared helpers of the data-pipeline tests: where the real data is, and small corpora made from it."""

from __future__ import annotations

import csv
import glob
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VOCAB = SHARED_DATA / "vocab" / "bert-uncased-vocab.txt"
CORPUS = SHARED_DATA / "corpus"


def require_shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real test data not found at {SHARED_DATA} (it lives beside the repository, in shared/data)")
    return SHARED_DATA


def corpus_lines() -> list[str]:
    """Every line of every shared corpus file (non-UTF-8 bytes replaced, so every file counts)."""
    require_shared_data()
    lines = []
    for path in sorted(glob.glob(str(CORPUS / "**" / "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                lines.extend(l.rstrip("\n") for l in f)
    return lines


GLUE_SENTENCE_COLUMNS = {  # file glob -> (has header, sentence columns)
    "CoLA/*.tsv": (False, (3,)),
    "SST-2/*.tsv": (True, (0,)),
    "MRPC/*.tsv": (True, (3, 4)),
    "STS-B/*.tsv": (True, (7, 8)),
    "RTE/*.tsv": (True, (1, 2)),
    "QNLI/*.tsv": (True, (1, 2)),
}


def glue_sentences() -> list[str]:
    require_shared_data()
    sentences = []
    for pattern, (header, columns) in GLUE_SENTENCE_COLUMNS.items():
        for path in sorted(glob.glob(str(SHARED_DATA / "glue" / pattern))):
            with open(path, encoding="utf-8") as f:
                rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
            for row in rows[1:] if header else rows:
                sentences.extend(row[c] for c in columns if c < len(row))
    return sentences


def data_config(**overrides):
    """The experiments' data section (experiments/common.pretraining_data at 512 tokens, 20 predictions) with test
    overrides (the builtin tokenizer cache goes where the env says)."""
    from mobilebert_jax.experiment_config import load_module
    common = load_module(str(Path(__file__).resolve().parents[1] / "experiments" / "common.py"))
    c = common.pretraining_data(max_seq_length=512, max_predictions_per_seq=20)
    c.corpus, c.tokenizer = "builtin:python_docs", "builtin:python_docs_sentencepiece"
    c.prepare_workers = 1  # inline: the tests' corpora are small
    c.loader_threads = 2
    for key, value in overrides.items():
        setattr(c, key, value)
    return c


def bert_config(**overrides):
    """Real-data config: the released MobileBERT vocabulary, 128 tokens, 20 predictions (no cap binds)."""
    require_shared_data()
    return data_config(**{"tokenizer": str(VOCAB), "max_seq_length": 128, "max_predictions_per_seq": 20, **overrides})
