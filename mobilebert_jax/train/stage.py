"""What a training stage plugs into the generic loop, built in two parts.

The trainer knows meshes, checkpoints, logging and the step; a stage knows
its model, its `Objective` (train/objective.py) and its inputs. A `Stage`
is built in two parts:

  spec(config) -> Spec            pure: shapes and configs, no file read. All the trainer needs to build
                                  the jitted program (`trainer.build_program`), and so all the ahead-of-time
                                  compiler needs (tools/aot_compile.py).
  read(config, workdir, spec)     the I/O: opens and checks the parameter sources (model_source), prepares
      -> StageIO                     and opens the data.

Pretraining (pretraining/stage.py), distillation (distill/stage.py) and
fine-tuning (finetune/stage.py) are Stages; `main.STAGES` names them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol

import jax
import ml_collections

from mobilebert_jax import model_source
from mobilebert_jax.train.objective import Objective


class StatefulIterator(Protocol):
    """A host-local batch iterator whose position can be saved and restored exactly."""

    def __next__(self) -> dict: ...

    def __iter__(self): ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


@dataclasses.dataclass(frozen=True)
class Spec:
    """A stage as shapes and configs, built from the config alone."""
    name: str
    objective: Objective
    # rng -> the optimized parameter tree, boxed with logical axis names.
    init_params: Callable[[jax.Array], Any]
    # One example of a batch (the arrays without their batch axis): what the compiled step takes.
    example: dict[str, jax.ShapeDtypeStruct]
    tokens_per_example: int
    # Forward + backward model FLOPs of one training example (for FLOP/s and MFU).
    train_flops_per_example: int
    # Parameters the objective uses but never trains (a distillation teacher), as the step receives them:
    # boxed abstract (logical axis names kept, for shardings), None without. Not checkpointed with the run.
    frozen_abstract: Any = None
    # step -> extra scalars computed inside the jitted step and logged with its metrics (a distillation
    # run's stage, its per-layer learning-rate multipliers).
    step_metrics: Optional[Callable[[jax.Array], dict]] = None
    # (metrics, step) -> the parts of the terminal line for a training step's or an evaluation's metrics
    # ("loss 0.012", ...), for an objective with more metrics than a line holds (metrics_writer.LINE_WIDTH).
    # None: the objective's progress_keys on progress lines, every metric on evaluation lines.
    summary: Optional[Callable[[Mapping[str, float], int], list[str]]] = None


@dataclasses.dataclass(frozen=True)
class StageIO:
    """A stage ready to run: its spec, its data and the parameter sources it reads."""
    spec: Spec
    describe: str  # one line for the run's log: the model, where its inputs come from
    train_iterator: StatefulIterator
    # A fresh pass over the held-out split (None: no evaluation).
    eval_batches: Optional[Callable[[], Iterator[dict]]]
    # The source of the frozen tree (spec.frozen_abstract), read again on every start and resume.
    frozen_source: Optional[model_source.Source] = None
    # On a fresh start (never on resume): (initialized parameters, frozen tree or None, the parameters'
    # shardings) -> the parameters to start from, placed with those shardings (a student taking the
    # teacher's embeddings or an earlier stage's student, a fine-tuned model its pretrained backbone).
    start_from: Optional[Callable[[Any, Any, Any], Any]] = None


def standard_curves(config: ml_collections.ConfigDict) -> str:
    del config
    return "standard"


@dataclasses.dataclass(frozen=True)
class Stage:
    spec: Callable[[ml_collections.ConfigDict], Spec]
    read: Callable[[ml_collections.ConfigDict, str, Spec], StageIO]
    # config -> the name of the panels its run's curves.png has (a layout of plot.LAYOUTS); called by the trainer
    # and, from the recorded config.json, by `python -m mobilebert_jax.plot`, so it reads only config fields.
    curves: Callable[[ml_collections.ConfigDict], str] = standard_curves

    def open(self, config: ml_collections.ConfigDict, workdir: str) -> StageIO:
        """Everything that can be wrong with the config is reported by `spec`, before any I/O."""
        return self.read(config, workdir, self.spec(config))
