"""Masked-LM and NSP features of one instance, as BERT's `create_masked_lm_predictions` makes them.

Candidates are every token but the structural [CLS] and [SEP]s;
`min(max_predictions_per_seq, max(1, round(len(tokens) * masked_lm_prob)))`
of them are predicted; each is replaced by [MASK] with probability 0.8, kept
with 0.1, and replaced by a uniformly drawn vocabulary id with 0.1. With
whole-word masking the candidates are whole words (a word start and the
continuation pieces after it, never across a [SEP]) and, as in BERT's code,
the 80/10/10 choice is still made per piece.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mobilebert_jax.data.records import Instance

FEATURE_DTYPES = {
    "input_ids": np.int32,
    "input_mask": np.int32,
    "segment_ids": np.int32,
    "masked_lm_positions": np.int32,
    "masked_lm_ids": np.int32,
    "masked_lm_weights": np.float32,
    "next_sentence_labels": np.int32,  # 1: B is a random segment, 0: B follows A (BERT's convention)
}
MASK_PROB, KEEP_PROB = 0.8, 0.1  # the rest is a random token


@dataclasses.dataclass(frozen=True)
class Masker:
    max_seq_length: int
    max_predictions_per_seq: int
    masked_lm_prob: float
    whole_word_masking: bool
    vocab_size: int
    cls_id: int
    sep_id: int
    mask_id: int
    word_start_table: np.ndarray  # bool[vocab_size]

    def features(self, instance: Instance, r: np.random.Generator) -> dict[str, np.ndarray]:
        len_a, len_b = len(instance.tokens_a), len(instance.tokens_b)
        n = len_a + len_b + 3
        if n > self.max_seq_length:
            raise ValueError(f"instance of {n} tokens exceeds max_seq_length {self.max_seq_length}")
        T, P = self.max_seq_length, self.max_predictions_per_seq
        ids_T = np.zeros(T, np.int32)
        ids_T[0] = self.cls_id
        ids_T[1:1 + len_a] = instance.tokens_a
        ids_T[1 + len_a] = self.sep_id
        ids_T[2 + len_a:n - 1] = instance.tokens_b
        ids_T[n - 1] = self.sep_id
        segment_ids_T = np.zeros(T, np.int32)
        segment_ids_T[2 + len_a:n] = 1
        input_mask_T = np.zeros(T, np.int32)
        input_mask_T[:n] = 1

        candidates = np.concatenate([np.arange(1, 1 + len_a), np.arange(2 + len_a, n - 1)])
        num_to_predict = min(P, max(1, int(round(n * self.masked_lm_prob))), len(candidates))
        if self.whole_word_masking:
            positions = self._whole_word_positions(ids_T, candidates, num_to_predict, r)
        else:
            positions = np.sort(r.permutation(candidates)[:num_to_predict])
        labels = ids_T[positions].copy()
        u, v = r.random(len(positions)), r.random(len(positions))
        random_ids = r.integers(0, self.vocab_size, len(positions), dtype=np.int32)
        replaced = np.where(u < MASK_PROB, self.mask_id, np.where(v < 0.5, labels, random_ids))
        ids_T[positions] = replaced

        k = len(positions)
        positions_P = np.zeros(P, np.int32)
        positions_P[:k] = positions
        labels_P = np.zeros(P, np.int32)
        labels_P[:k] = labels
        weights_P = np.zeros(P, np.float32)
        weights_P[:k] = 1.0
        return {
            "input_ids": ids_T,
            "input_mask": input_mask_T,
            "segment_ids": segment_ids_T,
            "masked_lm_positions": positions_P,
            "masked_lm_ids": labels_P,
            "masked_lm_weights": weights_P,
            "next_sentence_labels": np.int32(instance.is_random_next),
        }

    def _whole_word_positions(self, ids_T: np.ndarray, candidates: np.ndarray, num_to_predict: int,
                              r: np.random.Generator) -> np.ndarray:
        words: list[list[int]] = []
        previous = -2
        for pos in candidates.tolist():
            if words and pos == previous + 1 and not self.word_start_table[ids_T[pos]]:
                words[-1].append(pos)
            else:
                words.append([pos])
            previous = pos
        chosen: list[int] = []
        for w in r.permutation(len(words)).tolist():
            if len(chosen) >= num_to_predict:
                break
            if len(chosen) + len(words[w]) <= num_to_predict:
                chosen.extend(words[w])
        return np.sort(np.array(chosen, dtype=np.int64))


def stack_features(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([e[k] for e in examples]).astype(dtype, copy=False) for k, dtype in FEATURE_DTYPES.items()}
