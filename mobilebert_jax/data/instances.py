"""Sentence-pair instances, as BERT's `create_instances_from_document` makes them.

Differences from BERT, all deliberate: the random stream is per (seed, dupe,
document) instead of one sequential stream (so shards can be made in any
order by any number of processes), the random next segment is drawn from
documents of the same split, and masking happens later, at load time
(mobilebert_jax.data.masking). As in BERT, `target_seq_length` is drawn once
per document, and a chunk of one sentence always gets a random next segment.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from mobilebert_jax.data.randomness import Stream, rng
from mobilebert_jax.data.records import Instance

Sentences = Sequence[np.ndarray]
RANDOM_DOCUMENT_TRIES = 10  # BERT's bound on redrawing the document itself


def create_instances_from_document(
    doc_index: int,
    document: Sentences,
    split_documents: np.ndarray,
    get_document: Callable[[int], Sentences],
    *,
    seed: int,
    dupe: int,
    max_seq_length: int,
    short_seq_prob: float,
) -> list[Instance]:
    """The instances whose segment A comes from `document` (global index `doc_index`).

    `split_documents` holds the global indices of the documents random next
    segments may come from; `get_document` reads one of them.
    """
    r = rng(seed, Stream.INSTANCES, dupe, doc_index)
    max_num_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    target_seq_length = max_num_tokens
    if r.random() < short_seq_prob:
        target_seq_length = int(r.integers(2, max_num_tokens + 1))

    instances: list[Instance] = []
    chunk: list[np.ndarray] = []
    chunk_length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        chunk_length += len(document[i])
        if i == len(document) - 1 or chunk_length >= target_seq_length:
            a_end = int(r.integers(1, len(chunk))) if len(chunk) >= 2 else 1
            tokens_a = np.concatenate(chunk[:a_end])
            if len(chunk) == 1 or r.random() < 0.5:
                is_random_next = True
                random_document = get_document(_random_other_document(r, doc_index, split_documents))
                tokens_b = _take_from(random_document, int(r.integers(0, len(random_document))),
                                      target_seq_length - len(tokens_a))
                i -= len(chunk) - a_end  # the unused sentences start the next chunk
            else:
                is_random_next = False
                tokens_b = np.concatenate(chunk[a_end:])
            tokens_a, tokens_b = _truncate_pair(tokens_a, tokens_b, max_num_tokens, r)
            # Sentences are never empty and max_num_tokens >= 2, so both segments keep a token.
            instances.append(Instance(tokens_a, tokens_b, is_random_next))
            chunk, chunk_length = [], 0
        i += 1
    return instances


def _random_other_document(r: np.random.Generator, doc_index: int, split_documents: np.ndarray) -> int:
    choice = doc_index
    for _ in range(RANDOM_DOCUMENT_TRIES):
        choice = int(split_documents[r.integers(0, len(split_documents))])
        if choice != doc_index:
            break
    return choice


def _take_from(document: Sentences, start: int, target_length: int) -> np.ndarray:
    taken, length = [], 0
    for sentence in document[start:]:
        taken.append(sentence)
        length += len(sentence)
        if length >= target_length:
            break
    return np.concatenate(taken)


def _truncate_pair(tokens_a: np.ndarray, tokens_b: np.ndarray, max_num_tokens: int,
                   r: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BERT's `truncate_seq_pair`: trim the longer segment, from the front or back at random."""
    a_lo, a_hi, b_lo, b_hi = 0, len(tokens_a), 0, len(tokens_b)
    while (a_hi - a_lo) + (b_hi - b_lo) > max_num_tokens:
        if a_hi - a_lo > b_hi - b_lo:
            if r.random() < 0.5:
                a_lo += 1
            else:
                a_hi -= 1
        elif r.random() < 0.5:
            b_lo += 1
        else:
            b_hi -= 1
    return tokens_a[a_lo:a_hi], tokens_b[b_lo:b_hi]
