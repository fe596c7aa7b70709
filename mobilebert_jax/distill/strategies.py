"""Training strategies (REFERENCE section 4) as functions of the step, and the optimizer settings they need.

- progressive: phase l = step // phase_steps; only layer l's transfer loss is on;
  TF1's learning-rate multipliers 3 * bg(t) * {0 above, 1 at, lower_layer_multiplier
  below} with the optimizer state of a layer held at zero until its phase
  (optim/multipliers.py); embeddings and heads copied from the teacher and frozen.
- joint: every layer's transfer loss at once; embeddings and heads frozen.
- auxiliary: every layer's transfer loss plus PD in one phase; everything trains.
- pd: pretraining distillation alone (the phase after progressive or joint transfer, a run of its own).

Because the phase is a function of the step, the whole L-phase schedule is one
run of the generic trainer, and a resumed run continues mid-phase exactly.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mobilebert_jax.errors import ConfigError
from mobilebert_jax.modeling import stacking
from mobilebert_jax.optim import builder as optim_builder
from mobilebert_jax.optim import paths as optim_paths

# The parameters a fresh student takes from the teacher. The embedding norm is
# not among them: the teacher's is a LayerNorm, the student's a NoNorm.
COPIED_FROM_TEACHER = (
    r"^mobilebert/embeddings/(word_embeddings|position_embeddings|token_type_embeddings|embedding_transformation)/",
    r"^cls/",
)
# The student's embedding norm: trained (or not, `train_embedding_norm_in_transfer`) during layer-wise transfer.
EMBEDDING_NORM = "mobilebert/embeddings/LayerNorm/"
# TF1 scales the current phase's learning rate by 3 (with bg(t) on top).
PROGRESSIVE_SCALE = 3.0
_LAYER_PATH = re.compile(r"^mobilebert/encoder/layer_(\d+)/")


def layer_prefix(layer: int) -> str:
    return f"mobilebert/encoder/{stacking.layer_name(layer)}/"


def phase_of(step: jax.Array, phase_steps: int) -> jax.Array:
    return step // phase_steps


def layer_gates(strategy: str, step: jax.Array, num_layers: int, phase_steps: int) -> jax.Array:
    """[L] float32: 1 where a layer's transfer loss is on at `step`, else 0."""
    if strategy == "progressive":
        return jax.nn.one_hot(phase_of(step, phase_steps), num_layers, dtype=jnp.float32)
    if strategy in ("joint", "auxiliary"):
        return jnp.ones((num_layers,), jnp.float32)
    return jnp.zeros((num_layers,), jnp.float32)


def progressive_groups(num_layers: int, phase_steps: Any, lower_layer_multiplier: Any,
                       train_embedding_norm: Any = False) -> ml_collections.ConfigDict:
    """`config.optimizer.groups` for progressive transfer: one group per encoder layer, and the embedding norm's.

    `phase_steps`, `lower_layer_multiplier` and `train_embedding_norm` may be
    FieldReferences into `config.distill`, so overriding those fields keeps the
    groups in step. The student's embedding norm (not copied from the teacher)
    follows layer 0's multiplier when it trains, and has multiplier 0 (an update
    of exactly 0, moments held at 0) when it does not: TF1's LAMB gave every
    variable outside `bert/encoder/layer_*` rate 0 and gate 0 in these stages.
    """
    def progressive(layer: int, scale: Any) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(dict(kind="progressive", layer=layer, phase_steps=phase_steps, scale=scale,
                                              below=lower_layer_multiplier))

    groups = ml_collections.ConfigDict()
    for i in range(num_layers):
        groups[f"layer_{i}"] = ml_collections.ConfigDict(dict(
            pattern="^" + layer_prefix(i), multiplier=progressive(i, PROGRESSIVE_SCALE), reset_state_when_zero=True))
    groups["embedding_norm"] = ml_collections.ConfigDict(dict(
        pattern="^" + EMBEDDING_NORM, multiplier=progressive(0, PROGRESSIVE_SCALE * _as_float(train_embedding_norm)),
        reset_state_when_zero=True))
    return groups


def _as_float(flag: Any) -> Any:
    """1.0 / 0.0 for a bool, or a FieldReference that follows a bool field."""
    return flag.to_float() if isinstance(flag, ml_collections.FieldReference) else float(flag)


def first_layer_paths(abstract_params: Any) -> dict[int, str]:
    """Encoder layer index -> the path of one of its parameters (what optimizer groups are matched against).

    Paths of the unrolled layout even for a scanned model: the optimizer matches its groups there
    (optim/transforms.per_layer_view)."""
    out: dict[int, str] = {}

    def visit(path: str, _keys):
        m = _LAYER_PATH.match(path)
        if m:
            out.setdefault(int(m.group(1)), path)
    optim_paths.map_with_path(visit, stacking.unstack(abstract_params))
    return out


def check_progressive_groups(opt_cfg: Any, abstract_params: Any, num_layers: int, phase_steps: int) -> None:
    """Every encoder layer must sit in a group with the progressive multiplier for that layer."""
    groups = optim_builder.parse_groups(opt_cfg.groups, "config.optimizer.groups")
    specs = {name: opt_cfg.groups[name].multiplier for name in opt_cfg.groups.keys()}
    first_path = first_layer_paths(abstract_params)
    for i in range(num_layers):
        path = first_path[i]
        group = next((g.name for g in groups if g.pattern.search(path)), optim_builder.DEFAULT_GROUP)
        spec = specs.get(group)
        ok = (isinstance(spec, (dict, ml_collections.ConfigDict)) and spec.get("kind") == "progressive"
              and spec.get("layer") == i and spec.get("phase_steps") == phase_steps)
        if not ok:
            raise ConfigError(
                f"config.optimizer.groups: encoder layer {i} ({path!r}) is in group {group!r} with multiplier "
                f"{spec!r}; progressive transfer needs dict(kind='progressive', layer={i}, phase_steps={phase_steps}) "
                f"for it (build the groups with mobilebert_jax.distill.strategies.progressive_groups)")


def check_embedding_norm(opt_cfg: Any, abstract_params: Any, train: bool) -> None:
    """In layer-wise transfer, the embedding norm's multiplier must be 0 at every step exactly when `train` is False."""
    path = next((p for p in _param_paths(abstract_params) if p.startswith(EMBEDDING_NORM)), None)
    if path is None:  # a student without an embedding norm parameter
        return
    if any(re.search(p, path) for p in opt_cfg.exclude):
        frozen, where = True, "config.optimizer.exclude"
    else:
        groups = optim_builder.parse_groups(opt_cfg.groups, "config.optimizer.groups")
        group = next((g for g in groups if g.pattern.search(path)), None)
        where = f"config.optimizer.groups.{group.name}" if group else "the default group (multiplier 1)"
        if group is None:
            frozen = False
        elif callable(group.multiplier):
            # Step-dependent: taken as frozen when 0 at each of the first steps (layer 0's rule is not).
            steps = jnp.arange(0, 64, dtype=jnp.int32)
            frozen = bool(jnp.all(jax.vmap(group.multiplier)(steps) == 0))
        else:
            frozen = group.multiplier == 0.0
    if frozen == train:
        raise ConfigError(
            f"config.distill.train_embedding_norm_in_transfer={train}, but {path!r} is "
            f"{'frozen' if frozen else 'trained'} by {where}; build config.optimizer.groups with "
            f"mobilebert_jax.distill.strategies.optimizer_settings, which follows that field")


def _param_paths(abstract_params: Any) -> list[str]:
    out: list[str] = []
    optim_paths.map_with_path(lambda path, _: out.append(path), abstract_params)
    return out


def optimizer_settings(c: ml_collections.ConfigDict, strategy: str, num_layers: int) -> None:
    """Sets `c.optimizer.groups` and `c.optimizer.exclude` for `strategy` (experiment files call this).

    The groups follow `c.distill`'s fields through references, so command-line
    overrides of those fields take effect."""
    train_norm = c.distill.get_ref("train_embedding_norm_in_transfer")
    if strategy == "progressive":
        c.optimizer.groups = progressive_groups(num_layers, c.distill.get_ref("phase_steps"),
                                                c.distill.get_ref("lower_layer_multiplier"), train_norm)
    if strategy == "joint":
        # Joint transfer trains every layer at the base rate; the embedding norm at that rate or not at all.
        c.optimizer.groups = ml_collections.ConfigDict(dict(embedding_norm=ml_collections.ConfigDict(dict(
            pattern="^" + EMBEDDING_NORM, multiplier=_as_float(train_norm)))))
    if strategy in ("progressive", "joint"):
        c.optimizer.exclude = COPIED_FROM_TEACHER
