"""Training strategies (REFERENCE section 4) as functions of the step, and the optimizer settings they need.

- progressive: stage l = step // stage_steps; only layer l's transfer loss is on;
  TF1's learning-rate multipliers 3 * bg(t) * {0 above, 1 at, lower_layer_multiplier
  below} with the optimizer state of a layer held at zero until its stage
  (optim/multipliers.py); embeddings and heads copied from the teacher and frozen.
- joint: every layer's transfer loss at once; embeddings and heads frozen.
- auxiliary: every layer's transfer loss plus PD in one stage; everything trains.
- pd: pretraining distillation alone (the stage after progressive or joint).

Because the stage is a function of the step, the whole L-stage schedule is one
run of the generic trainer, and a resumed run continues mid-stage exactly.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mobilebert_jax.config import ConfigError
from mobilebert_jax.optim import builder as optim_builder
from mobilebert_jax.optim import paths as optim_paths

# The parameters a fresh student takes from the teacher. The embedding norm is
# not among them: the teacher's is a LayerNorm, the student's a NoNorm.
COPIED_FROM_TEACHER = (
    r"^mobilebert/embeddings/(word_embeddings|position_embeddings|token_type_embeddings|embedding_transformation)/",
    r"^cls/",
)
# TF1 scales the current stage's learning rate by 3 (with bg(t) on top).
PROGRESSIVE_SCALE = 3.0
_LAYER_PATH = re.compile(r"^mobilebert/encoder/layer_(\d+)/")


def layer_prefix(layer: int) -> str:
    return f"mobilebert/encoder/layer_{layer}/"


def stage_of(step: jax.Array, stage_steps: int) -> jax.Array:
    return step // stage_steps


def layer_gates(strategy: str, step: jax.Array, num_layers: int, stage_steps: int) -> jax.Array:
    """[L] float32: 1 where a layer's transfer loss is on at `step`, else 0."""
    if strategy == "progressive":
        return jax.nn.one_hot(stage_of(step, stage_steps), num_layers, dtype=jnp.float32)
    if strategy in ("joint", "auxiliary"):
        return jnp.ones((num_layers,), jnp.float32)
    return jnp.zeros((num_layers,), jnp.float32)


def progressive_groups(num_layers: int, stage_steps: Any, lower_layer_multiplier: Any) -> ml_collections.ConfigDict:
    """`config.optimizer.groups` for progressive transfer: one group per encoder layer.

    `stage_steps` and `lower_layer_multiplier` may be FieldReferences into
    `config.distill`, so overriding those fields keeps the groups in step.
    The student's embedding norm (not copied from the teacher) trains with
    layer 0, the first layer it feeds.
    """
    groups = ml_collections.ConfigDict()
    for i in range(num_layers):
        pattern = "^(" + layer_prefix(i) + ("|mobilebert/embeddings/LayerNorm/" if i == 0 else "") + ")"
        groups[f"layer_{i}"] = ml_collections.ConfigDict(dict(
            pattern=pattern,
            multiplier=ml_collections.ConfigDict(dict(kind="progressive", layer=i, stage_steps=stage_steps,
                                                      scale=PROGRESSIVE_SCALE, below=lower_layer_multiplier)),
            reset_state_when_zero=True))
    return groups


def first_layer_paths(abstract_params: Any) -> dict[int, str]:
    """Encoder layer index -> the path of one of its parameters (what optimizer groups are matched against)."""
    out: dict[int, str] = {}

    def visit(path: str, _keys):
        m = _LAYER_PATH.match(path)
        if m:
            out.setdefault(int(m.group(1)), path)
    optim_paths.map_with_path(visit, abstract_params)
    return out


def check_progressive_groups(opt_cfg: Any, abstract_params: Any, num_layers: int, stage_steps: int) -> None:
    """Every encoder layer must sit in a group with the progressive multiplier for that layer."""
    groups = optim_builder.parse_groups(opt_cfg.groups, "config.optimizer.groups")
    specs = {name: opt_cfg.groups[name].multiplier for name in opt_cfg.groups.keys()}
    first_path = first_layer_paths(abstract_params)
    for i in range(num_layers):
        path = first_path[i]
        group = next((g.name for g in groups if g.pattern.search(path)), optim_builder.DEFAULT_GROUP)
        spec = specs.get(group)
        ok = (isinstance(spec, (dict, ml_collections.ConfigDict)) and spec.get("kind") == "progressive"
              and spec.get("layer") == i and spec.get("stage_steps") == stage_steps)
        if not ok:
            raise ConfigError(
                f"config.optimizer.groups: encoder layer {i} ({path!r}) is in group {group!r} with multiplier "
                f"{spec!r}; progressive transfer needs dict(kind='progressive', layer={i}, stage_steps={stage_steps}) "
                f"for it (build the groups with mobilebert_jax.distill.strategies.progressive_groups)")


def optimizer_settings(c: ml_collections.ConfigDict, strategy: str, num_layers: int) -> None:
    """Sets `c.optimizer.groups` and `c.optimizer.exclude` for `strategy` (experiment files call this)."""
    if strategy == "progressive":
        c.optimizer.groups = progressive_groups(num_layers, c.distill.get_ref("stage_steps"),
                                                c.distill.get_ref("lower_layer_multiplier"))
    if strategy in ("progressive", "joint"):
        c.optimizer.exclude = COPIED_FROM_TEACHER
