"""Token embeddings: a narrow word table, the trigram convolution, positions and segments."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.modeling import primitives


def trigram(e_BxTxE: jax.Array) -> jax.Array:
    """[e_{i+1}; e_i; e_{i-1}] with zero vectors past both ends (REFERENCE section 2)."""
    zeros_Bx1xE = jnp.zeros_like(e_BxTxE[:, :1])
    next_BxTxE = jnp.concatenate([e_BxTxE[:, 1:], zeros_Bx1xE], axis=1)
    prev_BxTxE = jnp.concatenate([zeros_Bx1xE, e_BxTxE[:, :-1]], axis=1)
    return jnp.concatenate([next_BxTxE, e_BxTxE, prev_BxTxE], axis=-1)


class Embeddings(nn.Module):
    config: MobileBertConfig

    def setup(self):
        c = self.config
        init = nn.initializers.truncated_normal(c.initializer_range)
        embed = lambda n, f, axes, name: nn.Embed(  # noqa: E731
            n, f, dtype=primitives.compute_dtype(c), param_dtype=jnp.float32,
            embedding_init=nn.with_logical_partitioning(init, axes), name=name)
        self.word_embeddings = embed(c.vocab_size, c.embedding_size, ("vocab", "embed"), "word_embeddings")
        self.position_embeddings = embed(c.max_position_embeddings, c.hidden_size, ("position", "hidden"),
                                         "position_embeddings")
        self.token_type_embeddings = embed(c.type_vocab_size, c.hidden_size, ("token_type", "hidden"),
                                           "token_type_embeddings")
        if c.has_embedding_transformation:
            in_axis = "trigram" if c.trigram_input else "embed"
            self.embedding_transformation = primitives.dense(c, c.hidden_size, (in_axis, "hidden"),
                                                             "embedding_transformation")
        self.LayerNorm = primitives.norm(c, "hidden", c.outer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def __call__(
        self,
        input_ids_BxT: jax.Array,
        token_type_ids_BxT: Optional[jax.Array] = None,
        position_ids_BxT: Optional[jax.Array] = None,
        attention_mask_BxT: Optional[jax.Array] = None,
        deterministic: bool = True,
    ) -> jax.Array:
        c = self.config
        _, seq_len = input_ids_BxT.shape
        if seq_len > c.max_position_embeddings:
            raise ConfigError(f"sequence length {seq_len} exceeds max_position_embeddings={c.max_position_embeddings}")
        if position_ids_BxT is None:
            position_ids_BxT = jnp.arange(seq_len)[None, :]
        if token_type_ids_BxT is None:
            token_type_ids_BxT = jnp.zeros_like(input_ids_BxT)

        x = self.word_embeddings(input_ids_BxT)
        if c.trigram_respects_padding and attention_mask_BxT is not None:
            x = x * attention_mask_BxT[..., None].astype(x.dtype)
        if c.trigram_input:
            x = trigram(x)
        if c.has_embedding_transformation:
            x = self.embedding_transformation(x)
        x = x + self.position_embeddings(position_ids_BxT) + self.token_type_embeddings(token_type_ids_BxT)
        x = self.LayerNorm(x)
        return self.dropout(x, deterministic=deterministic)

    def attend(self, u_BxTxE: jax.Array) -> jax.Array:
        """Logits against the (tied) word table: u E^T."""
        return self.word_embeddings.attend(u_BxTxE)
