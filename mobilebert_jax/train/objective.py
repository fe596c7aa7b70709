"""The one shape every training objective has: additive sums, whole-batch totals, a loss and a summary.

Pretraining (`pretraining/stage.py`), distillation (`distill/objective.py`) and
fine-tuning (`finetune/objectives.py`) each implement `Objective`; the train and
eval steps (`train/step.py`) and the evaluation loop know nothing else about
them. Because `sums` are additive and `loss` divides them by the *whole*
batch's `totals`, accumulating over microbatches equals the big-batch step,
and adding sums over evaluation batches before `summarize` gives exact
held-out means.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.struct
import jax

Batch = dict[str, jax.Array]
Sums = dict[str, jax.Array]


@flax.struct.dataclass
class StepContext:
    """What every objective is given besides parameters and batch."""
    step: jax.Array  # the step being taken (0-based); a progressive distillation's phase follows from it
    frozen: Any = None  # parameters used but never trained (a teacher); no gradient, no optimizer state


class Objective(Protocol):
    # Summary keys shown on the progress line (the rest go to the metrics files).
    progress_keys: tuple[str, ...]

    def sums(self, params: Any, batch: Batch, rng: jax.Array, context: StepContext, *, train: bool) -> Sums:
        """Additive per-batch sums; `train=False` is evaluation (no dropout; what is scored may differ)."""

    def totals(self, batch: Batch) -> dict[str, jax.Array]:
        """The whole batch's denominators, computed before it is split into microbatches."""

    def loss(self, sums: Sums, totals: dict[str, jax.Array]) -> jax.Array:
        """The scalar differentiated."""

    def summarize(self, sums: Sums) -> dict[str, jax.Array]:
        """Sums added over a batch (or several) -> the logged means, including "loss"."""
