"""A stage: everything the project knows about one kind of run, behind one object.

The trainer knows meshes, checkpoints, logging and the step; a stage knows
its model, its `Objective` (train/objective.py), its inputs, what it takes
from the models it starts from and how its finished runs are scored. Every
command asks the stage (looked up in `stages.STAGES`), none tests its name:

  inherit(config)                 in place, before anything compiles: what the run takes from the models it
                                  starts from (the init checkpoint's model fields, their tokenizer).
  spec(config) -> Spec            pure: shapes and configs, no file read. All the trainer needs to build
                                  the jitted program (`trainer.build_program`), and so all the ahead-of-time
                                  compiler needs (tools/aot_compile.py).
  read(config, workdir, spec)     the I/O: opens and checks the parameter sources (model_source), prepares
      -> StageIO                  and opens the data.
  scoring: Scoring                a finished run's model, evaluation, held-out and calibration data, labels
                                  (finished_run.py; the evaluate, quantization and export commands). None: the
                                  stage's runs are read as models (model_source), not scored as tasks.

Pretraining (pretraining/stage.py), distillation (distill/stage.py) and
fine-tuning (finetune/stage.py) are Stages.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mobilebert_jax import model_source
from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.config_schema import Schema
from mobilebert_jax.checkpointing import StatefulIterator
from mobilebert_jax.train.objective import Objective


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
    # run's phase in progressive transfer, its per-layer learning-rate multipliers).
    step_metrics: Optional[Callable[[jax.Array], dict]] = None
    # The configs of the models the step runs (the trained one first, then a frozen teacher).
    models: tuple[MobileBertConfig, ...] = ()
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
class FinishedRun:
    """A finished run as its workdir alone holds it (finished_run.load): no init checkpoint or outside tokenizer."""
    workdir: str
    config: ml_collections.ConfigDict
    model: nn.Module  # unrolled layers, whatever the run scanned
    params: Any  # numpy, the model's own tree
    tokenizer: str  # the spec of the run's recorded tokenizer copy


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """A finished run's held-out split as its model takes it, and how to read the model's outputs on it."""
    name: str  # for reports, e.g. "SST-2 dev"
    arrays: dict[str, np.ndarray]  # the model inputs (input_ids, input_mask, segment_ids) and whatever `score` needs
    # The model's outputs on every row of `arrays` (numpy, by output name) -> the stage's metrics.
    score: Callable[[dict[str, np.ndarray]], dict[str, float]]
    # The same outputs -> one prediction per row, compared between float and int8 forms (agreement).
    predictions: Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Scoring:
    """What evaluation, quantization and export need of a stage's finished runs."""
    # The run's model from its resolved config; unrolled=True whatever config.model.scan_layers says.
    model: Callable[[ml_collections.ConfigDict, bool], nn.Module]
    # (run, output_dir, batch_size) -> the official metrics; writes the stage's prediction files into output_dir.
    evaluate: Callable[[FinishedRun, str, int], dict]
    held_out: Callable[[FinishedRun], HeldOut]
    # (run, count, seq_len) -> model inputs of `count` training examples drawn with the run's seed.
    calibration: Callable[[FinishedRun, int, int], dict[str, np.ndarray]]
    # The run's class names (an app's labels file), None where the outputs are not classes.
    labels: Callable[[ml_collections.ConfigDict], Optional[list[str]]]


def inherits_nothing(config: ml_collections.ConfigDict) -> None:
    del config


@dataclasses.dataclass(frozen=True)
class Stage:
    spec: Callable[[ml_collections.ConfigDict], Spec]
    read: Callable[[ml_collections.ConfigDict, str, Spec], StageIO]
    inherit: Callable[[ml_collections.ConfigDict], None] = inherits_nothing
    scoring: Optional[Scoring] = None
    # The schemas of the config sections the stage reads beyond the trainer's (trainer.SECTIONS), by name: a
    # resumed run takes a field its recorded config lacks at the schema's default.
    sections: Mapping[str, Schema] = dataclasses.field(default_factory=dict)
    # config -> the name of the panels its run's curves.png has (a layout of plot.LAYOUTS); called by the trainer
    # and, from the recorded config.json, by `python -m mobilebert_jax.plot`, so it reads only config fields.
    curves: Callable[[ml_collections.ConfigDict], str] = standard_curves

    def open(self, config: ml_collections.ConfigDict, workdir: str) -> StageIO:
        """Everything that can be wrong with the config is reported by `spec`, before any I/O."""
        return self.read(config, workdir, self.spec(config))
