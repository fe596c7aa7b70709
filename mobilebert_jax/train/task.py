"""What a training stage plugs into the generic loop.

The trainer knows meshes, checkpoints, logging and the step; a Task knows
its model, its objective (as additive sums, see `step.py`) and its data.
Pretraining, distillation and fine-tuning are Tasks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Optional, Protocol

import jax

from mobilebert_jax.train import losses
from mobilebert_jax.train.step import Batch, Sums, SumsFn, pretraining_loss, pretraining_totals


class StatefulIterator(Protocol):
    """A host-local batch iterator whose position can be saved and restored exactly."""

    def __next__(self) -> dict: ...

    def __iter__(self): ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


@dataclasses.dataclass
class Task:
    name: str
    # rng -> the optimized parameter tree, boxed with logical axis names.
    init_params: Callable[[jax.Array], Any]
    # deterministic -> sums_fn(params, batch, rng).
    make_sums_fn: Callable[[bool], SumsFn]
    train_iterator: StatefulIterator
    # A fresh pass over the held-out split (None: no evaluation).
    make_eval_iterator: Optional[Callable[[], Iterator[dict]]]
    tokens_per_example: int
    # Forward + backward model FLOPs of one training example (for FLOP/s and MFU).
    train_flops_per_example: int
    totals_fn: Callable[[Batch], dict] = pretraining_totals
    loss_fn: Callable[[Sums, dict], jax.Array] = pretraining_loss
    summarize_fn: Callable[[Sums], dict] = losses.summarize
    progress_keys: tuple[str, ...] = ("loss", "mlm_accuracy")
    describe: Callable[[], str] = lambda: ""
    # The objective takes a 4th argument, a `StepContext` (the step and the frozen tree).
    uses_context: bool = False
    # Parameters the objective uses but never trains (a distillation teacher):
    # the boxed abstract tree (for shardings), and a loader that returns the
    # tree placed with the given shardings. Not checkpointed with the run: it
    # is loaded again from its own source on resume.
    frozen_abstract: Any = None
    load_frozen: Optional[Callable[[Any], Any]] = None
    # Called once on a fresh start (never on resume) with the initialized
    # parameters, the frozen tree (or None) and the parameters' shardings;
    # returns the parameters to start from, placed with those shardings (a
    # student taking the teacher's embeddings, or the student an earlier stage
    # produced). The optimizer state is then initialized from the result.
    initial_params: Optional[Callable[[Any, Any, Any], Any]] = None
    # step -> extra scalars computed inside the jitted train step and logged
    # with its metrics (a distillation run's stage, its per-layer learning-rate
    # multipliers).
    step_metrics_fn: Optional[Callable[[jax.Array], dict]] = None
