"""Distillation objectives (REFERENCE section 3) as additive sums over tokens.

Every function returns a sum over the positions it scores, never a mean: the
step divides by the whole batch's count, so gradient accumulation over
microbatches equals the big-batch step (see `train/step.py`). Per-token
quantities that TF1 averages over a feature or head axis are averaged over
that axis here, so a layer's sums all divide by the same token count.

`token_weights_BxT` selects the scored positions: the attention mask to leave
padding out (this project's default), or all ones for TF1, which averaged
over every position of the padded batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# TF1's parameter-free layer norm (tf.contrib.layers.layer_norm) used this epsilon.
FEATURE_NORM_EPS = 1e-12


def shifted_moments(x_BxTxH: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token (shift, mean - shift, variance) over the last axis, accurate in float32 at any offset.

    Two passes in float32 lose the variance of features with a large common
    offset and a small spread (1e7 + N(0, 1) is off by 10%; NoNorm activations
    reach 2.5e7): the rounding error of the mean, about offset * 1e-7, enters the
    variance squared. So the features are first shifted by that float32 mean
    (held constant: any shift leaves the moments' values and gradients
    unchanged). The subtraction is exact for values within a factor of 2 of the
    shift, and the moments of the small centred values are then accurate
    (the corrected two-pass algorithm). Returned as shift + offset, so that a
    difference of two means can be taken without cancelling the large parts.
    """
    shift = jax.lax.stop_gradient(jnp.mean(x_BxTxH, axis=-1, keepdims=True))
    centred = x_BxTxH - shift
    offset = jnp.mean(centred, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(centred - offset), axis=-1)
    return shift[..., 0], offset[..., 0], var


def parameter_free_layer_norm(x_BxTxH: jax.Array, eps: float = FEATURE_NORM_EPS) -> jax.Array:
    """(x - mean) / sqrt(var + eps) over the last axis, with no scale or offset (moments as `shifted_moments`)."""
    shift, offset, var = shifted_moments(x_BxTxH)
    return (x_BxTxH - shift[..., None] - offset[..., None]) * jax.lax.rsqrt(var[..., None] + eps)


def feature_map_sum(student_BxTxH: jax.Array, teacher_BxTxH: jax.Array, token_weights_BxT: jax.Array) -> jax.Array:
    """FMT: sum over scored tokens of mean_d (LN(H^T) - LN(H^S))^2; divide by the token count."""
    s = parameter_free_layer_norm(student_BxTxH.astype(jnp.float32))
    t = parameter_free_layer_norm(jax.lax.stop_gradient(teacher_BxTxH).astype(jnp.float32))
    per_token_BxT = jnp.mean(jnp.square(t - s), axis=-1)
    return jnp.sum(per_token_BxT * token_weights_BxT)


def mean_variance_sums(student_BxTxH: jax.Array, teacher_BxTxH: jax.Array,
                       token_weights_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and variance transfer, layer to layer: sums over scored tokens of
    (mu^T - mu^S)^2 and |var^T - var^S|, the statistics taken per token over the
    hidden axis of the raw (unnormalized) features."""
    shift_s, offset_s, var_s = shifted_moments(student_BxTxH.astype(jnp.float32))
    shift_t, offset_t, var_t = shifted_moments(jax.lax.stop_gradient(teacher_BxTxH).astype(jnp.float32))
    # The large shifts cancel first (exactly, when they are within a factor of 2), then the small offsets.
    mean_diff = (shift_t - shift_s) + (offset_t - offset_s)
    w = token_weights_BxT
    return jnp.sum(jnp.square(mean_diff) * w), jnp.sum(jnp.abs(var_t - var_s) * w)


def attention_sums(student_scores_BxNxTxT: jax.Array, teacher_scores_BxNxTxT: jax.Array,
                   token_weights_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """AT: sums over scored queries of the mean over heads of KL(P^T || P^S) and of the
    cross-entropy -sum P^T log P^S over the keys.

    P = softmax of the masked pre-softmax scores s' (the model's output), so
    the key mask is whatever the model's mask mode did to them. The two differ
    by the teacher's entropy, so they have the same gradient: the KL is what is
    optimized and is 0 when the maps agree; the cross-entropy is what TF1
    minimized and logged (and the paper plots).
    """
    log_p_s = jax.nn.log_softmax(student_scores_BxNxTxT.astype(jnp.float32), axis=-1)
    log_p_t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_scores_BxNxTxT).astype(jnp.float32), axis=-1)
    p_t = jnp.exp(log_p_t)
    # Keys the additive mask drove to probability 0 contribute 0 (not 0 * -inf).
    scored = p_t > 0
    kl_BxNxT = jnp.sum(jnp.where(scored, p_t * (log_p_t - log_p_s), 0.0), axis=-1)
    ce_BxNxT = jnp.sum(jnp.where(scored, -p_t * log_p_s, 0.0), axis=-1)
    w = token_weights_BxT
    return jnp.sum(jnp.mean(kl_BxNxT, axis=1) * w), jnp.sum(jnp.mean(ce_BxNxT, axis=1) * w)


def distillation_mlm_sum(student_logits_BxPxV: jax.Array, teacher_logits_BxPxV: jax.Array | None, ids_BxP: jax.Array,
                         weights_BxP: jax.Array, alpha: float, temperature: float) -> jax.Array:
    """PD's masked-LM term: weighted sum of the cross-entropy of the student's
    softmax against y = alpha * onehot(id) + (1 - alpha) * softmax(z^T / tau).

    With alpha = 1 (hard labels only) the teacher's logits are not needed (None)."""
    log_p_s = jax.nn.log_softmax(student_logits_BxPxV.astype(jnp.float32), axis=-1)
    hard_BxP = -jnp.take_along_axis(log_p_s, ids_BxP[..., None].astype(jnp.int32), axis=-1)[..., 0]
    xent_BxP = alpha * hard_BxP
    if alpha < 1.0:
        if teacher_logits_BxPxV is None:
            raise ValueError(f"alpha={alpha} < 1 needs the teacher's logits")
        q_t = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits_BxPxV).astype(jnp.float32) / temperature, axis=-1)
        xent_BxP = xent_BxP + (1.0 - alpha) * -jnp.sum(q_t * log_p_s, axis=-1)
    return jnp.sum(xent_BxP * weights_BxP.astype(jnp.float32))
