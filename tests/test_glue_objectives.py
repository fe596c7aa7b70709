"""Fine-tuning objectives (GLUE classification/regression, SQuAD spans) against NumPy, and in the train step."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mobilebert_jax import get_preset
from mobilebert_jax.modeling import MobileBertForQuestionAnswering, MobileBertForSequenceClassification
from mobilebert_jax.finetune import objectives
from mobilebert_jax.train import step as step_lib

CONFIG = get_preset("mobilebert_test", num_hidden_layers=1, num_feedforward_networks=2)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_classification_and_regression_sums_match_numpy():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 3)).astype(np.float32), rng.integers(0, 3, 6)
    weights = np.array([1, 1, 1, 1, 0, 0], np.float32)
    sums = objectives.classification_sums(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
    xent = -_log_softmax(logits)[np.arange(6), labels]
    np.testing.assert_allclose(sums["loss_sum"], (xent * weights).sum(), rtol=1e-6)
    np.testing.assert_allclose(sums["correct_sum"], ((logits.argmax(-1) == labels) * weights).sum())
    out = objectives.summarize_classification(sums)
    np.testing.assert_allclose(out["loss"], xent[:4].mean(), rtol=1e-6)

    preds, scores = rng.normal(size=(6, 1)).astype(np.float32), rng.uniform(0, 5, 6).astype(np.float32)
    sums = objectives.regression_sums(jnp.asarray(preds), jnp.asarray(scores), jnp.asarray(weights))
    np.testing.assert_allclose(objectives.summarize_regression(sums)["loss"],
                               ((preds[:4, 0] - scores[:4]) ** 2).mean(), rtol=1e-6)


def test_span_sums_match_numpy():
    rng = np.random.default_rng(1)
    start, end = rng.normal(size=(2, 4, 9)).astype(np.float32)
    s, e = np.array([0, 3, 5, 8]), np.array([0, 4, 5, 8])
    sums = objectives.span_sums(jnp.asarray(start), jnp.asarray(end), jnp.asarray(s), jnp.asarray(e), jnp.ones(4))
    start_xent = -_log_softmax(start)[np.arange(4), s]
    end_xent = -_log_softmax(end)[np.arange(4), e]
    totals = {"examples": jnp.asarray(4.0)}
    np.testing.assert_allclose(objectives.span_loss(sums, totals), (start_xent + end_xent).mean() / 2, rtol=1e-6)
    np.testing.assert_allclose(objectives.summarize_spans(sums)["start_accuracy"],
                               (start.argmax(-1) == s).mean())


def _batch(kind, n=8, t=16, seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(t)[None] < rng.integers(6, t + 1, (n, 1))).astype(np.int32)
    batch = {"input_ids": (rng.integers(5, CONFIG.vocab_size, (n, t)) * mask).astype(np.int32), "input_mask": mask,
             "segment_ids": (np.arange(t)[None] >= 4).astype(np.int32).repeat(n, 0) * mask}
    if kind == "classification":
        batch["label"] = rng.integers(0, 3, n).astype(np.int32)
    elif kind == "regression":
        batch["label"] = rng.uniform(0, 5, n).astype(np.float32)
    else:
        batch["start_positions"] = rng.integers(0, 6, n).astype(np.int32)
        batch["end_positions"] = batch["start_positions"] + 1
    return batch


class _WithoutDropout:
    """`objective` trained without dropout (the old sums_fn(model, deterministic=True)), so that the two runs see
    the same function."""

    def __init__(self, objective):
        self.objective, self.progress_keys = objective, objective.progress_keys

    def sums(self, params, batch, rng, context, *, train):
        return self.objective.sums(params, batch, rng, context, train=False)

    def __getattr__(self, name):
        return getattr(self.objective, name)


@pytest.mark.parametrize("kind", ["classification", "regression", "spans"])
def test_microbatched_step_equals_the_big_batch(kind):
    if kind == "spans":
        model = MobileBertForQuestionAnswering(CONFIG)
        objective = objectives.Spans(model)
    else:
        model = MobileBertForSequenceClassification(CONFIG, num_labels=1 if kind == "regression" else 3)
        objective = objectives.for_glue(model, kind == "regression")
    batch = _batch(kind)
    params = nn.unbox(model.init(jax.random.key(0), batch["input_ids"])["params"])
    tx = optax.sgd(0.1)
    state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    def run(microbatches):
        step = step_lib.make_train_step(_WithoutDropout(objective), tx, microbatches=microbatches)
        return jax.jit(step)(state, batch)

    (one, m1), (four, m4) = run(1), run(4)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(m1["grad_norm"]) > 0
    # Deterministic sums equal a direct forward pass's loss.
    out = model.apply({"params": params}, batch["input_ids"], attention_mask=batch["input_mask"],
                      token_type_ids=batch["segment_ids"])
    if kind == "classification":
        expected = -_log_softmax(np.asarray(out["logits"]))[np.arange(8), batch["label"]].mean()
    elif kind == "regression":
        expected = ((np.asarray(out["logits"])[:, 0] - batch["label"]) ** 2).mean()
    else:
        expected = (-_log_softmax(np.asarray(out["start_logits"]))[np.arange(8), batch["start_positions"]].mean()
                    - _log_softmax(np.asarray(out["end_logits"]))[np.arange(8), batch["end_positions"]].mean()) / 2
    np.testing.assert_allclose(m1["loss"], expected, rtol=1e-5)


def test_padding_rows_do_not_count():
    model = MobileBertForSequenceClassification(CONFIG, num_labels=3)
    batch = _batch("classification", n=4)
    params = nn.unbox(model.init(jax.random.key(0), batch["input_ids"])["params"])
    objective = objectives.Classification(model)
    context = step_lib.StepContext(step=jnp.zeros((), jnp.int32))
    sums_fn = jax.jit(lambda p, b, rng: objective.sums(p, b, rng, context, train=False))
    real = sums_fn(params, {k: v[:3] for k, v in batch.items()}, jax.random.key(0))
    padded = sums_fn(params, {**batch, "example_weight": np.array([1, 1, 1, 0], np.float32)}, jax.random.key(0))
    for key in real:
        np.testing.assert_allclose(real[key], padded[key], rtol=1e-6)
