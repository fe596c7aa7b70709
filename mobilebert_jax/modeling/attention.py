"""Multi-head self-attention that also hands back its masked pre-softmax scores.

Distillation's attention transfer compares teacher and student score maps, so
the scores after masking (s' in REFERENCE section 2) are part of the output.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.modeling import primitives

# TF1 MobileBERT masks by replacing padded scores with this constant.
TF1_MASKED_SCORE = -6.0


def mask_scores(scores_BxNxTxT: jax.Array, mask_BxT: Optional[jax.Array], mode: str) -> jax.Array:
    """Applies the key mask to float32 scores as TF1 ("replace") or HF/TF2 ("additive") did."""
    if mask_BxT is None:
        return scores_BxNxTxT
    m = mask_BxT[:, None, None, :].astype(scores_BxNxTxT.dtype)
    if mode == "replace":
        return scores_BxNxTxT * m + (1.0 - m) * TF1_MASKED_SCORE
    # finfo.min rather than -inf: a fully padded row then gets a uniform
    # softmax instead of NaN, exactly as HF computes it.
    return jnp.where(m > 0, scores_BxNxTxT, scores_BxNxTxT + jnp.finfo(scores_BxNxTxT.dtype).min)


class SelfAttention(nn.Module):
    """HF's `attention.self`: Q, K, V projections and the attention context."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, q_in, k_in, v_in, mask_BxT, deterministic: bool):
        c = self.config
        in_axis = "bottleneck" if c.attention_input_size == c.intra_bottleneck_size and c.use_bottleneck else "hidden"
        v_axis = "bottleneck" if c.value_input_size == c.intra_bottleneck_size and c.use_bottleneck else "hidden"
        width, heads = c.true_hidden_size, c.num_attention_heads
        split = lambda x: x.reshape(*x.shape[:-1], heads, width // heads)  # noqa: E731
        q_BxTxNxK = split(primitives.dense(c, width, (in_axis, "qkv"), "query")(q_in))
        k_BxTxNxK = split(primitives.dense(c, width, (in_axis, "qkv"), "key")(k_in))
        v_BxTxNxK = split(primitives.dense(c, width, (v_axis, "qkv"), "value")(v_in))

        scores = jnp.einsum("bqhd,bkhd->bhqk", q_BxTxNxK, k_BxTxNxK) / jnp.sqrt(float(width // heads)).astype(
            q_BxTxNxK.dtype)
        # Softmax in float32 also under bfloat16 compute.
        scores_BxNxTxT = mask_scores(scores.astype(jnp.float32), mask_BxT, c.attention_mask_mode)
        probs = jax.nn.softmax(scores_BxNxTxT, axis=-1)
        probs = nn.Dropout(c.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        ctx_BxTxNxK = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v_BxTxNxK.dtype), v_BxTxNxK)
        ctx_BxTxW = ctx_BxTxNxK.reshape(*ctx_BxTxNxK.shape[:2], width)
        return ctx_BxTxW, scores_BxNxTxT
