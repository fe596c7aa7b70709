"""Tokenizers behind one interface; `load_tokenizer` picks one from a spec string."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

from mobilebert_jax.data.tokenizers.base import SPECIAL_TOKENS, Tokenizer
from mobilebert_jax.data.tokenizers.sentence_piece import SentencePieceTokenizer, train_sentencepiece
from mobilebert_jax.data.tokenizers.wordpiece import WordPieceTokenizer
from mobilebert_jax.errors import DataError

__all__ = ["SPECIAL_TOKENS", "SentencePieceTokenizer", "Tokenizer", "WordPieceTokenizer", "load_tokenizer",
           "loaded_once", "train_sentencepiece"]

# spec -> Tokenizer, while a `loaded_once` block is active (None outside one).
_LOADED: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("loaded_tokenizers", default=None)


@contextlib.contextmanager
def loaded_once() -> Iterator[None]:
    """Within the block each spec is read once: a run's start checks, records and uses one tokenizer object.

    Scoped, not global: a tokenizer file may be replaced between two runs of one process (tests, the pipeline).
    """
    token = _LOADED.set({})
    try:
        yield
    finally:
        _LOADED.reset(token)


def load_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer `spec` names (`_load`), read once per `loaded_once` block."""
    loaded = _LOADED.get()
    if loaded is None:
        return _load(spec)
    if spec not in loaded:
        loaded[spec] = _load(spec)
    return loaded[spec]


def _load(spec: str) -> Tokenizer:
    """`path/vocab.txt` (or any `.txt`): uncased WordPiece; `path/x.model`: SentencePiece.

    `builtin:python_docs_sentencepiece` is a SentencePiece model trained once on
    the embedded corpus and cached, so that a fresh checkout runs offline.
    """
    if spec.startswith("builtin:"):
        from mobilebert_jax.data.builtin_tokenizer import builtin_tokenizer_path
        return SentencePieceTokenizer(builtin_tokenizer_path(spec))
    if spec.endswith(".model"):
        return SentencePieceTokenizer(spec)
    if spec.endswith(".txt"):
        return WordPieceTokenizer(spec)
    raise DataError(
        f"tokenizer spec {spec!r}: expected a WordPiece vocab.txt, a SentencePiece .model, "
        "or builtin:python_docs_sentencepiece")
