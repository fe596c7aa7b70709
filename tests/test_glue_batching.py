"""Fine-tuning batches: shuffled, resumable, split over processes; padded evaluation passes; batched prediction."""

from __future__ import annotations

import numpy as np
import pytest

from mobilebert_jax.finetune.batching import ShuffledBatches, padded_batches
from mobilebert_jax.finetune.prediction import predict


def _arrays(n=10):
    return {"input_ids": np.arange(n * 3, dtype=np.int32).reshape(n, 3), "label": np.arange(n, dtype=np.int32)}


def test_epochs_are_permutations_and_the_partial_batch_is_dropped():
    batches = ShuffledBatches(_arrays(), 4, seed=1)
    assert batches.batches_per_epoch == 2
    epochs = [np.concatenate([next(batches)["label"] for _ in range(2)]) for _ in range(3)]
    for epoch in epochs:
        assert len(set(epoch)) == 8  # 8 distinct examples, 2 left out this epoch
    assert not np.array_equal(epochs[0], epochs[1])
    # The same seed gives the same stream; another seed another.
    assert np.array_equal(next(ShuffledBatches(_arrays(), 4, seed=1))["label"], epochs[0][:4])
    assert not np.array_equal(next(ShuffledBatches(_arrays(), 4, seed=2))["label"], epochs[0][:4])


def test_state_resumes_at_the_exact_batch():
    reference = ShuffledBatches(_arrays(), 4, seed=3)
    stream = [next(reference)["label"] for _ in range(7)]
    resumed = ShuffledBatches(_arrays(), 4, seed=3)
    for _ in range(3):
        next(resumed)
    state = resumed.get_state()
    fresh = ShuffledBatches(_arrays(), 4, seed=3)
    fresh.set_state(state)
    assert all(np.array_equal(next(fresh)["label"], expected) for expected in stream[3:])
    with pytest.raises(ValueError, match="does not fit 2 batches per epoch"):
        fresh.set_state({"epoch": 0, "batch": 5})


def test_processes_take_disjoint_slices_of_each_global_batch():
    whole = next(ShuffledBatches(_arrays(), 4, seed=0))["label"]
    parts = [next(ShuffledBatches(_arrays(), 4, seed=0, process_index=i, process_count=2))["label"] for i in (0, 1)]
    assert np.array_equal(np.concatenate(parts), whole)
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        ShuffledBatches(_arrays(), 4, seed=0, process_count=3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShuffledBatches(_arrays(3), 4, seed=0)


def test_padded_batches_mark_padding_and_prediction_trims_it():
    batches = list(padded_batches(_arrays(), 4))
    assert len(batches) == 3 and all(len(b["label"]) == 4 for b in batches)
    np.testing.assert_array_equal(batches[-1]["example_weight"], [1, 1, 0, 0])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:10], np.arange(10))
    calls = []

    def fn(batch):
        calls.append(batch["input_ids"].shape)
        return {"total": batch["input_ids"].sum(axis=1)}

    arrays = {"input_ids": _arrays()["input_ids"], "input_mask": np.ones((10, 3)), "segment_ids": np.zeros((10, 3))}
    out = predict(fn, arrays, 4)
    assert calls == [(4, 3)] * 3  # one shape: one compile
    np.testing.assert_array_equal(out["total"], arrays["input_ids"].sum(axis=1))
