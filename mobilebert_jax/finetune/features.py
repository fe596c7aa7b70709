"""Sentence-pair encoding shared by the GLUE tasks: `[CLS] a [SEP] b [SEP]`, padded.

Truncation follows TF1 BERT's `_truncate_seq_pair`: drop one token at a time
from the end of the longer sequence (the second one on ties), so long pairs
keep the same tokens the released fine-tuning results were made with.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from mobilebert_jax.errors import ConfigError

from mobilebert_jax.data.tokenizers.base import Tokenizer

FeatureArrays = dict[str, np.ndarray]


def truncate_pair(ids_a: list[int], ids_b: Optional[list[int]],
                  max_tokens: int) -> tuple[list[int], Optional[list[int]]]:
    """Longest-first truncation to `max_tokens` content tokens in all."""
    a = list(ids_a)
    if ids_b is None:
        return a[:max_tokens], None
    b = list(ids_b)
    while len(a) + len(b) > max_tokens:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a, b


def encode_pair(ids_a: list[int], ids_b: Optional[list[int]], *, cls_id: int, sep_id: int,
                max_seq_length: int) -> tuple[list[int], list[int]]:
    """(token ids, segment ids) of one truncated, unpadded pair."""
    specials = 3 if ids_b is not None else 2
    if max_seq_length <= specials:
        raise ConfigError(f"config.data.max_seq_length={max_seq_length} leaves no room for text next to {specials} "
                          f"special tokens")
    a, b = truncate_pair(ids_a, ids_b, max_seq_length - specials)
    ids = [cls_id, *a, sep_id]
    segments = [0] * len(ids)
    if b is not None:
        ids += [*b, sep_id]
        segments += [1] * (len(b) + 1)
    return ids, segments


def pad_rows(rows: Sequence[Sequence[int]], length: int, pad_value: int) -> np.ndarray:
    """int32[N, length]; every row must fit."""
    out_NxT = np.full((len(rows), length), pad_value, dtype=np.int32)
    for i, row in enumerate(rows):
        if len(row) > length:
            raise ValueError(f"row {i} has {len(row)} tokens, more than the padded length {length}")
        out_NxT[i, :len(row)] = row
    return out_NxT


def encode_pairs(tokenizer: Tokenizer, texts_a: Sequence[str], texts_b: Optional[Sequence[str]],
                 max_seq_length: int) -> FeatureArrays:
    """`input_ids`, `input_mask`, `segment_ids`, each int32[N, max_seq_length]."""
    if texts_b is not None and len(texts_b) != len(texts_a):
        raise ValueError(f"{len(texts_a)} first texts but {len(texts_b)} second texts")
    ids_a = tokenizer.encode_batch(list(texts_a))
    ids_b = tokenizer.encode_batch(list(texts_b)) if texts_b is not None else [None] * len(ids_a)
    ids, segments = [], []
    for a, b in zip(ids_a, ids_b):
        row_ids, row_segments = encode_pair(a, b, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
                                            max_seq_length=max_seq_length)
        ids.append(row_ids)
        segments.append(row_segments)
    input_ids_NxT = pad_rows(ids, max_seq_length, tokenizer.pad_id)
    input_mask_NxT = pad_rows([[1] * len(r) for r in ids], max_seq_length, 0)
    return {"input_ids": input_ids_NxT, "input_mask": input_mask_NxT,
            "segment_ids": pad_rows(segments, max_seq_length, 0)}
