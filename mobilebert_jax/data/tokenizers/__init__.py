"""Tokenizers behind one interface; `load_tokenizer` picks one from a spec string."""

from __future__ import annotations

from mobilebert_jax.data.tokenizers.base import SPECIAL_TOKENS, Tokenizer
from mobilebert_jax.data.tokenizers.sentence_piece import SentencePieceTokenizer, train_sentencepiece
from mobilebert_jax.data.tokenizers.wordpiece import WordPieceTokenizer
from mobilebert_jax.errors import DataError

__all__ = ["SPECIAL_TOKENS", "SentencePieceTokenizer", "Tokenizer", "WordPieceTokenizer", "load_tokenizer",
           "train_sentencepiece"]


def load_tokenizer(spec: str) -> Tokenizer:
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
