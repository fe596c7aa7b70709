"""`build_optimizer`: `config.optimizer` -> one optax GradientTransformation.

The chain, for the parameters that are not excluded:

    clip_by_global_norm(clip_norm)              # over every non-excluded gradient, frozen ones
                                                # included, as TF1 clips every student gradient
    multi_transform by group:
        <group>:   direction * multiplier(step)  # LAMB or AdamW direction, per group
        frozen:    set_to_zero()                 # multiplier 0: no state at all
        default:   direction                     # parameters no group pattern matches
    scale_by_learning_rate(schedule)

Excluded paths (`exclude`) get `set_to_zero()` at the top level: no state,
no update, and they do not count in the clipping norm.

A scanned encoder's stacked parameters (`config.model.scan_layers`) are optimized layer by
layer as unrolled (`transforms.per_layer_view`): patterns are matched against the unrolled
paths (`.../encoder/layer_3/...`), a stacked tensor whose layers fall in different groups
is split per layer, and LAMB's trust ratio is taken per layer.

Groups: `config.optimizer.groups.<name> = dict(pattern=REGEX, multiplier=SPEC,
reset_state_when_zero=False)`. REGEX is `re.search`ed in the '/'-joined path
(`params/encoder/layer_3/attention/query/kernel`); groups are tried in config
order and the first match wins. A pattern that matches no parameter is an
error (it is almost always a typo). See multipliers.py for SPEC.
`reset_state_when_zero` (step-dependent multipliers only) holds the group's
optimizer state at its initial value while the multiplier is 0: TF1's
`layer_wise_gate` in progressive distillation.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional, Union

import jax.numpy as jnp
import ml_collections
import optax

from mobilebert_jax.errors import ConfigError
from mobilebert_jax.modeling import stacking
from mobilebert_jax import config_schema
from mobilebert_jax.optim import config as cfg_lib
from mobilebert_jax.optim import multipliers, paths, schedules, transforms

DEFAULT_GROUP = "default"
_EXCLUDED, _INCLUDED = "excluded", "included"


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    pattern: re.Pattern
    multiplier: Union[float, multipliers.Multiplier]
    reset_state_when_zero: bool

    @property
    def frozen(self) -> bool:
        return isinstance(self.multiplier, float) and self.multiplier == 0.0

    def transform(self, direction: optax.GradientTransformation) -> optax.GradientTransformation:
        if self.frozen:
            return optax.set_to_zero()
        if self.reset_state_when_zero:
            return transforms.gated_by_multiplier(direction, self.multiplier)
        if callable(self.multiplier):
            return optax.chain(direction, optax.scale_by_schedule(self.multiplier))
        if self.multiplier == 1.0:
            return direction
        return optax.chain(direction, optax.scale(self.multiplier))


def parse_groups(groups_cfg: Any, where: str) -> list[Group]:
    if isinstance(groups_cfg, ml_collections.ConfigDict):
        items = [(k, groups_cfg[k]) for k in groups_cfg.keys()]
    elif isinstance(groups_cfg, dict):
        items = list(groups_cfg.items())
    else:
        raise ConfigError(f"{where} must map group names to dict(pattern=..., multiplier=...), "
                          f"got {type(groups_cfg).__name__}")
    out = []
    for name, group_cfg in items:
        gw = f"{where}.{name}"
        if name == DEFAULT_GROUP:
            raise ConfigError(f"{gw}: the group name {DEFAULT_GROUP!r} is reserved for parameters no group matches")
        g = cfg_lib.GROUP.read(group_cfg, gw)
        try:
            pattern = re.compile(g["pattern"])
        except (re.error, TypeError) as e:
            raise ConfigError(f"{gw}.pattern={g['pattern']!r} is not a valid regex: {e}") from None
        multiplier = multipliers.resolve(g["multiplier"], f"{gw}.multiplier")
        if not isinstance(g["reset_state_when_zero"], bool):
            raise ConfigError(f"{gw}.reset_state_when_zero={g['reset_state_when_zero']!r}: must be true or false")
        if g["reset_state_when_zero"] and not callable(multiplier):
            raise ConfigError(f"{gw}.reset_state_when_zero needs a step-dependent multiplier, "
                              f"not the constant {multiplier!r}")
        out.append(Group(str(name), pattern, multiplier, g["reset_state_when_zero"]))
    return out


def _patterns(values: Any, where: str) -> list[re.Pattern]:
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise ConfigError(f"{where}={values!r}: must be a list of regexes")
    out = []
    for i, p in enumerate(values):
        try:
            out.append(re.compile(p))
        except (re.error, TypeError) as e:
            raise ConfigError(f"{where}[{i}]={p!r} is not a valid regex: {e}") from None
    return out


def build_optimizer(
    opt_cfg: Any,
    params: Any = None,
    *,
    exempt: paths.PathFn = paths.is_norm_or_bias,
    where: str = "config.optimizer",
) -> optax.GradientTransformation:
    """The optimizer `opt_cfg` describes (fields: optim/config.py), checked against `params`.

    `params` may be concrete, abstract (`jax.eval_shape`) or boxed
    (`nn.Partitioned`); only its paths are used, to check that every group
    and exclude pattern matches something (None: check the config alone, as
    `experiment_config.validate` does). `exempt(path keys)` says which
    parameters get neither weight decay nor the trust ratio.
    """
    opt = cfg_lib.OPTIMIZER.read(opt_cfg, where)
    name = opt["name"]
    if name not in cfg_lib.OPTIMIZERS:
        raise ConfigError(f"{where}.name={name!r}: choose one of {list(cfg_lib.OPTIMIZERS)}")
    schedule = schedules.build_schedule(opt_cfg, where)
    hyper = {k: config_schema.positive_number(opt[k], f"{where}.{k}", allow_zero=(k == "weight_decay"))
             for k in ("b1", "b2", "eps", "weight_decay")}
    for k in ("b1", "b2"):
        if not hyper[k] < 1:
            raise ConfigError(f"{where}.{k}={hyper[k]!r}: must be in (0, 1)")
    if not isinstance(opt["bias_correction"], bool):
        raise ConfigError(f"{where}.bias_correction={opt['bias_correction']!r}: must be true or false")
    direction_fn = transforms.lamb_direction if name == "lamb" else transforms.adamw_direction
    direction = direction_fn(**hyper, bias_correction=opt["bias_correction"], exempt=exempt,
                             mu_dtype=_dtype(opt["mu_dtype"], f"{where}.mu_dtype"))

    clip_norm = opt["clip_norm"]
    clip = optax.identity()
    if clip_norm:
        clip = optax.clip_by_global_norm(config_schema.positive_number(clip_norm, f"{where}.clip_norm"))

    groups = parse_groups(opt["groups"], f"{where}.groups")
    excluded = _patterns(opt["exclude"], f"{where}.exclude")
    # A stacked leaf left stacked (transforms.per_layer_view) has the same labels in every layer: layer 0's.
    group_labels = lambda tree: paths.map_with_path(  # noqa: E731
        lambda p, _: _group_of(stacking.unrolled_path(p, 0), groups), tree)
    if params is not None:
        _check_patterns_match(stacking.unstack(params), groups, excluded, where)

    if groups:
        per_group = {g.name: g.transform(direction) for g in groups}
        per_group[DEFAULT_GROUP] = direction
        direction = optax.multi_transform(per_group, group_labels)
    tx = optax.chain(clip, direction, optax.scale_by_learning_rate(schedule))
    if excluded:
        top_labels = lambda tree: paths.map_with_path(  # noqa: E731
            lambda p, _: _excluded_label(stacking.unrolled_path(p, 0), excluded), tree)
        tx = optax.multi_transform({_INCLUDED: tx, _EXCLUDED: optax.set_to_zero()}, top_labels)
    return transforms.per_layer_view(tx, lambda p: (_excluded_label(p, excluded), _group_of(p, groups)))


def _excluded_label(path: str, excluded: list[re.Pattern]) -> str:
    return _EXCLUDED if any(r.search(path) for r in excluded) else _INCLUDED


def _group_of(path: str, groups: list[Group]) -> str:
    for g in groups:
        if g.pattern.search(path):
            return g.name
    return DEFAULT_GROUP


def _check_patterns_match(params: Any, groups: list[Group], excluded: list[re.Pattern], where: str) -> None:
    all_paths = []
    paths.map_with_path(lambda p, _: all_paths.append(p), params)
    if not all_paths:
        raise ConfigError("build_optimizer: `params` has no leaves")
    for i, r in enumerate(excluded):
        if not any(r.search(p) for p in all_paths):
            raise ConfigError(f"{where}.exclude[{i}]={r.pattern!r} matches no parameter; "
                              f"paths look like {all_paths[0]!r}")
    for g in groups:
        if not any(g.pattern.search(p) for p in all_paths):
            raise ConfigError(f"{where}.groups.{g.name}.pattern={g.pattern.pattern!r} matches no parameter; "
                              f"paths look like {all_paths[0]!r}")


def _dtype(value: Optional[str], where: str) -> Optional[jnp.dtype]:
    if value is None:
        return None
    try:
        return jnp.dtype(value)
    except TypeError:
        raise ConfigError(f"{where}={value!r} is not a dtype name") from None
