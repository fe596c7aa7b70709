"""The train and eval steps: pure functions the trainer jits with shardings.

A step is generic over what it optimizes: `sums_fn(params, batch, rng)`
returns additive sums (losses, correct counts, weights), `totals_fn(batch)`
the whole batch's denominators, and `loss_fn(sums, totals)` the scalar to
differentiate. Because every microbatch divides by the whole batch's
denominators, accumulating gradients over microbatches equals the big-batch
gradient.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mobilebert_jax.train import losses

Batch = dict[str, jax.Array]
Sums = dict[str, jax.Array]
# sums_fn(params, batch, rng), or sums_fn(params, batch, rng, context) for
# tasks built with `uses_context=True` (distillation: the frozen teacher and
# the step, which selects the progressive stage).
SumsFn = Callable[..., Sums]


@flax.struct.dataclass
class StepContext:
    step: jax.Array  # the step being taken (0-based)
    frozen: Any = None  # parameters used but never trained (a teacher); no gradient, no optimizer state


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def pretraining_sums_fn(model, deterministic: bool) -> SumsFn:
    """MLM on gathered masked positions + NSP, for MobileBertForPreTraining."""

    def sums_fn(params, batch: Batch, rng: jax.Array) -> Sums:
        out = model.apply(
            {"params": params}, batch["input_ids"], attention_mask=batch["input_mask"],
            token_type_ids=batch["segment_ids"], masked_lm_positions=batch["masked_lm_positions"],
            deterministic=deterministic, rngs=None if deterministic else {"dropout": rng})
        return {**losses.masked_lm_sums(out["mlm_logits"], batch["masked_lm_ids"], batch["masked_lm_weights"]),
                **losses.nsp_sums(out["nsp_logits"], batch["next_sentence_labels"])}

    return sums_fn


def pretraining_totals(batch: Batch) -> dict[str, jax.Array]:
    return {"mlm": jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)) + losses.MLM_DENOMINATOR_EPS,
            "nsp": jnp.asarray(batch["next_sentence_labels"].shape[0], jnp.float32)}


def pretraining_loss(sums: Sums, totals: dict[str, jax.Array]) -> jax.Array:
    return losses.pretraining_loss(sums, totals["mlm"], totals["nsp"])


def split_microbatches(batch: Batch, microbatches: int) -> Batch:
    """[B, ...] -> [M, B/M, ...]."""
    def split(x):
        if x.shape[0] % microbatches:
            raise ValueError(f"batch of {x.shape[0]} does not split into {microbatches} microbatches")
        return x.reshape(microbatches, x.shape[0] // microbatches, *x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(
    sums_fn: SumsFn,
    optimizer: optax.GradientTransformation,
    *,
    totals_fn: Callable[[Batch], dict] = pretraining_totals,
    loss_fn: Callable[[Sums, dict], jax.Array] = pretraining_loss,
    summarize_fn: Callable[[Sums], dict] = losses.summarize,
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
    microbatches: int = 1,
    dropout_seed: int = 0,
    uses_context: bool = False,
    step_metrics_fn: Callable[[jax.Array], dict] | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
    """Builds `step(state, batch, frozen=None) -> (state, metrics)`; jit it with shardings and donate the state.

    Gradients are taken with respect to `state.params` only: `frozen` enters
    the objective as a constant, so it gets no gradient and no optimizer state.
    `step_metrics_fn(step)` adds scalars that depend on the step alone.
    """

    def grads_and_sums(params, batch, rng, totals, context):
        def objective(p):
            sums = sums_fn(p, batch, rng, context) if uses_context else sums_fn(p, batch, rng)
            return loss_fn(sums, totals), sums

        (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return grads, sums

    def step(state: TrainState, batch: Batch, frozen: Any = None):
        # One dropout stream per step, independent of how the run was split or resumed.
        rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
        totals = totals_fn(batch)
        context = StepContext(step=state.step, frozen=frozen)
        if microbatches == 1:
            grads, sums = grads_and_sums(state.params, batch, rng, totals, context)
        else:
            micro = split_microbatches(batch, microbatches)

            def body(carry, inputs):
                index, mb = inputs
                g, s = grads_and_sums(state.params, mb, jax.random.fold_in(rng, index), totals, context)
                return jax.tree.map(jnp.add, carry, (g, s)), None

            first = jax.eval_shape(lambda: grads_and_sums(
                state.params, jax.tree.map(lambda x: x[0], micro), rng, totals, context))
            zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), first)
            (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(microbatches), micro))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(summarize_fn(sums))
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["param_norm"] = optax.tree.norm(params)
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        if step_metrics_fn is not None:
            metrics.update(step_metrics_fn(state.step))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def make_eval_step(sums_fn: SumsFn, uses_context: bool = False) -> Callable[..., Sums]:
    """`eval(params, batch, frozen=None, step=0) -> sums`; add the sums over batches, then summarize."""

    def eval_step(params, batch: Batch, frozen: Any = None, step: Any = 0) -> Sums:
        rng = jax.random.key(0)
        if uses_context:
            return sums_fn(params, batch, rng, StepContext(step=jnp.asarray(step, jnp.int32), frozen=frozen))
        return sums_fn(params, batch, rng)

    return eval_step
