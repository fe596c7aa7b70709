"""`builtin:python_docs_sentencepiece`: a SentencePiece vocabulary of the embedded corpus.

Trained on first use (a few seconds) and cached under $MOBILEBERT_JAX_CACHE
(default ~/.cache/mobilebert_jax; a gs:// folder works too), keyed by the Python version whose
documentation it was trained on, so that a fresh checkout runs offline.
"""

from __future__ import annotations

import logging
import os
import uuid

from mobilebert_jax import storage
from mobilebert_jax.data.sources import python_docs
from mobilebert_jax.data.sources.skips import SkipLog
from mobilebert_jax.data.tokenizers.sentence_piece import train_sentencepiece
from mobilebert_jax.errors import DataError

BUILTIN_TOKENIZER = "builtin:python_docs_sentencepiece"
VOCAB_SIZE = 4000
VERSION = 1  # bump when the corpus reader changes what the model is trained on


def cache_dir() -> str:
    home = os.path.expanduser("~")  # not a user path: the default cache's home directory
    return os.environ.get("MOBILEBERT_JAX_CACHE") or os.path.join(home, ".cache", "mobilebert_jax")


def builtin_tokenizer_path(spec: str) -> str:
    if spec != BUILTIN_TOKENIZER:
        raise DataError(f"tokenizer spec {spec!r}: the only builtin tokenizer is {BUILTIN_TOKENIZER}")
    path = os.path.join(cache_dir(), f"python_docs_sp{VOCAB_SIZE}_v{VERSION}_{python_docs.corpus_version()}.model")
    if storage.path(path).is_file():
        return path
    storage.makedirs(cache_dir())
    logging.info("training %s into %s (once)", BUILTIN_TOKENIZER, path)
    skips = SkipLog()
    sentences = [s for part in python_docs.unit_parts()
                 for doc in python_docs.read_documents(*part, skips) for s in doc]
    # Each concurrent first use trains under its own name and renames it into place: a reader sees a whole model.
    prefix = f"{path[:-len('.model')]}.tmp-{uuid.uuid4().hex[:8]}"
    model = train_sentencepiece(iter(sentences), prefix, vocab_size=VOCAB_SIZE)
    storage.path(prefix + ".vocab").unlink()
    storage.path(model).replace(path)
    return path
