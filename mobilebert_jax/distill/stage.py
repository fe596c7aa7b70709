"""The distillation stage for the generic trainer (train/stage.py).

The teacher is the trainer's frozen tree: loaded from its checkpoint with its
own shardings, passed to the jitted step as an argument, run without
dropout, never differentiated and never given optimizer state. The student
is the trained parameter tree; a fresh student takes the teacher's
embeddings and heads (strategies.COPIED_FROM_TEACHER), a later run (PD after
transfer) starts from the student an earlier one produced (`config.distill.student_init`).
"""

from __future__ import annotations

import re
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util

from mobilebert_jax import flops, model_source, partitioning
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.data import config as data_config
from mobilebert_jax.data import tokenizer_record
from mobilebert_jax.distill import config as distill_config
from mobilebert_jax.distill import layers, strategies
from mobilebert_jax.distill.objective import DistillationObjective
from mobilebert_jax.modeling import MobileBertForPreTraining
from mobilebert_jax.optim import builder as optim_builder
from mobilebert_jax.optim import multipliers
from mobilebert_jax.pretraining.stage import check_sequence_length, pretraining_data, pretraining_example
from mobilebert_jax.train.stage import Spec, Stage, StatefulIterator, StageIO


def teacher_config(config: ml_collections.ConfigDict) -> MobileBertConfig:
    if "teacher_model" not in config:
        raise ConfigError("config.teacher_model is required: the teacher's MobileBertConfig fields")
    return MobileBertConfig.from_dict(config.teacher_model.to_dict())


def _abstract_params(model: MobileBertForPreTraining, seq_len: int):
    """Boxed abstract parameters (logical axis names kept, for shardings)."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, seq_len), jnp.int32))["params"])


def _copied_paths(student_shapes: dict, teacher_shapes: dict) -> list[str]:
    """Student parameter paths a fresh student takes from the teacher; shapes must agree."""
    patterns = [re.compile(p) for p in strategies.COPIED_FROM_TEACHER]
    copied = [k for k in sorted(student_shapes) if any(p.search(k) for p in patterns)]
    for k in copied:
        if teacher_shapes.get(k) != student_shapes[k]:
            raise ConfigError(f"config.distill.copy_from_teacher: parameter {k!r} has shape {student_shapes[k]} in the "
                              f"student (config.model) but {teacher_shapes.get(k)} in the teacher "
                              f"(config.teacher_model); set copy_from_teacher=False or match the embedding and "
                              f"head sizes")
    return copied


def copy_from_teacher(student_params, teacher_params, copied: list[str]):
    flat = traverse_util.flatten_dict(student_params, sep="/")
    teacher_flat = traverse_util.flatten_dict(teacher_params, sep="/")
    # A bfloat16 teacher (config.distill.teacher_dtype) still hands the student float32 parameters.
    flat.update({k: teacher_flat[k].astype(flat[k].dtype) for k in copied})
    return traverse_util.unflatten_dict(flat, sep="/")


def layer_multipliers(opt_cfg, abstract_params, num_layers: int):
    """step -> {lr_multiplier/layer_i: factor}: each encoder layer's learning-rate multiplier."""
    groups = optim_builder.parse_groups(opt_cfg.groups, "config.optimizer.groups")
    excluded = [re.compile(p) for p in opt_cfg.exclude]
    layer_paths = strategies.first_layer_paths(abstract_params)
    rules: dict[int, float | multipliers.Multiplier] = {}
    for i in range(num_layers):
        path = layer_paths[i]
        group = next((g for g in groups if g.pattern.search(path)), None)
        rules[i] = 0.0 if any(r.search(path) for r in excluded) else (1.0 if group is None else group.multiplier)

    def step_metrics(step: jax.Array) -> dict[str, jax.Array]:
        return {f"lr_multiplier/layer_{i}": jnp.asarray(r(step) if callable(r) else r, jnp.float32)
                for i, r in rules.items()}

    return step_metrics


def _abstract_shapes(abstract_params) -> dict[str, tuple[int, ...]]:
    return model_source.flat_shapes(partitioning.unbox_without_constraints(abstract_params))


def spec(config: ml_collections.ConfigDict) -> Spec:
    """Every check of the config (models, layer map, schedule, optimizer groups) and the shapes; no file read."""
    d = distill_config.read(config.distill)
    student_cfg = MobileBertConfig.from_dict(config.model.to_dict())
    teacher_cfg = teacher_config(config)
    layers.check_comparable(student_cfg, teacher_cfg, features=d.layer_losses,
                            attention=d.layer_losses and d.weights["attention"] > 0, logits=d.pd and d.alpha < 1)
    layer_map = layers.resolve_layer_map(d.layer_map, student_cfg, teacher_cfg) if d.layer_losses else ()
    num_layers = student_cfg.num_hidden_layers
    if d.strategy == "progressive":
        if config.total_steps > num_layers * d.phase_steps:
            raise ConfigError(f"config.total_steps={config.total_steps} exceeds the {num_layers} progressive phases of "
                              f"config.distill.phase_steps={d.phase_steps} steps ({num_layers * d.phase_steps})")

    student = MobileBertForPreTraining(student_cfg)
    teacher = MobileBertForPreTraining(teacher_cfg)
    data = data_config.read(config.data)
    seq_len, predictions = data.max_seq_length, data.max_predictions_per_seq
    check_sequence_length(seq_len, student_cfg, "config.model")
    check_sequence_length(seq_len, teacher_cfg, "config.teacher_model")
    student_abstract = _abstract_params(student, seq_len)
    teacher_abstract = _abstract_params(teacher, seq_len)
    # The frozen tree as the step receives it: boxes (logical names) kept, parameters in config.distill.teacher_dtype.
    frozen_abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(d.teacher_dtype)),
                                   teacher_abstract)
    if d.strategy == "progressive":
        strategies.check_progressive_groups(config.optimizer, student_abstract, num_layers, d.phase_steps)
    if d.strategy in ("progressive", "joint"):
        strategies.check_embedding_norm(config.optimizer, student_abstract, d.train_embedding_norm_in_transfer)
    if not d.student_init and d.copy_from_teacher:
        _copied_paths(_abstract_shapes(student_abstract), _abstract_shapes(teacher_abstract))

    multiplier_metrics = layer_multipliers(config.optimizer, student_abstract, num_layers)

    def step_metrics(step: jax.Array) -> dict[str, jax.Array]:
        out = multiplier_metrics(step)
        if d.strategy == "progressive":
            out["phase"] = strategies.phase_of(step, d.phase_steps).astype(jnp.float32)
        return out

    objective = DistillationObjective(distill=d, num_layers=num_layers, layer_map=layer_map, student=student,
                                      teacher=teacher)
    # The teacher's forward pass is a third of its training FLOPs.
    teacher_flops = flops.pretraining_train_flops_per_sequence(teacher_cfg, seq_len, predictions) // 3
    return Spec(
        name=f"distillation ({d.strategy})",
        objective=objective,
        init_params=lambda rng: student.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"],
        example=pretraining_example(seq_len, predictions),
        tokens_per_example=seq_len,
        train_flops_per_example=flops.pretraining_train_flops_per_sequence(student_cfg, seq_len, predictions)
        + teacher_flops,
        frozen_abstract=frozen_abstract,
        step_metrics=step_metrics,
        models=(student_cfg, teacher_cfg),
        summary=objective.summary if d.layer_losses else None,
    )


def inherit(config: ml_collections.ConfigDict) -> None:
    """`config.data.tokenizer` must be the teacher's and the student_init's; empty, it becomes their recorded copy."""
    spec = config.data.get("tokenizer") or ""
    for name, model_field in (("teacher", "teacher_model"), ("student_init", "model")):
        if config.distill.get(name):
            where = f"config.distill.{name}"
            source = model_source.open_source(config.distill[name], where)
            spec = tokenizer_record.choose(spec, "config.data.tokenizer", source.tokenizer, source.tokenizer_dir,
                                          f"{where}={config.distill[name]!r}", config[model_field].vocab_size,
                                          f"config.{model_field}.vocab_size")
    if spec:
        with config.unlocked():
            config.data.tokenizer = spec


def read(config: ml_collections.ConfigDict, workdir: str, stage_spec: Spec) -> StageIO:
    """Opens and checks the teacher (and the student to start from), before any data work; then the data."""
    return with_data(config, stage_spec, lambda: pretraining_data(config, workdir))


def with_data(config: ml_collections.ConfigDict, stage_spec: Spec,
              make_data: Callable[[], tuple[StatefulIterator, Optional[Callable]]]) -> StageIO:
    """`read` with the data from `make_data`, called once both parameter sources have passed their checks."""
    d = distill_config.read(config.distill)
    student_cfg = MobileBertConfig.from_dict(config.model.to_dict())
    student_abstract = jax.eval_shape(stage_spec.init_params, jax.random.key(0))
    student_shapes = _abstract_shapes(student_abstract)
    teacher_shapes = _abstract_shapes(stage_spec.frozen_abstract)
    if not d.teacher:  # the pure part needs only config.teacher_model: an ahead-of-time compile names no teacher
        raise ConfigError("config.distill.teacher is required: a teacher workdir, checkpoint step directory or "
                          "params directory")
    teacher_source = model_source.open_source(d.teacher, "config.distill.teacher")
    model_source.check_architecture(teacher_source, teacher_config(config), teacher_shapes, "config.distill.teacher",
                                    "config.teacher_model")
    student_source = None
    copied: list[str] = []
    if d.student_init:
        student_source = model_source.open_source(d.student_init, "config.distill.student_init")
        model_source.check_architecture(student_source, student_cfg, student_shapes, "config.distill.student_init",
                                        "config.model")
    elif d.copy_from_teacher:
        copied = _copied_paths(student_shapes, teacher_shapes)

    def start_from(params, frozen, shardings):
        if student_source is not None:
            return model_source.read(student_source, partitioning.with_shardings(student_abstract, shardings))
        if copied:
            return jax.jit(lambda p, t: copy_from_teacher(p, t, copied), out_shardings=shardings,
                           donate_argnums=0)(params, frozen)
        return params

    train_iterator, eval_batches = make_data()
    teacher_cfg, layer_map = teacher_config(config), stage_spec.objective.layer_map
    describe = (f"student {flops.parameter_count(student_cfg):,} backbone parameters, "
                f"{student_cfg.num_hidden_layers} layers; teacher {flops.parameter_count(teacher_cfg):,}, "
                f"{teacher_cfg.num_hidden_layers} layers from {teacher_source.path}; layer map {list(layer_map)}")
    return StageIO(spec=stage_spec, describe=describe, train_iterator=train_iterator, eval_batches=eval_batches,
                frozen_source=teacher_source, start_from=start_from)


def curves(config: ml_collections.ConfigDict) -> str:
    """Layer-wise transfer gets per-layer distance heat maps and learning rates (plot.py); PD the standard panels."""
    return "layer_transfer" if distill_config.read(config.distill).layer_losses else "standard"


DISTILLATION = Stage(spec=spec, read=read, inherit=inherit, curves=curves,
                     sections=dict(data=data_config.SCHEMA, distill=distill_config.SCHEMA))
