"""Batches of in-memory feature arrays: a resumable shuffled training stream and padded evaluation passes.

Every process reads the same arrays and takes its own contiguous slice of
each global batch, as `partitioning.make_global_batch` expects.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from mobilebert_jax.errors import ConfigError

Arrays = dict[str, np.ndarray]


def _check(arrays: Arrays, global_batch_size: int, process_index: int, process_count: int) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"feature arrays differ in length: {lengths}")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} does not split evenly over {process_count} processes")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} outside [0, {process_count})")
    return next(iter(lengths.values()))


class ShuffledBatches:
    """Endless training batches: a fresh permutation per epoch (from seed and epoch), the last partial
    batch of an epoch dropped. `get_state`/`set_state` resume at the exact batch."""

    def __init__(self, arrays: Arrays, global_batch_size: int, *, seed: int, process_index: int = 0,
                 process_count: int = 1):
        n = _check(arrays, global_batch_size, process_index, process_count)
        if n < global_batch_size:
            raise ConfigError(f"{n} training examples are fewer than one global batch of {global_batch_size} "
                              f"(config.batch_size)")
        self._arrays, self._batch, self._seed = arrays, global_batch_size, seed
        self._local = global_batch_size // process_count
        self._offset = process_index * self._local
        self._batches_per_epoch = n // global_batch_size
        self._epoch, self._index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self._seed, epoch]).permutation(len(next(iter(self._arrays.values()))))

    @property
    def batches_per_epoch(self) -> int:
        return self._batches_per_epoch

    def __iter__(self) -> "ShuffledBatches":
        return self

    def __next__(self) -> Arrays:
        if self._index == self._batches_per_epoch:
            self._epoch, self._index = self._epoch + 1, 0
            self._order = self._permutation(self._epoch)
        start = self._index * self._batch + self._offset
        rows = self._order[start:start + self._local]
        self._index += 1
        return {k: v[rows] for k, v in self._arrays.items()}

    def get_state(self) -> dict:
        return {"epoch": self._epoch, "batch": self._index}

    def set_state(self, state: dict) -> None:
        epoch, index = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= index <= self._batches_per_epoch:
            raise ValueError(f"data state {state} does not fit {self._batches_per_epoch} batches per epoch")
        self._epoch, self._index = epoch, index
        self._order = self._permutation(epoch)


def padded_batches(arrays: Arrays, global_batch_size: int, *, process_index: int = 0,
                   process_count: int = 1) -> Iterator[Arrays]:
    """One pass in order; the last batch is padded with zero rows, and `example_weight` is 0 on them."""
    n = _check(arrays, global_batch_size, process_index, process_count)
    local = global_batch_size // process_count
    for start in range(0, n, global_batch_size):
        lo = start + process_index * local
        batch = {}
        for key, value in arrays.items():
            part = value[lo:lo + local]
            pad = np.zeros((local - len(part), *value.shape[1:]), value.dtype)
            batch[key] = np.concatenate([part, pad])
        real = max(0, min(local, n - lo))
        batch["example_weight"] = (np.arange(local) < real).astype(np.float32)
        yield batch
