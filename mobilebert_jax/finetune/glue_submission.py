"""Test-set predictions in the GLUE submission format: one `<Task>.tsv` per test split, `index<TAB>prediction`.

Classification tasks write the label as the GLUE files spell it (0/1 or
entailment, ...); STS-B writes its score clipped to [0, 5] with three decimals.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.errors import DataError
from mobilebert_jax.finetune.glue import STSB_RANGE, GlueExample, GlueDataset


def format_prediction(task: GlueDataset, prediction) -> str:
    if task.is_regression:
        return f"{float(np.clip(prediction, *STSB_RANGE)):.3f}"
    index = int(prediction)
    if not 0 <= index < len(task.labels):
        raise ValueError(f"GLUE {task.name}: class index {index} outside [0, {len(task.labels)})")
    return task.labels[index]


def write_submission(task: GlueDataset, split: str, examples: Sequence[GlueExample], preds_N: np.ndarray,
                     output_dir: str) -> str:
    """Writes `output_dir/<file>` for test split `split`; returns its path."""
    if split not in task.test_splits:
        raise DataError(f"GLUE {task.name}: {split!r} is not a test split ({list(task.test_splits)})")
    if len(examples) != len(preds_N):
        raise ValueError(f"GLUE {task.name} {split}: {len(examples)} examples but {len(preds_N)} predictions")
    storage.path(output_dir).mkdir(parents=True, exist_ok=True)
    path = os.path.join(output_dir, task.test_splits[split])
    lines = [f"{example.guid}\t{format_prediction(task, prediction)}\n" for example, prediction in zip(examples, preds_N)]
    storage.path(path).write_text("index\tprediction\n" + "".join(lines), encoding="utf-8")
    return path
