"""One transformer block, for every variant in REFERENCE section 2.

Module names mirror HF's (`bottleneck.input`, `attention.self`, `ffn.N`, ...)
so that checkpoint conversion is a renaming, not a rewrite.

- MobileBERT student: bottlenecks in and out, Q/K from a shared 128-d
  bottleneck, V from the 512-d block input, several FFNs.
- IB-BERT teacher: Q, K, V all from the 512-d input into 1024-d projections
  (HF cannot express this; its Q/K expect the bottleneck width).
- TINY: Q = K = V = residual = the 128-d input bottleneck.
- plain BERT: no bottleneck at all.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.modeling import primitives
from mobilebert_jax.modeling.attention import SelfAttention


def _width_axis(c: MobileBertConfig) -> str:
    return "bottleneck" if c.use_bottleneck else "hidden"


class BottleneckProjection(nn.Module):
    """N(x W + c), 512 -> intra_bottleneck_size (HF's `BottleneckLayer`)."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, x_BxTxH):
        c = self.config
        y = primitives.dense(c, c.intra_bottleneck_size, ("hidden", "bottleneck"), "dense")(x_BxTxH)
        return primitives.norm(c, "bottleneck", c.layer_norm_eps)(y)


class Bottleneck(nn.Module):
    """Returns (query input, key input, value input, attention residual)."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, x_BxTxH):
        c = self.config
        residual = BottleneckProjection(c, name="input")(x_BxTxH)
        if c.use_bottleneck_attention:
            return residual, residual, residual, residual
        if c.key_query_shared_bottleneck:
            shared = BottleneckProjection(c, name="attention")(x_BxTxH)
            return shared, shared, x_BxTxH, residual
        return x_BxTxH, x_BxTxH, x_BxTxH, residual


def _dense_norm(c: MobileBertConfig, x, residual, in_axis: str, *, drop: bool, epsilon: float,
                deterministic: bool):
    """N(dropout(x W + c) + residual) into the block width.

    A function rather than a module: called inside a compact method, its
    `dense` and `LayerNorm` land directly in the caller's scope, as in HF.
    """
    y = primitives.dense(c, c.true_hidden_size, (in_axis, _width_axis(c)), "dense")(x)
    if drop:
        y = nn.Dropout(c.hidden_dropout_prob)(y, deterministic=deterministic)
    return primitives.norm(c, _width_axis(c), epsilon)(y + residual)


class AttentionBlock(nn.Module):
    """Self-attention, then N(ctx W_o + c + residual). Dropout only without bottleneck."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, q_in, k_in, v_in, residual, mask_BxT, deterministic: bool):
        c = self.config
        ctx, scores_BxNxTxT = SelfAttention(c, name="self")(q_in, k_in, v_in, mask_BxT, deterministic)
        out = _AttentionOutput(c, name="output")(ctx, residual, deterministic)
        return out, scores_BxNxTxT


class _AttentionOutput(nn.Module):
    config: MobileBertConfig

    @nn.compact
    def __call__(self, ctx, residual, deterministic: bool):
        c = self.config
        return _dense_norm(c, ctx, residual, "qkv", drop=not c.use_bottleneck, epsilon=c.layer_norm_eps,
                           deterministic=deterministic)


class Intermediate(nn.Module):
    """act(h W1 + c): the FFN's wide half."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, h):
        c = self.config
        y = primitives.dense(c, c.intermediate_size, (_width_axis(c), "mlp"), "dense")(h)
        return primitives.activation(c.hidden_act)(y)


class _FFNOutput(nn.Module):
    config: MobileBertConfig

    @nn.compact
    def __call__(self, inner, h):
        c = self.config
        return _dense_norm(c, inner, h, "mlp", drop=False, epsilon=c.layer_norm_eps, deterministic=True)


class FeedForward(nn.Module):
    """One of the extra FFNs: h = N(act(h W1) W2 + h) (HF's `ffn.N`)."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, h):
        inner = Intermediate(self.config, name="intermediate")(h)
        return _FFNOutput(self.config, name="output")(inner, h)


class OutputBottleneck(nn.Module):
    """y = N(dropout(h W_ob + c) + x): back to the 512-d inter-block width."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, h, x_BxTxH, deterministic: bool):
        c = self.config
        y = primitives.dense(c, c.hidden_size, ("bottleneck", "hidden"), "dense")(h)
        y = nn.Dropout(c.hidden_dropout_prob)(y, deterministic=deterministic)
        return primitives.norm(c, "hidden", c.layer_norm_eps)(y + x_BxTxH)


class BlockOutput(nn.Module):
    """The last FFN's output half, then (with bottleneck) the output bottleneck."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, inner, h, x_BxTxH, deterministic: bool):
        c = self.config
        # The "outer" epsilon: HF builds this norm without layer_norm_eps.
        y = _dense_norm(c, inner, h, "mlp", drop=not c.use_bottleneck, epsilon=c.outer_norm_eps,
                        deterministic=deterministic)
        if c.use_bottleneck:
            y = OutputBottleneck(c, name="bottleneck")(y, x_BxTxH, deterministic)
        return y


class Layer(nn.Module):
    """One block; returns (output, masked pre-softmax attention scores)."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, x_BxTxH: jax.Array, mask_BxT: Optional[jax.Array], deterministic: bool = True):
        c = self.config
        if c.use_bottleneck:
            q_in, k_in, v_in, residual = Bottleneck(c, name="bottleneck")(x_BxTxH)
        else:
            q_in = k_in = v_in = residual = x_BxTxH
        h, scores_BxNxTxT = AttentionBlock(c, name="attention")(q_in, k_in, v_in, residual, mask_BxT, deterministic)
        for i in range(c.num_feedforward_networks - 1):
            h = FeedForward(c, name=f"ffn_{i}")(h)
        inner = Intermediate(c, name="intermediate")(h)
        y = BlockOutput(c, name="output")(inner, h, x_BxTxH, deterministic)
        return y, scores_BxNxTxT
