"""The `config.optimizer` schema: its defaults and the reader that rejects unknown fields.

Every error names the full config field (`config.optimizer.schedule.kind`),
so a typo in an experiment file or an override points at itself.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from mobilebert_jax.errors import ConfigError

OPTIMIZERS = ("lamb", "adamw")
SCHEDULE_KINDS = ("constant", "warmup_constant", "warmup_linear_decay", "warmup_polynomial_decay")
# TF1 BERT decays polynomially over [0, total_steps] and lets warmup override
# the first steps; optax-style joins start the decay where warmup ends.
DECAY_ORIGINS = ("warmup_end", "step_zero")


def default_config(name: str = "lamb") -> ml_collections.ConfigDict:
    """Every field `build_optimizer` reads, at TF1's values (REFERENCE section 5)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"config.optimizer.name={name!r}: choose one of {list(OPTIMIZERS)}")
    placeholder = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(dict(
        name=name,
        lr=1.5e-3 if name == "lamb" else 4e-5,  # peak learning rate
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        bias_correction=False,  # TF1's LAMB and AdamW never debias the moments
        weight_decay=0.01,  # never applied to norms and biases
        clip_norm=1.0,  # global-norm clipping; 0 or None turns it off
        mu_dtype=placeholder(str),  # e.g. "bfloat16" to halve the first moment's memory
        schedule=dict(
            kind="constant",
            warmup_steps=0,
            warmup_fraction=placeholder(float),  # fine-tuning's "10% warmup"; excludes warmup_steps
            total_steps=placeholder(int),
            end_lr=0.0,
            power=1.0,  # only warmup_polynomial_decay
            decay_origin="warmup_end",
        ),
        # name -> {pattern, multiplier, reset_state_when_zero}; see builder.py.
        groups=ml_collections.ConfigDict(),
        # Regexes of parameter paths that are not optimized at all (no state,
        # zero update, outside the gradient-norm clip).
        exclude=(),
    ))


_DEFAULTS = default_config().to_dict()
OPTIMIZER_FIELDS = tuple(_DEFAULTS)
SCHEDULE_FIELDS = tuple(_DEFAULTS["schedule"])
# `lr` and `name` have no default: the two optimizers want very different rates.
OPTIMIZER_DEFAULTS = {k: v for k, v in _DEFAULTS.items() if k not in ("lr", "name")}
SCHEDULE_DEFAULTS = _DEFAULTS["schedule"]
GROUP_FIELDS = ("pattern", "multiplier", "reset_state_when_zero")


def read(cfg: Any, fields: tuple[str, ...], where: str, defaults: Mapping[str, Any] = ()) -> dict[str, Any]:
    """`cfg` (ConfigDict or mapping) as a plain dict over `fields`; unknown keys are errors."""
    if isinstance(cfg, ml_collections.ConfigDict):
        items = {k: cfg[k] for k in cfg.keys()}
    elif isinstance(cfg, Mapping):
        items = dict(cfg)
    else:
        raise ConfigError(f"{where} must be a ConfigDict or dict, got {type(cfg).__name__}")
    unknown = sorted(set(items) - set(fields))
    if unknown:
        raise ConfigError(f"{where} has unknown field(s) {unknown}; known fields: {list(fields)}")
    out = dict(defaults)
    out.update(items)
    missing = sorted(set(fields) - set(out))
    if missing:
        raise ConfigError(f"{where} is missing required field(s) {missing}")
    return out


def positive_number(value: Any, where: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}={value!r}: must be a number")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}={value!r}: must be {'non-negative' if allow_zero else 'positive'}")
    return float(value)


def step_count(value: Any, where: str, allow_zero: bool = True) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}={value!r}: must be an integer number of steps")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}={value!r}: must be {'non-negative' if allow_zero else 'positive'}")
    return value
