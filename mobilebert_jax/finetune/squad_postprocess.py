"""Span decoding as TF1 BERT's `write_predictions`: n-best spans per question, mapped back to the context.

For each question, every window proposes its `n_best_size` highest start and
end positions; a pair is a candidate when both are context tokens, the start
is in the window that gives it most context, and 1 <= length <=
`max_answer_length` tokens. Candidates from all windows are ranked by
start + end logit. The text is the context sliced from the start token's
first character to the end token's last, so it is the original text.

v2.0: the no-answer score is the smallest [CLS] start + end logit over the
windows; `null_odds` = that score minus the best span's score, and the
question is predicted unanswerable when it exceeds the threshold
(`choose_null_threshold` in `squad_metrics` picks one on dev).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

from mobilebert_jax.finetune.squad_data import SquadExample, SquadFeatures


@dataclasses.dataclass(frozen=True)
class Candidate:
    text: str
    start_logit: float
    end_logit: float
    probability: float = 0.0  # softmax over the n-best list's scores

    @property
    def score(self) -> float:
        return self.start_logit + self.end_logit


@dataclasses.dataclass
class SpanPredictions:
    best_span: dict[str, str]  # question id -> the best non-empty span
    nbest: dict[str, list[Candidate]]  # ... -> the n-best list (v2.0: the empty answer included)
    null_odds: Optional[dict[str, float]]  # v2.0: no-answer score minus the best span's score

    def predictions(self, null_threshold: float = 0.0) -> dict[str, str]:
        """The answer per question: v2.0 answers "" where null_odds exceeds the threshold."""
        if self.null_odds is None:
            return dict(self.best_span)
        return {qid: "" if self.null_odds[qid] > null_threshold else text for qid, text in self.best_span.items()}


def _top_indices(logits_T: np.ndarray, n: int) -> np.ndarray:
    # Stable descending order: equal logits keep position order, as Python's sorted() in TF1 BERT.
    return np.argsort(-logits_T, kind="stable")[:n]


def _softmax(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def decode_spans(examples: Sequence[SquadExample], features: SquadFeatures, start_logits_NxT: np.ndarray,
                 end_logits_NxT: np.ndarray, *, version_2: bool, n_best_size: int = 20,
                 max_answer_length: int = 30) -> SpanPredictions:
    start_logits_NxT = np.asarray(start_logits_NxT, np.float32)
    end_logits_NxT = np.asarray(end_logits_NxT, np.float32)
    if start_logits_NxT.shape != end_logits_NxT.shape or start_logits_NxT.shape != features.max_context_NxT.shape:
        raise ValueError(f"logits {start_logits_NxT.shape} / {end_logits_NxT.shape} do not match the features "
                         f"{features.max_context_NxT.shape}")
    by_example: dict[int, list[int]] = defaultdict(list)
    for f, e in enumerate(features.example_index_N):
        by_example[int(e)].append(f)
    best_span, nbest, null_odds = {}, {}, {} if version_2 else None
    for e, example in enumerate(examples):
        spans: list[tuple[float, float, int, int, int]] = []  # (start logit, end logit, feature, start, end)
        null_start = null_end = 0.0
        null_score = math.inf
        for f in by_example.get(e, []):
            start_T, end_T = start_logits_NxT[f], end_logits_NxT[f]
            if version_2 and start_T[0] + end_T[0] < null_score:
                null_score, null_start, null_end = float(start_T[0] + end_T[0]), float(start_T[0]), float(end_T[0])
            is_context_T = features.token_offsets_NxTx2[f, :, 0] >= 0
            s_K, t_K = _top_indices(start_T, n_best_size), _top_indices(end_T, n_best_size)
            valid_KxK = ((is_context_T[s_K] & features.max_context_NxT[f, s_K])[:, None] & is_context_T[t_K][None, :]
                         & (t_K[None, :] >= s_K[:, None]) & (t_K[None, :] < s_K[:, None] + max_answer_length))
            for i, j in zip(*np.nonzero(valid_KxK)):
                s, t = int(s_K[i]), int(t_K[j])
                spans.append((float(start_T[s]), float(end_T[t]), f, s, t))
        # Stable: equal scores keep the window and position order TF1 BERT's sorted() keeps.
        spans.sort(key=lambda x: x[0] + x[1], reverse=True)
        chosen: list[Candidate] = []
        seen_texts = set()
        for start_logit, end_logit, f, s, t in spans:
            if len(chosen) >= n_best_size:
                break
            begin, end = features.token_offsets_NxTx2[f, s, 0], features.token_offsets_NxTx2[f, t, 1]
            text = example.context[begin:end]
            if text in seen_texts:
                continue
            seen_texts.add(text)
            chosen.append(Candidate(text, start_logit, end_logit))
        # No valid span at all: TF1 BERT's placeholder entry with zero logits.
        best = chosen[0] if chosen else Candidate("", 0.0, 0.0)
        if version_2:
            # The empty answer joins the n-best list with its score, as in TF1 BERT.
            chosen.append(Candidate("", null_start, null_end))
            chosen.sort(key=lambda c: c.score, reverse=True)
            null_odds[example.qid] = null_score - best.score
        probabilities = _softmax([c.score for c in chosen])
        nbest[example.qid] = [dataclasses.replace(c, probability=p) for c, p in zip(chosen, probabilities)]
        best_span[example.qid] = best.text
    return SpanPredictions(best_span, nbest, null_odds)
