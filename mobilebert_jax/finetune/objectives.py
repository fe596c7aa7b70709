"""Fine-tuning `Objective`s (train/objective.py): classification, regression, spans.

Each returns per-batch sums, the whole batch's denominator (`totals`), the
differentiated loss and the logged means, so microbatch accumulation equals
the big batch. A batch may carry `example_weight` [B] (1 real, 0 padding) so
that padded evaluation batches score only real examples; without it every
row counts.

    objective = objectives.for_glue(model, dataset.is_regression)
    step = make_train_step(objective, tx)
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mobilebert_jax.train.objective import Batch, StepContext, Sums

# Keeps an all-padding evaluation batch finite.
_EPS = 1e-9


def example_weights(batch: Batch) -> jax.Array:
    if "example_weight" in batch:
        return batch["example_weight"].astype(jnp.float32)
    return jnp.ones(batch["input_ids"].shape[:1], jnp.float32)


def _apply(model, params, batch: Batch, rng: jax.Array, train: bool) -> dict:
    return model.apply({"params": params}, batch["input_ids"], attention_mask=batch["input_mask"],
                       token_type_ids=batch["segment_ids"], deterministic=not train,
                       rngs={"dropout": rng} if train else None)


def classification_sums(logits_BxK: jax.Array, labels_B: jax.Array, weights_B: jax.Array) -> Sums:
    xent_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxK.astype(jnp.float32), labels_B)
    correct_B = (jnp.argmax(logits_BxK, axis=-1) == labels_B).astype(jnp.float32)
    return {"loss_sum": jnp.sum(xent_B * weights_B), "correct_sum": jnp.sum(correct_B * weights_B),
            "weight_sum": jnp.sum(weights_B)}


def regression_sums(logits_Bx1: jax.Array, labels_B: jax.Array, weights_B: jax.Array) -> Sums:
    error_B = logits_Bx1[:, 0].astype(jnp.float32) - labels_B.astype(jnp.float32)
    return {"loss_sum": jnp.sum(error_B * error_B * weights_B), "weight_sum": jnp.sum(weights_B)}


def span_sums(start_logits_BxT: jax.Array, end_logits_BxT: jax.Array, start_B: jax.Array, end_B: jax.Array,
              weights_B: jax.Array) -> Sums:
    sums = {"weight_sum": jnp.sum(weights_B)}
    for name, logits, positions in (("start", start_logits_BxT, start_B), ("end", end_logits_BxT, end_B)):
        xent_B = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), positions)
        sums[f"{name}_loss_sum"] = jnp.sum(xent_B * weights_B)
        sums[f"{name}_correct_sum"] = jnp.sum((jnp.argmax(logits, -1) == positions).astype(jnp.float32) * weights_B)
    return sums


def example_totals(batch: Batch) -> dict[str, jax.Array]:
    return {"examples": jnp.sum(example_weights(batch)) + _EPS}


def mean_loss(sums: Sums, totals: dict[str, jax.Array]) -> jax.Array:
    return sums["loss_sum"] / totals["examples"]


def span_loss(sums: Sums, totals: dict[str, jax.Array]) -> jax.Array:
    """The mean of the start and end cross-entropies, as TF1 BERT's run_squad."""
    return (sums["start_loss_sum"] + sums["end_loss_sum"]) / (2.0 * totals["examples"])


def summarize_classification(sums: Sums) -> dict[str, jax.Array]:
    n = sums["weight_sum"] + _EPS
    return {"loss": sums["loss_sum"] / n, "accuracy": sums["correct_sum"] / n}


def summarize_regression(sums: Sums) -> dict[str, jax.Array]:
    return {"loss": sums["loss_sum"] / (sums["weight_sum"] + _EPS)}


def summarize_spans(sums: Sums) -> dict[str, jax.Array]:
    n = sums["weight_sum"] + _EPS
    return {"loss": (sums["start_loss_sum"] + sums["end_loss_sum"]) / (2.0 * n),
            "start_accuracy": sums["start_correct_sum"] / n, "end_accuracy": sums["end_correct_sum"] / n}


@dataclasses.dataclass(frozen=True)
class PerExampleObjective(abc.ABC):
    """What the three share: one forward pass of `model`, scored per example, divided by the batch's examples."""
    model: nn.Module

    def sums(self, params: Any, batch: Batch, rng: jax.Array, context: StepContext, *, train: bool) -> Sums:
        del context  # nothing here depends on the step or a frozen tree
        return self.score(_apply(self.model, params, batch, rng, train), batch)

    @abc.abstractmethod
    def score(self, out: dict, batch: Batch) -> Sums:
        """The model's outputs -> this objective's sums."""

    def totals(self, batch: Batch) -> dict[str, jax.Array]:
        return example_totals(batch)

    def loss(self, sums: Sums, totals: dict[str, jax.Array]) -> jax.Array:
        """The mean per-example loss (Spans overrides it with TF1's start/end mean)."""
        return mean_loss(sums, totals)


class Classification(PerExampleObjective):
    progress_keys = ("loss", "accuracy")

    def score(self, out: dict, batch: Batch) -> Sums:
        return classification_sums(out["logits"], batch["label"], example_weights(batch))

    def summarize(self, sums: Sums) -> dict[str, jax.Array]:
        return summarize_classification(sums)


class Regression(PerExampleObjective):
    progress_keys = ("loss",)

    def score(self, out: dict, batch: Batch) -> Sums:
        return regression_sums(out["logits"], batch["label"], example_weights(batch))

    def summarize(self, sums: Sums) -> dict[str, jax.Array]:
        return summarize_regression(sums)


class Spans(PerExampleObjective):
    progress_keys = ("loss", "start_accuracy")

    def score(self, out: dict, batch: Batch) -> Sums:
        return span_sums(out["start_logits"], out["end_logits"], batch["start_positions"], batch["end_positions"],
                         example_weights(batch))

    def loss(self, sums: Sums, totals: dict[str, jax.Array]) -> jax.Array:
        return span_loss(sums, totals)

    def summarize(self, sums: Sums) -> dict[str, jax.Array]:
        return summarize_spans(sums)


def for_glue(model: nn.Module, is_regression: bool) -> PerExampleObjective:
    return Regression(model) if is_regression else Classification(model)
