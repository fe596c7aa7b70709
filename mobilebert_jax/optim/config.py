"""The `config.optimizer` schema: its fields, which of them may be left out, and the reader that checks them.

The library holds no values: experiments/common.py's `optimizer(name, lr)` writes every field at TF1's settings
and a stage changes what it needs. A missing required field is a ConfigError naming it. Fields that may be left
out have a neutral meaning, the one an absent setting has:

    config.optimizer  required: name, lr, b1, b2, eps, bias_correction, weight_decay, clip_norm, schedule
                      optional: mu_dtype (None: the moments in the parameters' dtype), groups ({}: one group),
                                exclude ((): every parameter optimized)
    .schedule         required: kind
                      optional: warmup_steps (0: no warmup), warmup_fraction (None: warmup_steps counts),
                                total_steps (None: no end; a decaying kind requires it), end_lr (0.0: a decay
                                ends at zero), power (1.0: a linear decay), decay_origin ("warmup_end": the
                                decay starts where the warmup ends, as optax joins schedules)
    .groups.<name>    required: pattern
                      optional: multiplier (1.0: the base rate), reset_state_when_zero (False: off)

Every error names the full config field (`config.optimizer.schedule.kind`),
so a typo in an experiment file or an override points at itself.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import ml_collections

from mobilebert_jax.errors import ConfigError

OPTIMIZERS = ("lamb", "adamw")
SCHEDULE_KINDS = ("constant", "warmup_constant", "warmup_linear_decay", "warmup_polynomial_decay")
# TF1 BERT decays polynomially over [0, total_steps] and lets warmup override
# the first steps; optax-style joins start the decay where warmup ends.
DECAY_ORIGINS = ("warmup_end", "step_zero")

OPTIMIZER_FIELDS = ("name", "lr", "b1", "b2", "eps", "bias_correction", "weight_decay", "clip_norm", "mu_dtype",
                    "schedule", "groups", "exclude")
OPTIMIZER_OPTIONAL = dict(mu_dtype=None, groups={}, exclude=())
SCHEDULE_FIELDS = ("kind", "warmup_steps", "warmup_fraction", "total_steps", "end_lr", "power", "decay_origin")
SCHEDULE_OPTIONAL = dict(warmup_steps=0, warmup_fraction=None, total_steps=None, end_lr=0.0, power=1.0,
                         decay_origin="warmup_end")
GROUP_FIELDS = ("pattern", "multiplier", "reset_state_when_zero")
GROUP_OPTIONAL = dict(multiplier=1.0, reset_state_when_zero=False)


def read(cfg: Any, fields: tuple[str, ...], where: str, optional: Mapping[str, Any] = ()) -> dict[str, Any]:
    """`cfg` (ConfigDict or mapping) as a plain dict over `fields`; unknown and missing keys are errors.

    `optional` maps the fields that may be left out to their neutral meaning (the module docstring's).
    """
    if isinstance(cfg, ml_collections.ConfigDict):
        items = {k: cfg[k] for k in cfg.keys()}
    elif isinstance(cfg, Mapping):
        items = dict(cfg)
    else:
        raise ConfigError(f"{where} must be a ConfigDict or dict, got {type(cfg).__name__}")
    unknown = sorted(set(items) - set(fields))
    if unknown:
        raise ConfigError(f"{where} has unknown field(s) {unknown}; known fields: {list(fields)}")
    out = dict(optional)
    out.update(items)
    missing = [f for f in fields if f not in out]
    if missing:
        raise ConfigError(f"{where} is missing required field(s) {sorted(missing)}: set "
                          + ", ".join(f"{where}.{f}" for f in missing))
    return out


def positive_number(value: Any, where: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}={value!r}: must be a number")
    # NaN passes every comparison below and would surface only as a non-finite loss after compiling.
    if not math.isfinite(value):
        raise ConfigError(f"{where}={value!r}: must be a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}={value!r}: must be {'non-negative' if allow_zero else 'positive'}")
    return float(value)


def step_count(value: Any, where: str, allow_zero: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}={value!r}: must be an integer number of steps")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}={value!r}: must be {'non-negative' if allow_zero else 'positive'}")
    return value
