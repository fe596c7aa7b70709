"""Analytic FLOP counts (2 x multiply-accumulates of the matmuls).

Used for the README's table, for model FLOP/s and MFU in the trainer, and
for the ahead-of-time run-time predictions. Elementwise work (norms,
activations, softmax) is left out, as in the usual MFU convention; a test
checks these counts against XLA's cost analysis of the compiled forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.partitioning import unbox_without_constraints


def layer_macs_per_token(c: MobileBertConfig, seq_len: int) -> int:
    w = c.true_hidden_size
    macs = 0
    if c.use_bottleneck:
        macs += c.hidden_size * c.intra_bottleneck_size  # input bottleneck
        if c.key_query_shared_bottleneck and not c.use_bottleneck_attention:
            macs += c.hidden_size * c.intra_bottleneck_size
        macs += w * c.hidden_size  # output bottleneck
    macs += 2 * c.attention_input_size * w + c.value_input_size * w  # Q, K, V
    macs += 2 * seq_len * w  # Q K^T and P V
    macs += w * w  # attention output
    macs += c.num_feedforward_networks * 2 * w * c.intermediate_size
    return macs


def embedding_macs_per_token(c: MobileBertConfig) -> int:
    if not c.has_embedding_transformation:
        return 0
    return (3 if c.trigram_input else 1) * c.embedding_size * c.hidden_size


def encoder_flops_per_token(c: MobileBertConfig, seq_len: int = 128) -> int:
    """Forward FLOPs per token of embeddings + all layers (no heads)."""
    return 2 * (embedding_macs_per_token(c) + c.num_hidden_layers * layer_macs_per_token(c, seq_len))


def mlm_flops_per_prediction(c: MobileBertConfig) -> int:
    """Forward FLOPs of the MLM head for one predicted position."""
    return 2 * (c.hidden_size * c.hidden_size + c.hidden_size * c.vocab_size)


def pretraining_train_flops_per_sequence(c: MobileBertConfig, seq_len: int, predictions: int) -> int:
    """Forward + backward (3x forward) FLOPs of one MLM+NSP training sequence."""
    forward = seq_len * encoder_flops_per_token(c, seq_len) + predictions * mlm_flops_per_prediction(c)
    forward += 2 * c.hidden_size * 2  # NSP
    return 3 * forward


def parameter_count(c: MobileBertConfig, with_pooler: bool = False) -> int:
    """Backbone parameters (embeddings + encoder), counted from the initialized shapes."""
    from mobilebert_jax.modeling import MobileBertModel

    model = MobileBertModel(c, add_pooling_layer=with_pooler)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
    return sum(x.size for x in jax.tree.leaves(unbox_without_constraints(shapes["params"])))
