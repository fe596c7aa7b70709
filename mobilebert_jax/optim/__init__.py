"""Optimizers for pretraining, distillation and fine-tuning: TF1 LAMB and AdamW from optax pieces."""

from mobilebert_jax.optim.builder import build_optimizer
from mobilebert_jax.optim.multipliers import progressive
from mobilebert_jax.optim.paths import is_norm_or_bias, path_of
from mobilebert_jax.optim.schedules import build_schedule
from mobilebert_jax.optim.transforms import (adamw_direction, gated_by_multiplier, lamb_direction,
                                             scale_by_adam_no_bias_correction)

__all__ = [
    "adamw_direction", "build_optimizer", "build_schedule", "gated_by_multiplier",
    "is_norm_or_bias", "lamb_direction", "path_of", "progressive", "scale_by_adam_no_bias_correction",
]
