"""SQuAD v1.1 / v2.0: examples from the JSON files or TFDS `squad/*`, and windowed model features.

Features follow TF1 BERT's `run_squad.py`: the question (at most
`max_query_length` tokens) then a window of the context, windows
`doc_stride` tokens apart, `[CLS] q [SEP] window [SEP]`. A training label
outside the window (and every unanswerable question) points at [CLS].
Context tokens keep their character offsets in the original context, so a
predicted span maps back to the exact original text by slicing.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Sequence

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.data.tokenizers.base import Tokenizer
from mobilebert_jax.errors import ConfigError, DataError
from mobilebert_jax.finetune.features import pad_rows
from mobilebert_jax.data.tfds_reader import SourceOpener, as_text, field, open_tfds_source

VERSIONS = ("1.1", "2.0")


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    start: int  # character offset in the context


@dataclasses.dataclass(frozen=True)
class SquadExample:
    qid: str
    question: str
    context: str
    answers: tuple[Answer, ...]  # every annotator's answer; empty for an unanswerable v2.0 question
    is_impossible: bool
    where: str  # file and question id, for messages


def _check_version(version: str) -> str:
    """"1.1" or "2.0"; the v2.0 files write "v2.0"."""
    plain = version[1:] if version.startswith("v") else version
    if plain not in VERSIONS:
        raise DataError(f"SQuAD version {version!r}: choose one of {list(VERSIONS)}")
    return plain


def _load_json(path: str) -> dict:
    if not storage.path(path).is_file():
        raise DataError(f"{path}: SQuAD file not found")
    try:
        with storage.open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{path}: expected an object with a 'data' list of articles")
    return data


def squad_json_version(path: str) -> str:
    """The file's own `version` field, as "1.1" or "2.0"."""
    return _check_version(str(_load_json(path).get("version", "")))


def read_squad_json(path: str, version: Optional[str] = None) -> list[SquadExample]:
    """Every question of a SQuAD JSON file; `version` defaults to the file's own `version` field."""
    data = _load_json(path)
    version = _check_version(version or str(data.get("version", "")))
    examples, seen = [], {}
    for a, article in enumerate(data["data"]):
        for p, paragraph in enumerate(_get(article, "paragraphs", list, f"{path}: data[{a}]")):
            where_p = f"{path}: data[{a}].paragraphs[{p}]"
            context = _get(paragraph, "context", str, where_p)
            for q, qa in enumerate(_get(paragraph, "qas", list, where_p)):
                where = f"{where_p}.qas[{q}]"
                qid = _get(qa, "id", str, where)
                if qid in seen:
                    raise DataError(f"{where}: question id {qid!r} repeats {seen[qid]}")
                seen[qid] = where
                impossible = bool(qa.get("is_impossible", False)) if version == "2.0" else False
                answers = tuple(
                    Answer(_get(ans, "text", str, f"{where}.answers[{i}]"),
                           _get(ans, "answer_start", int, f"{where}.answers[{i}]"))
                    for i, ans in enumerate(_get(qa, "answers", list, where)))
                examples.append(_example(qid, _get(qa, "question", str, where), context, answers, impossible,
                                         f"{where} (id {qid})", version))
    return examples


def read_squad_tfds(version: str, split: str, data_dir: Optional[str] = None, *,
                    open_source: SourceOpener = open_tfds_source) -> list[SquadExample]:
    """Questions of `squad/v<version>`, split `train` or `validation`."""
    name = f"squad/v{_check_version(version)}"
    source = open_source(name, split, data_dir)
    examples = []
    for i in range(len(source)):
        example = source[i]
        where = f"tfds:{name}:{split}[{i}]"
        answers = field(example, "answers", where)
        texts = [as_text(t, f"{where}.answers.text") for t in field(answers, "text", f"{where}.answers")]
        starts = [int(s) for s in field(answers, "answer_start", f"{where}.answers")]
        if len(texts) != len(starts):
            raise DataError(f"{where}: {len(texts)} answer texts but {len(starts)} answer starts")
        qid = as_text(field(example, "id", where), f"{where}.id")
        examples.append(_example(
            qid, as_text(field(example, "question", where), f"{where}.question"),
            as_text(field(example, "context", where), f"{where}.context"),
            tuple(Answer(t, s) for t, s in zip(texts, starts)),
            version == "2.0" and not texts, f"{where} (id {qid})", version))
    return examples


def _get(obj: Any, key: str, kind: type, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _example(qid: str, question: str, context: str, answers: tuple[Answer, ...], impossible: bool, where: str,
             version: str) -> SquadExample:
    if impossible and answers:
        raise DataError(f"{where}: an unanswerable question must have no answers, found {len(answers)}")
    if not impossible and not answers:
        detail = "" if version == "2.0" else " (v1.1 has no unanswerable questions)"
        raise DataError(f"{where}: an answerable question has no answers{detail}")
    for i, answer in enumerate(answers):
        if context[answer.start:answer.start + len(answer.text)] != answer.text:
            raise DataError(f"{where}.answers[{i}]: text {answer.text!r} is not at answer_start={answer.start} "
                            f"of the context (found {context[answer.start:answer.start + len(answer.text)]!r})")
    return SquadExample(qid, question, context, answers, impossible, where)


@dataclasses.dataclass
class SquadFeatures:
    """Model inputs and what span decoding needs to map a prediction back to its example."""

    # input_ids / input_mask / segment_ids int32[N, T]; start_positions / end_positions int32[N].
    arrays: dict[str, np.ndarray]
    example_index_N: np.ndarray  # int32: the example (index into the examples list) each feature came from
    # int32[N, T, 2]: each context token's [start, end) characters in the context; -1 for every other position.
    token_offsets_NxTx2: np.ndarray
    # bool[N, T]: this window gives the token its most context (TF1 BERT's `_check_is_max_context`).
    max_context_NxT: np.ndarray

    def __len__(self) -> int:
        return len(self.example_index_N)


def _answer_token_span(offsets: Sequence[tuple[int, int]], answer: Answer) -> tuple[int, int]:
    """First and last context tokens overlapping the answer's characters."""
    begin, end = answer.start, answer.start + len(answer.text)
    inside = [i for i, (s, e) in enumerate(offsets) if s < end and e > begin]
    if not inside:
        raise ValueError(f"no token overlaps characters [{begin}, {end})")
    return inside[0], inside[-1]


def _label_span(context: str, offsets: Sequence[tuple[int, int]], answers: Sequence[Answer]) -> tuple[int, int]:
    """Token span of the first answer whose tokens cover exactly its characters, else of the first answer.

    An answer that starts or ends inside a word piece ("8" in "18") would
    teach, and score, the whole piece; among several gold answers (dev sets)
    an aligned one is the better label.
    """
    spans = [_answer_token_span(offsets, a) for a in answers]
    for answer, (first, last) in zip(answers, spans):
        if context[offsets[first][0]:offsets[last][1]] == answer.text:
            return first, last
    return spans[0]


def _windows(num_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over the context tokens, as TF1 BERT lays them."""
    spans, start = [], 0
    while start < num_tokens:
        length = min(num_tokens - start, window)
        spans.append((start, length))
        if start + length == num_tokens:
            break
        start += min(length, stride)
    return spans


def _max_context(spans: list[tuple[int, int]], num_tokens: int) -> np.ndarray:
    """best_K[token] = the window where the token has the most context; the first such window on ties."""
    best_window = np.full(num_tokens, -1, np.int64)
    best_score = np.full(num_tokens, -np.inf)
    for w, (start, length) in enumerate(spans):
        positions = np.arange(start, start + length)
        score = np.minimum(positions - start, start + length - 1 - positions) + 0.01 * length
        better = score > best_score[positions]
        best_score[positions[better]] = score[better]
        best_window[positions[better]] = w
    return best_window


def build_features(examples: Sequence[SquadExample], tokenizer: Tokenizer, *, max_seq_length: int = 384,
                   doc_stride: int = 128, max_query_length: int = 64) -> SquadFeatures:
    """One feature per context window; start/end positions from each example's first (aligned) answer."""
    window = max_seq_length - max_query_length - 3
    if window <= 0 or doc_stride <= 0:
        raise ConfigError(f"config.data.max_seq_length={max_seq_length}, max_query_length={max_query_length}, "
                          f"doc_stride={doc_stride}: need max_seq_length > max_query_length + 3 and doc_stride > 0")
    questions = tokenizer.encode_batch([e.question for e in examples])
    contexts: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    ids_rows, segment_rows, offset_rows, max_context_rows = [], [], [], []
    starts, ends, example_index = [], [], []
    for index, (example, question_ids) in enumerate(zip(examples, questions)):
        if example.context not in contexts:
            contexts[example.context] = tokenizer.encode_with_offsets(example.context)
        context_ids, offsets = contexts[example.context]
        if not context_ids:
            raise DataError(f"{example.where}: the context has no tokens")
        query = question_ids[:max_query_length]
        answer_span = None
        if example.answers:
            try:
                answer_span = _label_span(example.context, offsets, example.answers)
            except ValueError as e:
                raise DataError(f"{example.where}: an answer: {e}") from None
        spans = _windows(len(context_ids), max_seq_length - len(query) - 3, doc_stride)
        best_window = _max_context(spans, len(context_ids))
        first_context = len(query) + 2
        for w, (start, length) in enumerate(spans):
            ids_rows.append([tokenizer.cls_id, *query, tokenizer.sep_id, *context_ids[start:start + length],
                             tokenizer.sep_id])
            segment_rows.append([0] * first_context + [1] * (length + 1))
            token_offsets = np.full((max_seq_length, 2), -1, np.int32)
            token_offsets[first_context:first_context + length] = offsets[start:start + length]
            offset_rows.append(token_offsets)
            is_max = np.zeros(max_seq_length, bool)
            is_max[first_context:first_context + length] = best_window[start:start + length] == w
            max_context_rows.append(is_max)
            if answer_span is not None and start <= answer_span[0] and answer_span[1] < start + length:
                starts.append(first_context + answer_span[0] - start)
                ends.append(first_context + answer_span[1] - start)
            else:
                starts.append(0)
                ends.append(0)
            example_index.append(index)
    arrays = {
        "input_ids": pad_rows(ids_rows, max_seq_length, tokenizer.pad_id),
        "input_mask": pad_rows([[1] * len(r) for r in ids_rows], max_seq_length, 0),
        "segment_ids": pad_rows(segment_rows, max_seq_length, 0),
        "start_positions": np.asarray(starts, np.int32),
        "end_positions": np.asarray(ends, np.int32),
    }
    return SquadFeatures(
        arrays=arrays, example_index_N=np.asarray(example_index, np.int32),
        token_offsets_NxTx2=np.stack(offset_rows) if offset_rows else np.zeros((0, max_seq_length, 2), np.int32),
        max_context_NxT=np.stack(max_context_rows) if max_context_rows else np.zeros((0, max_seq_length), bool))
