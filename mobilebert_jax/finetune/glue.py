"""The nine GLUE tasks: what each one reads, predicts and is scored by, and its TSV reader.

Labels are kept in the order of the GLUE TSV files and the GLUE submission
format (TF1 BERT's processors): a class index `i` means `task.labels[i]`.
TFDS numbers some classes differently (MNLI); `glue_tfds` maps its labels
by name onto this order.

TSV files are read as GLUE distributes them: tab-separated, no quoting
(quotes are text), a header row naming the columns except in CoLA's
train/dev files. Columns are found by header name, so the reader accepts
every split's layout (MNLI dev has more label columns than train; test files
have an id column and no label).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.data.tokenizers.base import Tokenizer
from mobilebert_jax.errors import DataError
from mobilebert_jax.finetune.features import FeatureArrays, encode_pairs

# GLUE's test files can hold long sentences; the csv module's default field limit is 128 KiB.
csv.field_size_limit(2**31 - 1)


@dataclasses.dataclass(frozen=True)
class GlueDataset:
    name: str  # lower-case key: cola, sst2, ...
    directory: str  # folder in the GLUE download: CoLA, SST-2, ...
    labels: Optional[tuple[str, ...]]  # None: regression (STS-B)
    text_a: str  # header name of the first text column
    text_b: Optional[str]  # ... of the second, None for single-sentence tasks
    label_column: str
    id_columns: tuple[str, ...]  # the first one present names an example
    # Splits with labels to score on; test splits, each with its submission file name.
    eval_splits: tuple[str, ...]
    test_splits: dict[str, str]
    metrics: tuple[str, ...]  # the first is the one GLUE's leaderboard averages first
    # CoLA's train/dev files have no header; their columns in order.
    headerless_columns: Optional[tuple[str, ...]] = None

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        """Outputs of the classifier head: 1 for regression."""
        return 1 if self.labels is None else len(self.labels)


_PAIR = dict(text_a="sentence1", text_b="sentence2", label_column="label", id_columns=("index",))

TASKS: dict[str, GlueDataset] = {t.name: t for t in (
    GlueDataset("cola", "CoLA", ("0", "1"), "sentence", None, "label", ("index",), ("dev",), {"test": "CoLA.tsv"},
             ("matthews_corrcoef",), headerless_columns=("source", "label", "original_label", "sentence")),
    GlueDataset("sst2", "SST-2", ("0", "1"), "sentence", None, "label", ("index",), ("dev",), {"test": "SST-2.tsv"},
             ("accuracy",)),
    GlueDataset("mrpc", "MRPC", ("0", "1"), "#1 String", "#2 String", "Quality", ("index",), ("dev",),
             {"test": "MRPC.tsv"}, ("f1", "accuracy")),
    GlueDataset("stsb", "STS-B", None, "sentence1", "sentence2", "score", ("index",), ("dev",),
             {"test": "STS-B.tsv"}, ("pearson", "spearman")),
    GlueDataset("qqp", "QQP", ("0", "1"), "question1", "question2", "is_duplicate", ("id",), ("dev",),
             {"test": "QQP.tsv"}, ("f1", "accuracy")),
    GlueDataset("mnli", "MNLI", ("contradiction", "entailment", "neutral"), "sentence1", "sentence2", "gold_label",
             ("index",), ("dev_matched", "dev_mismatched"),
             {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"}, ("accuracy",)),
    GlueDataset("qnli", "QNLI", ("entailment", "not_entailment"), "question", "sentence", "label", ("index",),
             ("dev",), {"test": "QNLI.tsv"}, ("accuracy",)),
    GlueDataset("rte", "RTE", ("entailment", "not_entailment"), **_PAIR, eval_splits=("dev",),
             test_splits={"test": "RTE.tsv"}, metrics=("accuracy",)),
    GlueDataset("wnli", "WNLI", ("0", "1"), **_PAIR, eval_splits=("dev",), test_splits={"test": "WNLI.tsv"},
             metrics=("accuracy",)),
)}
# STS-B similarity scores lie in [0, 5].
STSB_RANGE = (0.0, 5.0)


def get_task(name: str) -> GlueDataset:
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise DataError(f"unknown GLUE task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[key]


@dataclasses.dataclass(frozen=True)
class GlueExample:
    guid: str  # the file's id column, or the line number where there is none
    text_a: str
    text_b: Optional[str]
    label: Optional[int | float]  # class index into task.labels, a score for STS-B, None in test files
    where: str  # file:line, for messages


def split_path(task: GlueDataset, data_dir: str, split: str) -> str:
    """`data_dir/<task dir>/<split>.tsv` (the GLUE download), or `data_dir/<split>.tsv` (the task's own folder)."""
    known = ("train", *task.eval_splits, *task.test_splits)
    if split not in known:
        raise DataError(f"GLUE {task.name} has no split {split!r}; choose one of {list(known)}")
    in_task_dir = os.path.join(data_dir, f"{split}.tsv")
    if storage.path(in_task_dir).is_file() and not storage.path(data_dir, task.directory).is_dir():
        return in_task_dir
    return os.path.join(data_dir, task.directory, f"{split}.tsv")


def read_split(task: GlueDataset, data_dir: str, split: str, *, skip_malformed: bool = False) -> list[GlueExample]:
    return read_tsv(task, split_path(task, data_dir, split), skip_malformed=skip_malformed)


def read_tsv(task: GlueDataset, path: str, *, skip_malformed: bool = False) -> list[GlueExample]:
    """Every row of a GLUE TSV file as examples.

    A row with the wrong number of fields, an unknown label or an unreadable
    score is an error naming file:line and column; `skip_malformed` drops
    rows with the wrong number of fields instead (the published QQP files
    have a few), counting them on stderr.
    """
    if not storage.path(path).is_file():
        raise DataError(f"{path}: GLUE {task.name} file not found")
    with storage.open(path, encoding="utf-8-sig", newline="") as f:
        try:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not rows:
        raise DataError(f"{path}: empty file, expected a GLUE {task.name} TSV")
    columns, first_line = _columns(task, path, rows[0])
    index = {name: i for i, name in enumerate(columns)}
    for needed in (task.text_a, task.text_b):
        if needed is not None and needed not in index:
            raise DataError(f"{path}:1: header {columns} lacks the column {needed!r} of GLUE {task.name}")
    has_label = task.label_column in index
    id_column = next((c for c in task.id_columns if c in index), None)
    examples, skipped = [], 0
    for line_no, row in enumerate(rows[first_line - 1:], start=first_line):
        where = f"{path}:{line_no}"
        if len(row) != len(columns):
            if skip_malformed:
                skipped += 1
                continue
            raise DataError(f"{where}: {len(row)} tab-separated fields, expected {len(columns)} ({columns}); "
                            "pass skip_malformed=True to drop such rows")
        label = _parse_label(task, row[index[task.label_column]], where) if has_label else None
        examples.append(GlueExample(
            guid=row[index[id_column]] if id_column else str(line_no - first_line),
            text_a=row[index[task.text_a]],
            text_b=row[index[task.text_b]] if task.text_b else None,
            label=label, where=where))
    if skipped:
        print(f"{path}: skipped {skipped} rows with the wrong number of fields", file=sys.stderr)
    if not examples:
        raise DataError(f"{path}: no examples after line {first_line - 1}" + (f" ({skipped} malformed rows skipped)"
                                                                            if skipped else ""))
    return examples


def _columns(task: GlueDataset, path: str, first_row: list[str]) -> tuple[list[str], int]:
    """(column names, line number of the first data row)."""
    if task.headerless_columns is not None and task.text_a not in first_row:
        if len(first_row) != len(task.headerless_columns):
            raise DataError(f"{path}:1: {len(first_row)} fields; a headerless GLUE {task.name} file has "
                            f"{len(task.headerless_columns)} ({list(task.headerless_columns)})")
        return list(task.headerless_columns), 1
    return first_row, 2


def _parse_label(task: GlueDataset, raw: str, where: str) -> int | float:
    if task.labels is None:
        try:
            score = float(raw)
        except ValueError:
            raise DataError(f"{where}: column {task.label_column!r}: {raw!r} is not a number") from None
        if not (math.isfinite(score) and STSB_RANGE[0] <= score <= STSB_RANGE[1]):
            raise DataError(f"{where}: column {task.label_column!r}: score {score} outside {list(STSB_RANGE)}")
        return score
    if raw not in task.labels:
        raise DataError(f"{where}: column {task.label_column!r}: label {raw!r} is not one of {list(task.labels)}")
    return task.labels.index(raw)


def label_array(task: GlueDataset, examples: Sequence[GlueExample]) -> np.ndarray:
    """int32[N] class indices, or float32[N] scores for regression; every example must have a label."""
    missing = [e.where for e in examples if e.label is None]
    if missing:
        raise DataError(f"GLUE {task.name}: {len(missing)} examples have no label (first at {missing[0]}); "
                        "test files have none")
    return np.asarray([e.label for e in examples], dtype=np.float32 if task.is_regression else np.int32)


def glue_features(task: GlueDataset, examples: Sequence[GlueExample], tokenizer: Tokenizer,
                  max_seq_length: int) -> FeatureArrays:
    """`input_ids`, `input_mask`, `segment_ids` [N, T] and, for labeled examples, `label` [N]."""
    arrays = encode_pairs(tokenizer, [e.text_a for e in examples],
                          [e.text_b for e in examples] if task.text_b else None, max_seq_length)
    if examples and all(e.label is not None for e in examples):
        arrays["label"] = label_array(task, examples)
    return arrays
