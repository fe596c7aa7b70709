"""The `config.optimizer` schema: its fields and which of them may be left out (read by config_schema.Schema.read).

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

from mobilebert_jax.config_schema import Schema

OPTIMIZERS = ("lamb", "adamw")
SCHEDULE_KINDS = ("constant", "warmup_constant", "warmup_linear_decay", "warmup_polynomial_decay")
# TF1 BERT decays polynomially over [0, total_steps] and lets warmup override
# the first steps; optax-style joins start the decay where warmup ends.
DECAY_ORIGINS = ("warmup_end", "step_zero")

SCHEDULE = Schema(
    fields=("kind", "warmup_steps", "warmup_fraction", "total_steps", "end_lr", "power", "decay_origin"),
    optional=dict(warmup_steps=0, warmup_fraction=None, total_steps=None, end_lr=0.0, power=1.0,
                  decay_origin="warmup_end"))
GROUP = Schema(fields=("pattern", "multiplier", "reset_state_when_zero"),
               optional=dict(multiplier=1.0, reset_state_when_zero=False))
OPTIMIZER = Schema(
    fields=("name", "lr", "b1", "b2", "eps", "bias_correction", "weight_decay", "clip_norm", "mu_dtype", "schedule",
            "groups", "exclude"),
    optional=dict(mu_dtype=None, groups={}, exclude=()),
    sections=dict(schedule=SCHEDULE), entries=dict(groups=GROUP))
