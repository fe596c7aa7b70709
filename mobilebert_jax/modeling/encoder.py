"""The backbone: embeddings, L blocks, optional pooler (HF's `MobileBertModel`)."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.modeling import primitives, stacking
from mobilebert_jax.modeling.embeddings import Embeddings
from mobilebert_jax.modeling.layer import Layer


class Encoder(nn.Module):
    """L blocks, unrolled (`layer_{i}`) or, with `scan_layers`, one block under `nn.scan` (`layers`, each
    parameter with a leading layer axis; modeling/stacking.py converts between the two layouts).

    Under scan the block is traced and compiled once instead of L times (MaxText's `scan_layers`); the
    per-layer outputs come back stacked and are split into the same tuples the unrolled loop returns. With
    `remat` each layer is rematerialized in the backward pass either way.

    `last_layer` (an int32 scalar, traced or not) runs layers 0..last_layer only: each layer sits under a
    `lax.cond` on its index, so one compiled program serves every value, a layer above it costs nothing at run
    time (forward or backward) and passes its input through unchanged, with all-zero attention scores. The
    layers' parameters must exist already (apply, not init: a cond's branches must create the same variables).
    """

    config: MobileBertConfig

    @nn.compact
    def __call__(self, x_BxTxH, mask_BxT, deterministic: bool, output_hidden_states: bool,
                 output_attention_scores: bool, last_layer: Optional[jax.Array] = None):
        c = self.config
        if c.scan_layers:
            return self._scanned(x_BxTxH, mask_BxT, deterministic, output_hidden_states, output_attention_scores,
                                 last_layer)
        layer_cls = _layer_class(c)
        hidden_states, scores = [x_BxTxH], []
        for i in range(c.num_hidden_layers):
            x_BxTxH, s_BxNxTxT = _run_layer(c, layer_cls(c, name=stacking.layer_name(i)), x_BxTxH, mask_BxT,
                                            deterministic, i, last_layer)
            x_BxTxH = nn.with_logical_constraint(x_BxTxH, ("batch", "length", "hidden"))
            if output_hidden_states:
                hidden_states.append(x_BxTxH)
            if output_attention_scores:
                scores.append(s_BxNxTxT)
        return x_BxTxH, tuple(hidden_states) if output_hidden_states else None, (
            tuple(scores) if output_attention_scores else None)

    def _scanned(self, x_BxTxH, mask_BxT, deterministic: bool, output_hidden_states: bool,
                 output_attention_scores: bool, last_layer: Optional[jax.Array]):
        c = self.config

        # A scan's per-step outputs must have static shapes: emit only what was asked for (the [L, B, N, T, T]
        # scores are the largest activation a forward pass can keep).
        def body(layer, x_BxTxH, mask_BxT, index):
            y_BxTxH, s_BxNxTxT = _run_layer(c, layer, x_BxTxH, mask_BxT, deterministic, index, last_layer)
            y_BxTxH = nn.with_logical_constraint(y_BxTxH, ("batch", "length", "hidden"))
            return y_BxTxH, (y_BxTxH if output_hidden_states else None,
                             s_BxNxTxT if output_attention_scores else None)

        scan = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                       in_axes=(nn.broadcast, 0), length=c.num_hidden_layers,
                       metadata_params=stacking.AXIS_PARAMS)
        layer = _layer_class(c)(c, name=stacking.STACKED)
        last_BxTxH, (hidden_LxBxTxH, scores_LxBxNxTxT) = scan(layer, x_BxTxH, mask_BxT,
                                                             jnp.arange(c.num_hidden_layers, dtype=jnp.int32))
        layers = range(c.num_hidden_layers)
        hidden_states = (x_BxTxH, *(hidden_LxBxTxH[i] for i in layers)) if output_hidden_states else None
        scores = tuple(scores_LxBxNxTxT[i] for i in layers) if output_attention_scores else None
        return last_BxTxH, hidden_states, scores


def _run_layer(c: MobileBertConfig, layer: nn.Module, x_BxTxH, mask_BxT, deterministic: bool, index,
               last_layer: Optional[jax.Array]):
    """(output, attention scores) of `layer`, or, above `last_layer`, its input and zero scores at no cost."""
    if last_layer is None:
        return layer(x_BxTxH, mask_BxT, deterministic)

    def skip(_, x_BxTxH, mask_BxT):
        b, t = mask_BxT.shape
        return x_BxTxH, jnp.zeros((b, c.num_attention_heads, t, t), jnp.float32)

    return nn.cond(index <= last_layer, lambda mdl, x, m: mdl(x, m, deterministic), skip, layer, x_BxTxH,
                   mask_BxT)


def _layer_class(c: MobileBertConfig):
    if not c.remat:
        return Layer
    # static_argnums counts `self` as 0: `deterministic` is argument 3. Inside a scan the loop already keeps
    # XLA from merging the recomputation with the forward pass, so prevent_cse would only cost (jax.checkpoint).
    return nn.remat(Layer, static_argnums=(3,), prevent_cse=not c.scan_layers)


class Pooler(nn.Module):
    """The [CLS] vector, through tanh(W x + b) only if `classifier_activation`."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, h_BxTxH):
        first_BxH = h_BxTxH[:, 0]
        if not self.config.classifier_activation:
            return first_BxH
        return jnp.tanh(primitives.dense(self.config, self.config.hidden_size, ("hidden", "transform"), "dense")(
            first_BxH))


class MobileBertModel(nn.Module):
    """Returns a dict: last_hidden_state [B, T, H], pooled_output [B, H] (when
    the pooler is on), hidden_states (embedding output + L layers, on request)
    and attention_scores (L maps [B, N, T, T] of masked pre-softmax scores,
    on request). With `last_layer` only layers 0..last_layer run (Encoder):
    last_hidden_state and the pooled output are then layer last_layer's."""

    config: MobileBertConfig
    add_pooling_layer: bool = True

    def setup(self):
        self.embeddings = Embeddings(self.config)
        self.encoder = Encoder(self.config)
        if self.add_pooling_layer:
            self.pooler = Pooler(self.config)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: Optional[jax.Array] = None,
        token_type_ids: Optional[jax.Array] = None,
        position_ids: Optional[jax.Array] = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attention_scores: bool = False,
        last_layer: Optional[jax.Array] = None,
    ) -> dict:
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, position_ids, attention_mask, deterministic)
        x = nn.with_logical_constraint(x, ("batch", "length", "hidden"))
        last, hidden_states, scores = self.encoder(x, attention_mask, deterministic, output_hidden_states,
                                                   output_attention_scores, last_layer)
        out = {"last_hidden_state": last}
        if self.add_pooling_layer:
            out["pooled_output"] = self.pooler(last)
        if output_hidden_states:
            out["hidden_states"] = hidden_states
        if output_attention_scores:
            out["attention_scores"] = scores
        return out

    def attend(self, u_BxTxE: jax.Array) -> jax.Array:
        return self.embeddings.attend(u_BxTxE)
