"""The `config.distill` section: what a distillation stage optimizes, and the reader that checks it.

The values are the experiments': experiments/distill_common.py's `distill(strategy)` writes every field at the
paper's and TF1's settings (REFERENCE sections 3 and 4). A missing field is a ConfigError naming it, but for
three with a neutral meaning: student_init (left out: "", a fresh student), last_phase (None: the run's
total_steps decides) and layer_map ((): the default map below). Every `weights` entry is required.

Fields:
  strategy          progressive | joint | auxiliary | pd (see strategies.py)
  teacher           the teacher's parameters: a trainer workdir (its latest checkpoint), one checkpoint
                    step directory (WORKDIR/checkpoints/N), or a config.json + params.safetensors
                    directory (convert/native.py, e.g. an imported checkpoint)
  student_init      "" = a fresh student (random encoder; see copy_from_teacher); else a path of the
                    same kinds holding the student to start from (PD after a transfer run)
  copy_from_teacher a fresh student gets the teacher's embeddings (not the embedding norm: the teacher
                    has LayerNorm, the student NoNorm) and pretraining heads
  phase_steps       progressive: steps per phase (phase l = step // phase_steps trains layer l)
  last_phase        progressive: the run ends with this phase (0-based); total_steps follows from it,
                    so `--config.distill.last_phase=l` runs one phase at a time in the same workdir
  lower_layer_multiplier  progressive: learning-rate factor of the layers below the current phase
                    (TF1: 0.1 of the current layer's; 0 freezes them)
  train_embedding_norm_in_transfer  whether the student's embedding norm (not copied from the teacher)
                    trains during layer-wise transfer (progressive, joint). False (TF1): its learning rate
                    is 0 until PD, as TF1's LAMB gave rate 0 to every variable outside the encoder layers;
                    True: it trains with layer 0 (progressive) or at the base rate (joint)
  layer_loss_scaling  how each layer's transfer loss is scaled: "tf1" (divided by the number of student
                    layers L, TF1's `extra_loss * factor / num_layers`), "tf2" (layer l's divided by l + 1,
                    0-based, the TF2 Model Garden's per-phase division), "none"
  layer_map         teacher layer (0-based) each student layer learns from; () = the same layer
                    when the depths match, else spread evenly (student layer i -> ceil((i+1) Lt/Ls) - 1)
  include_padding   False: padded positions are left out of the layer losses; True: TF1's means over
                    every position of the padded batch
  student_dropout   TF1 runs the student without dropout during distillation (False)
  teacher_dtype     float32 | bfloat16: how the frozen teacher's parameters are held in device memory and
                    passed to the step (stored checkpoints are cast on load). With the teacher's compute
                    dtype bfloat16 its matmuls and embeddings round the parameters to bfloat16 either way;
                    only the norms' scales and biases and the output biases differ (docs/scale_out.md)
  alpha, temperature  PD's target: alpha * onehot + (1 - alpha) * softmax(teacher logits / temperature)
  weights           feature_map, mean, variance, attention (per layer), mlm (PD), nsp
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mobilebert_jax.errors import ConfigError
from mobilebert_jax import config_schema
from mobilebert_jax.config_schema import Schema

STRATEGIES = ("progressive", "joint", "auxiliary", "pd")
WEIGHT_NAMES = ("feature_map", "mean", "variance", "attention", "mlm", "nsp")
LAYER_WEIGHTS = ("feature_map", "mean", "variance", "attention")
LAYER_LOSS_SCALINGS = ("tf1", "tf2", "none")
FIELDS = ("strategy", "teacher", "student_init", "copy_from_teacher", "phase_steps", "last_phase",
          "lower_layer_multiplier", "train_embedding_norm_in_transfer", "layer_loss_scaling", "layer_map",
          "include_padding", "student_dropout", "alpha", "temperature", "weights", "teacher_dtype")
TEACHER_DTYPES = ("float32", "bfloat16")
WEIGHTS = Schema(fields=WEIGHT_NAMES)
SCHEMA = Schema(fields=FIELDS, optional=dict(student_init="", last_phase=None, layer_map=()),
                sections=dict(weights=WEIGHTS))


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    strategy: str
    teacher: str
    student_init: str
    copy_from_teacher: bool
    phase_steps: int
    last_phase: int | None
    lower_layer_multiplier: float
    train_embedding_norm_in_transfer: bool
    layer_loss_scaling: str
    layer_map: tuple[int, ...]
    include_padding: bool
    student_dropout: bool
    alpha: float
    temperature: float
    weights: dict[str, float]
    teacher_dtype: str

    @property
    def layer_losses(self) -> bool:
        """Whether any per-layer transfer loss is computed (and with a non-zero weight)."""
        return self.strategy != "pd" and any(self.weights[k] > 0 for k in LAYER_WEIGHTS)

    @property
    def pd(self) -> bool:
        return self.strategy in ("auxiliary", "pd")

    def layer_loss_scale(self, layer: int, num_layers: int) -> float:
        """The factor on layer `layer`'s (0-based) weighted transfer loss, of `num_layers` student layers."""
        return {"tf1": 1.0 / num_layers, "tf2": 1.0 / (layer + 1), "none": 1.0}[self.layer_loss_scaling]


def read(cfg: Any, where: str = "config.distill") -> DistillConfig:
    """`config.distill` checked field by field; errors name the field."""
    d = SCHEMA.read(cfg, where)
    if d["strategy"] not in STRATEGIES:
        raise ConfigError(f"{where}.strategy={d['strategy']!r}: choose one of {list(STRATEGIES)}")
    for field in ("teacher", "student_init"):
        if not isinstance(d[field], str):
            raise ConfigError(f"{where}.{field}={d[field]!r}: must be a path string")
    for field in ("copy_from_teacher", "include_padding", "student_dropout", "train_embedding_norm_in_transfer"):
        if not isinstance(d[field], bool):
            raise ConfigError(f"{where}.{field}={d[field]!r}: must be true or false")
    phase_steps = config_schema.step_count(d["phase_steps"], f"{where}.phase_steps", allow_zero=False)
    last_phase = d["last_phase"]
    if last_phase is not None:
        last_phase = config_schema.step_count(last_phase, f"{where}.last_phase")
    lower = config_schema.positive_number(d["lower_layer_multiplier"], f"{where}.lower_layer_multiplier",
                                          allow_zero=True)
    if d["layer_loss_scaling"] not in LAYER_LOSS_SCALINGS:
        raise ConfigError(f"{where}.layer_loss_scaling={d['layer_loss_scaling']!r}: choose one of "
                          f"{list(LAYER_LOSS_SCALINGS)}")
    layer_map = d["layer_map"]
    if isinstance(layer_map, (str, bytes)) or not isinstance(layer_map, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in layer_map):
        raise ConfigError(f"{where}.layer_map={layer_map!r}: must be a list of teacher layer indices")
    alpha = config_schema.positive_number(d["alpha"], f"{where}.alpha", allow_zero=True)
    if alpha > 1:
        raise ConfigError(f"{where}.alpha={alpha!r}: must be in [0, 1]")
    temperature = config_schema.positive_number(d["temperature"], f"{where}.temperature")
    if d["teacher_dtype"] not in TEACHER_DTYPES:
        raise ConfigError(f"{where}.teacher_dtype={d['teacher_dtype']!r}: choose one of {list(TEACHER_DTYPES)}")
    weights = WEIGHTS.read(d["weights"], f"{where}.weights")
    weights = {k: config_schema.positive_number(v, f"{where}.weights.{k}", allow_zero=True) for k, v in weights.items()}
    return DistillConfig(strategy=d["strategy"], teacher=d["teacher"], student_init=d["student_init"],
                         copy_from_teacher=d["copy_from_teacher"], phase_steps=phase_steps, last_phase=last_phase,
                         lower_layer_multiplier=lower,
                         train_embedding_norm_in_transfer=d["train_embedding_norm_in_transfer"],
                         layer_loss_scaling=d["layer_loss_scaling"], layer_map=tuple(layer_map),
                         include_padding=d["include_padding"], student_dropout=d["student_dropout"], alpha=alpha,
                         temperature=temperature, weights=weights, teacher_dtype=d["teacher_dtype"])
