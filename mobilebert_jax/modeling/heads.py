"""Task heads and the models that put them on the backbone (HF's class names).

Every model keeps the backbone under `mobilebert`, as HF does, so one
conversion table serves them all. Each returns a dict of outputs.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.modeling import primitives
from mobilebert_jax.modeling.encoder import MobileBertModel


def gather_positions(h_BxTxH: jax.Array, positions_BxP: jax.Array) -> jax.Array:
    """h[b, positions[b, p]] -> [B, P, H]: the MLM head runs only where it is scored."""
    return jnp.take_along_axis(h_BxTxH, positions_BxP[..., None].astype(jnp.int32), axis=1)


class MLMHead(nn.Module):
    """u = LN(act(h W_t + c)); logits = u[:, :E] E^T + u[:, E:] X + bias.

    A real LayerNorm even in no_norm models; E the tied word table (with
    `tie_word_embeddings=False` a separate `decoder` [E, V], HF's
    `cls.predictions.decoder`), X the [H - E, V] "extra_output_weights"
    (HF: `cls.predictions.dense`).
    """

    config: MobileBertConfig

    @nn.compact
    def __call__(self, h_BxTxH, attend):
        c = self.config
        transform = _Transform(c, name="transform")(h_BxTxH)
        e = c.embedding_size
        extra = self.param(
            "extra_output_weights",
            primitives.kernel_init(c, ("extra_embed", "vocab")), (c.hidden_size - e, c.vocab_size), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                          (c.vocab_size,), jnp.float32)
        dtype = primitives.compute_dtype(c)
        if c.tie_word_embeddings:
            first = attend(transform[..., :e])
        else:
            first = primitives.dense(c, c.vocab_size, ("embed", "vocab"), "decoder", use_bias=False)(transform[..., :e])
        logits = first + jnp.einsum("...k,kv->...v", transform[..., e:], extra.astype(dtype))
        return (logits + bias.astype(dtype)).astype(jnp.float32)


class _Transform(nn.Module):
    config: MobileBertConfig

    @nn.compact
    def __call__(self, h):
        c = self.config
        y = primitives.dense(c, c.hidden_size, ("hidden", "transform"), "dense")(h)
        y = primitives.activation(c.hidden_act)(y)
        return primitives.layer_norm(c, "transform", c.layer_norm_eps, "LayerNorm")(y)


class _LMHeads(nn.Module):
    """HF's `cls`: the MLM head, and the NSP head when `with_nsp`."""

    config: MobileBertConfig
    with_nsp: bool

    @nn.compact
    def __call__(self, h, pooled_BxH, attend):
        mlm = MLMHead(self.config, name="predictions")(h, attend)
        if not self.with_nsp:
            return mlm, None
        nsp = primitives.dense(self.config, 2, ("hidden", "classes"), "seq_relationship")(pooled_BxH)
        return mlm, nsp.astype(jnp.float32)


class _LanguageModel(nn.Module):
    """Backbone + MLM (+ NSP). With `masked_lm_positions` [B, P] the MLM head
    runs only there and `mlm_logits` is [B, P, V]; otherwise [B, T, V]."""

    config: MobileBertConfig
    WITH_NSP: ClassVar[bool] = True

    def setup(self):
        # The pooler feeds only NSP; HF's masked-LM model has none.
        self.mobilebert = MobileBertModel(self.config, add_pooling_layer=self.WITH_NSP)
        self.cls = _LMHeads(self.config, self.WITH_NSP)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 masked_lm_positions: Optional[jax.Array] = None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attention_scores: bool = False) -> dict:
        out = self.mobilebert(input_ids, attention_mask, token_type_ids, position_ids, deterministic,
                              output_hidden_states, output_attention_scores)
        h = out["last_hidden_state"]
        if masked_lm_positions is not None:
            h = gather_positions(h, masked_lm_positions)
        mlm, nsp = self.cls(h, out.get("pooled_output"), self.mobilebert.attend)
        out["mlm_logits"] = mlm
        if nsp is not None:
            out["nsp_logits"] = nsp
        return out


class MobileBertForPreTraining(_LanguageModel):
    """MLM + NSP: `mlm_logits` and `nsp_logits` [B, 2]."""

    WITH_NSP: ClassVar[bool] = True


class MobileBertForMaskedLM(_LanguageModel):
    """MLM only: `mlm_logits`."""

    WITH_NSP: ClassVar[bool] = False


def _backbone(config: MobileBertConfig, pooling: bool, input_ids, attention_mask, token_type_ids, position_ids,
              deterministic, output_hidden_states, output_attention_scores) -> dict:
    """The backbone under HF's name `mobilebert`, inside the calling module's scope."""
    return MobileBertModel(config, add_pooling_layer=pooling, name="mobilebert")(
        input_ids, attention_mask, token_type_ids, position_ids, deterministic, output_hidden_states,
        output_attention_scores)


def _classifier(config: MobileBertConfig, features: int, x, deterministic: bool):
    x = nn.Dropout(config.classifier_dropout_prob)(x, deterministic=deterministic)
    return primitives.dense(config, features, ("hidden", "classes"), "classifier")(x).astype(jnp.float32)


class MobileBertForSequenceClassification(nn.Module):
    """Dropout on the pooled [CLS] vector, then a linear layer. `num_labels=1`
    is regression (STS-B)."""

    config: MobileBertConfig
    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attention_scores: bool = False) -> dict:
        out = _backbone(self.config, True, input_ids, attention_mask, token_type_ids, position_ids, deterministic,
                        output_hidden_states, output_attention_scores)
        out["logits"] = _classifier(self.config, self.num_labels, out["pooled_output"], deterministic)
        return out


class MobileBertForTokenClassification(nn.Module):
    config: MobileBertConfig
    num_labels: int = 2

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attention_scores: bool = False) -> dict:
        out = _backbone(self.config, False, input_ids, attention_mask, token_type_ids, position_ids, deterministic,
                        output_hidden_states, output_attention_scores)
        out["logits"] = _classifier(self.config, self.num_labels, out["last_hidden_state"], deterministic)
        return out


class MobileBertForQuestionAnswering(nn.Module):
    """Span extraction: start and end logits per token."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attention_scores: bool = False) -> dict:
        out = _backbone(self.config, False, input_ids, attention_mask, token_type_ids, position_ids, deterministic,
                        output_hidden_states, output_attention_scores)
        logits = primitives.dense(self.config, 2, ("hidden", "classes"), "qa_outputs")(out["last_hidden_state"])
        logits = logits.astype(jnp.float32)
        out["start_logits"], out["end_logits"] = logits[..., 0], logits[..., 1]
        return out


class MobileBertForMultipleChoice(nn.Module):
    """Inputs [B, C, T]; each choice scored from its pooled vector; logits [B, C]."""

    config: MobileBertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 output_attention_scores: bool = False) -> dict:
        batch, choices, seq = input_ids.shape
        flat = lambda x: None if x is None else x.reshape(batch * choices, seq)  # noqa: E731
        out = _backbone(self.config, True, flat(input_ids), flat(attention_mask), flat(token_type_ids),
                        flat(position_ids), deterministic, output_hidden_states, output_attention_scores)
        logits = _classifier(self.config, 1, out["pooled_output"], deterministic)
        out["logits"] = logits.reshape(batch, choices)
        return out
