"""The train and eval steps: pure functions the trainer jits with shardings, and the evaluation loop.

A step is generic over what it optimizes: an `Objective` (train/objective.py)
returns additive sums, the whole batch's totals and the loss to
differentiate. Because every microbatch divides by the whole batch's
denominators, accumulating gradients over microbatches equals the big-batch
gradient.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mobilebert_jax.train.objective import Batch, Objective, StepContext, Sums


# The train step's metric counting the global batch's non-padding tokens (input_mask != 0).
REAL_TOKENS = "real_tokens"


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def split_microbatches(batch: Batch, microbatches: int) -> Batch:
    """[B, ...] -> [M, B/M, ...]."""
    def split(x):
        if x.shape[0] % microbatches:
            raise ValueError(f"batch of {x.shape[0]} does not split into {microbatches} microbatches")
        return x.reshape(microbatches, x.shape[0] // microbatches, *x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(
    objective: Objective,
    optimizer: optax.GradientTransformation,
    *,
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
    microbatches: int = 1,
    dropout_seed: int = 0,
    step_metrics_fn: Callable[[jax.Array], dict] | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
    """Builds `step(state, batch, frozen=None) -> (state, metrics)`; jit it with shardings and donate the state.

    Gradients are taken with respect to `state.params` only: `frozen` enters
    the objective as a constant, so it gets no gradient and no optimizer state.
    `step_metrics_fn(step)` adds scalars that depend on the step alone. A batch with an `input_mask` adds
    `real_tokens`, its non-padding tokens over the whole global batch (one reduction of the mask, on device, so
    every host sees the global count), from which the trainer derives the padding fraction and useful throughput.
    """

    def grads_and_sums(params, batch, rng, totals, context):
        def loss_and_sums(p):
            sums = objective.sums(p, batch, rng, context, train=True)
            return objective.loss(sums, totals), sums

        (_, sums), grads = jax.value_and_grad(loss_and_sums, has_aux=True)(params)
        return grads, sums

    def step(state: TrainState, batch: Batch, frozen: Any = None):
        # One dropout stream per step, independent of how the run was split or resumed.
        rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
        totals = objective.totals(batch)
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
        metrics = dict(objective.summarize(sums))
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["param_norm"] = optax.tree.norm(params)
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        if step_metrics_fn is not None:
            metrics.update(step_metrics_fn(state.step))
        if "input_mask" in batch:
            metrics[REAL_TOKENS] = jnp.sum(batch["input_mask"] != 0, dtype=jnp.int32)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def make_eval_step(objective: Objective) -> Callable[..., Sums]:
    """`eval(params, batch, frozen=None, step=0) -> sums`; `evaluate` adds them over batches, then summarizes."""

    def eval_step(params, batch: Batch, frozen: Any = None, step: Any = 0) -> Sums:
        context = StepContext(step=jnp.asarray(step, jnp.int32), frozen=frozen)
        return objective.sums(params, batch, jax.random.key(0), context, train=False)

    return eval_step


def evaluate(eval_step: Callable[..., Sums], objective: Objective, params: Any, batches: Iterable[Batch],
             frozen: Any = None, step: int = 0) -> dict[str, float]:
    """The objective's summary of the sums over `batches` (exact means over all of them); {} for no batches."""
    totals = None
    for batch in batches:
        sums = eval_step(params, batch, frozen, jnp.asarray(step, jnp.int32))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    if totals is None:
        return {}
    return {k: float(v) for k, v in objective.summarize(jax.device_get(totals)).items()}
