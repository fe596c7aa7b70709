"""BERT WordPiece from a `vocab.txt`, built from HF `tokenizers` components.

The normalizer, pre-tokenizer and model are the ones `BertTokenizerFast`
assembles (clean text, CJK splitting, lower-casing with accent stripping,
punctuation splitting, greedy longest-match WordPiece with words over 100
characters mapped to [UNK]), so parity holds by construction and is tested.
"""

from __future__ import annotations

import functools
import io
from typing import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from mobilebert_jax.data.tokenizers.base import SPECIAL_TOKENS, content_hash
from mobilebert_jax import storage
from mobilebert_jax.errors import DataError

MAX_INPUT_CHARS_PER_WORD = 100


def read_vocab(path: str, data: bytes | None = None) -> dict[str, int]:
    """token -> id, one token per line as BERT's `load_vocab` reads it (`data`: the file's bytes, when read)."""
    if data is None:
        data = _read(path)
    vocab: dict[str, int] = {}
    with io.BytesIO(data) as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                token = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{line_no}: vocabulary line is not UTF-8 ({e.reason})") from None
            if not token:
                raise DataError(f"{path}:{line_no}: empty vocabulary entry")
            if token in vocab:
                raise DataError(f"{path}:{line_no}: token {token!r} repeats line {vocab[token] + 1}")
            vocab[token] = len(vocab)
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise DataError(f"{path}: vocabulary lacks the special tokens {missing}")
    return vocab


def _read(path: str) -> bytes:
    if not storage.path(path).is_file():
        raise DataError(f"{path}: vocabulary file not found")
    return storage.path(path).read_bytes()


class WordPieceTokenizer:
    """BERT WordPiece; uncased (lower-case and strip accents) unless `lowercase=False`."""

    def __init__(self, vocab_path: str, *, lowercase: bool = True):
        self.spec = vocab_path
        data = _read(vocab_path)  # one read: a gs:// vocabulary is fetched once
        vocab = read_vocab(vocab_path, data)
        self._vocab = vocab
        self._id_to_token = list(vocab)
        self.content_hash = content_hash(
            "wordpiece", data, {"lowercase": lowercase, "max_input_chars_per_word": MAX_INPUT_CHARS_PER_WORD})
        tok = tokenizers.Tokenizer(models.WordPiece(
            vocab, unk_token="[UNK]", max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        # BertTokenizerFast treats the special tokens as whole units in the text too.
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        self._tok = tok
        self.vocab_size = len(vocab)
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            vocab[t] for t in SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, list(enc.offsets)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._id_to_token[i] for i in ids]

    def is_word_start(self, token_id: int) -> bool:
        return not self._id_to_token[token_id].startswith("##")

    @functools.cached_property
    def word_start_table(self) -> np.ndarray:
        return np.array([not t.startswith("##") for t in self._id_to_token], dtype=bool)
