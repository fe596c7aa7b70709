"""GLUE from TFDS `glue/*`: the same examples the TSV reader gives, labels mapped by name.

TFDS numbers MNLI's classes (entailment, neutral, contradiction) unlike the
GLUE files (contradiction, entailment, neutral), and names the binary
classes where the files write 0/1; every TFDS class name is mapped onto
`task.labels` here. Test splits carry label -1 in TFDS and become unlabeled.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from mobilebert_jax.errors import DataError
from mobilebert_jax.finetune.glue import STSB_RANGE, GlueExample, GlueDataset
from mobilebert_jax.data.tfds_reader import SourceOpener, as_text, field, open_tfds_source


@dataclasses.dataclass(frozen=True)
class TfdsLayout:
    config: str  # glue/<config>
    text_a: str
    text_b: Optional[str]
    label_names: Optional[tuple[str, ...]]  # TFDS's class names in its own order; None for STS-B
    to_task_label: Optional[dict[str, str]]  # TFDS class name -> the task's label


LAYOUTS: dict[str, TfdsLayout] = {
    "cola": TfdsLayout("cola", "sentence", None, ("unacceptable", "acceptable"),
                       {"unacceptable": "0", "acceptable": "1"}),
    "sst2": TfdsLayout("sst2", "sentence", None, ("negative", "positive"), {"negative": "0", "positive": "1"}),
    "mrpc": TfdsLayout("mrpc", "sentence1", "sentence2", ("not_equivalent", "equivalent"),
                       {"not_equivalent": "0", "equivalent": "1"}),
    "stsb": TfdsLayout("stsb", "sentence1", "sentence2", None, None),
    "qqp": TfdsLayout("qqp", "question1", "question2", ("not_duplicate", "duplicate"),
                      {"not_duplicate": "0", "duplicate": "1"}),
    "mnli": TfdsLayout("mnli", "premise", "hypothesis", ("entailment", "neutral", "contradiction"),
                       {"entailment": "entailment", "neutral": "neutral", "contradiction": "contradiction"}),
    "qnli": TfdsLayout("qnli", "question", "sentence", ("entailment", "not_entailment"),
                       {"entailment": "entailment", "not_entailment": "not_entailment"}),
    "rte": TfdsLayout("rte", "sentence1", "sentence2", ("entailment", "not_entailment"),
                      {"entailment": "entailment", "not_entailment": "not_entailment"}),
    # GLUE's WNLI files write 1 for entailment.
    "wnli": TfdsLayout("wnli", "sentence1", "sentence2", ("not_entailment", "entailment"),
                       {"not_entailment": "0", "entailment": "1"}),
}
SPLITS = {"train": "train", "dev": "validation", "test": "test", "dev_matched": "validation_matched",
          "dev_mismatched": "validation_mismatched", "test_matched": "test_matched",
          "test_mismatched": "test_mismatched"}


def tfds_split(task: GlueDataset, split: str) -> str:
    known = ("train", *task.eval_splits, *task.test_splits)
    if split not in known:
        raise DataError(f"GLUE {task.name} has no split {split!r}; choose one of {list(known)}")
    return SPLITS[split]


def read_tfds(task: GlueDataset, split: str, data_dir: Optional[str] = None, *,
              open_source: SourceOpener = open_tfds_source) -> list[GlueExample]:
    """Examples of `glue/<task>` split `split` (this project's split names: train, dev, dev_matched, test...)."""
    layout = LAYOUTS[task.name]
    name = f"glue/{layout.config}"
    tfds_name = tfds_split(task, split)
    source = open_source(name, tfds_name, data_dir)
    examples = []
    for i in range(len(source)):
        example = source[i]
        where = f"tfds:{name}:{tfds_name}[{i}]"
        text_b = as_text(field(example, layout.text_b, where), f"{where}.{layout.text_b}") if layout.text_b else None
        examples.append(GlueExample(
            guid=str(int(field(example, "idx", where))),
            text_a=as_text(field(example, layout.text_a, where), f"{where}.{layout.text_a}"),
            text_b=text_b,
            label=_label(task, layout, field(example, "label", where), f"{where}.label"),
            where=where))
    return examples


def _label(task: GlueDataset, layout: TfdsLayout, raw, where: str):
    if layout.label_names is None:
        score = float(raw)
        if score == -1.0:  # TFDS marks the unlabeled test split
            return None
        if not STSB_RANGE[0] <= score <= STSB_RANGE[1]:
            raise DataError(f"{where}: score {score} outside {list(STSB_RANGE)}")
        return score
    index = int(raw)
    if index == -1:
        return None
    if not 0 <= index < len(layout.label_names):
        raise DataError(f"{where}: label {index} is not a class of {layout.label_names}")
    return task.labels.index(layout.to_task_label[layout.label_names[index]])
