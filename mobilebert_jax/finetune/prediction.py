"""Running a jitted model function over feature arrays in fixed-size batches (one compile), outputs trimmed."""

from __future__ import annotations

from typing import Callable

import numpy as np

from mobilebert_jax.finetune.batching import padded_batches

MODEL_INPUTS = ("input_ids", "input_mask", "segment_ids")


def predict(fn: Callable[[dict], dict], arrays: dict[str, np.ndarray], batch_size: int,
            inputs: tuple[str, ...] = MODEL_INPUTS) -> dict[str, np.ndarray]:
    """Concatenated outputs of `fn(batch)` (a dict of [B, ...] arrays) for every row of `arrays`."""
    n = len(arrays[inputs[0]])
    outputs: dict[str, list[np.ndarray]] = {}
    for batch in padded_batches({k: arrays[k] for k in inputs}, batch_size):
        for key, value in fn({k: batch[k] for k in inputs}).items():
            outputs.setdefault(key, []).append(np.asarray(value))
    return {k: np.concatenate(v)[:n] for k, v in outputs.items()}
