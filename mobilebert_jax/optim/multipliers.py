"""Per-group learning-rate multipliers: constants, callables, or named step-dependent rules.

A multiplier spec in `config.optimizer.groups.<name>.multiplier` is one of
  - a number: a constant factor; 0 freezes the group (no optimizer state);
  - a callable step -> factor (traced under jit; step is the int32 update count);
  - a dict naming a rule here, e.g. dict(kind="progressive", layer=3, phase_steps=10_000),
    which keeps experiment configs plain data (JSON-able, overridable).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Union

import jax
import jax.numpy as jnp
import ml_collections

from mobilebert_jax.errors import ConfigError

Multiplier = Callable[[jax.Array], jax.Array]


def progressive(layer: int, phase_steps: int, scale: float = 3.0, below: float = 0.1) -> Multiplier:
    """TF1 progressive knowledge transfer (REFERENCE section 4) for encoder layer `layer` (0-based).

    At step s the phase is l = s // P and t = s mod P (P = `phase_steps`); the
    factor is scale * bg(t) * {0 if layer > l, 1 if layer == l, `below` if
    layer < l}, bg(t) = min(0.9 + 0.1 * sqrt(1 - t/P), 10 t/P).
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ConfigError(f"progressive multiplier: layer={layer!r} must be a non-negative integer")
    if isinstance(phase_steps, bool) or not isinstance(phase_steps, int) or phase_steps <= 0:
        raise ConfigError(f"progressive multiplier: phase_steps={phase_steps!r} must be a positive integer")

    def multiplier(step: jax.Array) -> jax.Array:
        phase = step // phase_steps
        frac = (step % phase_steps).astype(jnp.float32) / phase_steps
        background = jnp.minimum(0.9 + 0.1 * jnp.sqrt(1.0 - frac), 10.0 * frac)
        which = jnp.where(layer > phase, 0.0, jnp.where(layer == phase, 1.0, below))
        return scale * background * which

    return multiplier


RULES: dict[str, Callable[..., Multiplier]] = {"progressive": progressive}


def resolve(spec: Any, where: str) -> Union[float, Multiplier]:
    """A constant (float) or a step -> factor function for the spec at config field `where`."""
    if isinstance(spec, bool):
        raise ConfigError(f"{where}={spec!r}: a multiplier must be a number, a callable or a rule dict")
    if isinstance(spec, (int, float)):
        if spec < 0:
            raise ConfigError(f"{where}={spec!r}: must not be negative")
        return float(spec)
    if isinstance(spec, (Mapping, ml_collections.ConfigDict)):
        fields = dict(spec.items())
        kind = fields.pop("kind", None)
        if kind not in RULES:
            raise ConfigError(f"{where}.kind={kind!r}: choose one of {sorted(RULES)}")
        try:
            return RULES[kind](**fields)
        except TypeError as e:
            raise ConfigError(f"{where}: bad fields for rule {kind!r}: {e}") from None
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if callable(spec):
        return spec
    raise ConfigError(f"{where}={spec!r}: a multiplier must be a number, a callable or a rule dict")


