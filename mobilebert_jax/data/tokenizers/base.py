"""What every tokenizer offers the data pipeline, and how a tokenizer is identified."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@runtime_checkable
class Tokenizer(Protocol):
    """Text to ids without special tokens; ids of the BERT special tokens."""

    vocab_size: int
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    content_hash: str  # recorded in every manifest made with this tokenizer
    spec: str  # what `load_tokenizer` was given

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and, per id, the (start, end) character span in `text` it came from."""
        ...

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]: ...

    def is_word_start(self, token_id: int) -> bool:
        """False for a piece that continues the word before it (whole-word masking)."""
        ...

    @property
    def word_start_table(self) -> np.ndarray:
        """bool[vocab_size]: `is_word_start` for every id, for vectorized masking."""
        ...


def content_hash(kind: str, payload: bytes, options: dict[str, Any]) -> str:
    """A short hex digest of everything that changes which ids a text becomes."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"kind": kind, "options": options}, sort_keys=True).encode())
    digest.update(hashlib.sha256(payload).digest())
    return digest.hexdigest()[:16]
