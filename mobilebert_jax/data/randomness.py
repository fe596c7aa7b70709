"""Counter-based random streams: every draw is a pure function of its coordinates.

A Philox generator keyed by (seed, stream) whose counter starts at
(0, 0, a, b): the draws for coordinates (a, b) - (dupe, document) when making
instances, (epoch, example) when masking - never depend on what was drawn
for other coordinates, on the order of work, or on the number of processes.
"""

from __future__ import annotations

import enum

import numpy as np

_U64 = (1 << 64) - 1


class Stream(enum.IntEnum):
    SPLIT = 1  # which documents are held out for evaluation
    INSTANCES = 2  # segment lengths, pairing, truncation: coordinates (dupe, document)
    MASKS = 3  # masked positions and replacements: coordinates (mask epoch, example)


def rng(seed: int, stream: Stream, a: int = 0, b: int = 0) -> np.random.Generator:
    counter = np.array([0, 0, a & _U64, b & _U64], dtype=np.uint64)
    key = np.array([seed & _U64, int(stream)], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(counter=counter, key=key))
