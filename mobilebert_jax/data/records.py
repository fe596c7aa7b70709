"""Byte layouts of the two record kinds stored in ArrayRecord files.

A document: int32 [n_sentences, len_0 .. len_{n-1}] then the tokens.
An instance: int32 [is_random_next, len_a, len_b] then the tokens of A and B. Format 1 (the manifest's
format_version) wrote the source document indices first, [doc_a, doc_b, is_random_next, len_a, len_b]; nothing
reads them, and such data still loads.
Tokens are uint16 when the vocabulary fits, else int32 (the manifest names which).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mobilebert_jax.errors import DataError

_HEADER = np.dtype("<i4")
# Header ints before the tokens of an instance, by the manifest's format_version.
_INSTANCE_HEADER = {1: 5, 2: 3}


def token_dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def encode_document(sentences: Sequence[Sequence[int]], token_dtype: str) -> bytes:
    lengths = np.array([len(s) for s in sentences], dtype=_HEADER)
    header = np.concatenate([np.array([len(sentences)], dtype=_HEADER), lengths])
    tokens = np.fromiter((t for s in sentences for t in s), dtype=np.dtype(token_dtype).newbyteorder("<"),
                         count=int(lengths.sum()))
    return header.tobytes() + tokens.tobytes()


def decode_document(record: bytes, token_dtype: str) -> list[np.ndarray]:
    n = int(np.frombuffer(record, dtype=_HEADER, count=1)[0])
    lengths = np.frombuffer(record, dtype=_HEADER, count=n, offset=4)
    tokens = np.frombuffer(record, dtype=np.dtype(token_dtype).newbyteorder("<"), offset=4 * (n + 1))
    return np.split(tokens.astype(np.int32), np.cumsum(lengths)[:-1]) if n else []


@dataclasses.dataclass(frozen=True)
class Instance:
    """A sentence pair before masking."""

    tokens_a: np.ndarray
    tokens_b: np.ndarray
    is_random_next: bool


def encode_instance(instance: Instance, token_dtype: str) -> bytes:
    header = np.array([int(instance.is_random_next), len(instance.tokens_a), len(instance.tokens_b)], dtype=_HEADER)
    dtype = np.dtype(token_dtype).newbyteorder("<")
    return header.tobytes() + np.asarray(instance.tokens_a, dtype).tobytes() + np.asarray(instance.tokens_b, dtype).tobytes()


def decode_instance(record: bytes, token_dtype: str, format_version: int) -> Instance:
    """An instance written by format `format_version` (the manifest's)."""
    ints = _INSTANCE_HEADER[format_version]
    is_random_next, len_a, len_b = np.frombuffer(record, dtype=_HEADER, count=ints).tolist()[-3:]
    tokens = np.frombuffer(record, dtype=np.dtype(token_dtype).newbyteorder("<"), offset=4 * ints).astype(np.int32)
    if len(tokens) != len_a + len_b:
        raise DataError(f"instance record holds {len(tokens)} tokens, header says {len_a}+{len_b}")
    return Instance(tokens[:len_a], tokens[len_a:], bool(is_random_next))
