"""The MLM + NSP pretraining objective on gathered masked positions, as TF1 BERT computes it.

Losses are returned as (numerator, denominator) sums so that gradient
accumulation over microbatches divides by the whole batch's denominator and
equals the big-batch step exactly (`train/objective.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mobilebert_jax.train.objective import Batch, StepContext, Sums

# TF1 BERT adds this to the masked-LM denominator so an all-padding batch is finite.
MLM_DENOMINATOR_EPS = 1e-5


def masked_lm_sums(logits_BxPxV: jax.Array, ids_BxP: jax.Array, weights_BxP: jax.Array) -> dict[str, jax.Array]:
    """Weighted cross-entropy and correct-prediction sums over the scored positions."""
    xent = optax.softmax_cross_entropy_with_integer_labels(logits_BxPxV.astype(jnp.float32), ids_BxP)
    correct = (jnp.argmax(logits_BxPxV, axis=-1) == ids_BxP).astype(jnp.float32)
    w = weights_BxP.astype(jnp.float32)
    return {"mlm_loss_sum": jnp.sum(xent * w), "mlm_correct_sum": jnp.sum(correct * w), "mlm_weight_sum": jnp.sum(w)}


def nsp_sums(logits_Bx2: jax.Array, labels_B: jax.Array) -> dict[str, jax.Array]:
    xent = optax.softmax_cross_entropy_with_integer_labels(logits_Bx2.astype(jnp.float32), labels_B)
    correct = (jnp.argmax(logits_Bx2, axis=-1) == labels_B).astype(jnp.float32)
    return {"nsp_loss_sum": jnp.sum(xent), "nsp_correct_sum": jnp.sum(correct),
            "nsp_count": jnp.asarray(labels_B.shape[0], jnp.float32)}


def mlm_nsp_totals(batch: Batch) -> dict[str, jax.Array]:
    """The whole batch's MLM weight (TF1's epsilon added) and sequence count."""
    return {"mlm": jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)) + MLM_DENOMINATOR_EPS,
            "nsp": jnp.asarray(batch["next_sentence_labels"].shape[0], jnp.float32)}


def summarize(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Sums accumulated over a batch (or several) -> the logged means."""
    mlm_den = sums["mlm_weight_sum"] + MLM_DENOMINATOR_EPS
    nsp_den = jnp.maximum(sums["nsp_count"], 1.0)
    out = {
        "mlm_loss": sums["mlm_loss_sum"] / mlm_den,
        "mlm_accuracy": sums["mlm_correct_sum"] / mlm_den,
        "nsp_loss": sums["nsp_loss_sum"] / nsp_den,
        "nsp_accuracy": sums["nsp_correct_sum"] / nsp_den,
    }
    out["loss"] = out["mlm_loss"] + out["nsp_loss"]
    return out


@dataclasses.dataclass(frozen=True)
class PretrainingObjective:
    """MLM + NSP of a MobileBertForPreTraining (the IB-BERT teacher, a student from scratch, held-out scores)."""
    model: nn.Module
    progress_keys: tuple[str, ...] = ("loss", "mlm_accuracy")

    def sums(self, params: Any, batch: Batch, rng: jax.Array, context: StepContext, *, train: bool) -> Sums:
        del context  # nothing here depends on the step or a frozen tree
        out = self.model.apply(
            {"params": params}, batch["input_ids"], attention_mask=batch["input_mask"],
            token_type_ids=batch["segment_ids"], masked_lm_positions=batch["masked_lm_positions"],
            deterministic=not train, rngs={"dropout": rng} if train else None)
        return {**masked_lm_sums(out["mlm_logits"], batch["masked_lm_ids"], batch["masked_lm_weights"]),
                **nsp_sums(out["nsp_logits"], batch["next_sentence_labels"])}

    def totals(self, batch: Batch) -> dict[str, jax.Array]:
        return mlm_nsp_totals(batch)

    def loss(self, sums: Sums, totals: dict[str, jax.Array]) -> jax.Array:
        """MLM mean over the batch's masked weights + NSP mean over its sequences."""
        return sums["mlm_loss_sum"] / totals["mlm"] + sums["nsp_loss_sum"] / totals["nsp"]

    def summarize(self, sums: Sums) -> dict[str, jax.Array]:
        return summarize(sums)
