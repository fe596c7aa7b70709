"""The train step: losses, exact gradient accumulation, and sharded == single-device."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mobilebert_jax import get_preset, optim
from mobilebert_jax.modeling import MobileBertForPreTraining
from mobilebert_jax.pretraining import objective as losses
from mobilebert_jax.train import step as step_lib
from mobilebert_jax.pretraining.objective import PretrainingObjective
from synthetic_training import COMMON

CONFIG = get_preset("mobilebert_test")


def fake_batch(batch_size=8, seq_len=16, predictions=4, seed=0, vocab=CONFIG.vocab_size):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch_size, seq_len), np.int32)
    for row in range(batch_size):
        mask[row, seq_len - rng.integers(0, seq_len // 2):] = 0
    weights = (rng.random((batch_size, predictions)) < 0.8).astype(np.float32)
    return {
        "input_ids": (rng.integers(1, vocab, (batch_size, seq_len)) * mask).astype(np.int32),
        "input_mask": mask,
        "segment_ids": (np.arange(seq_len)[None] >= seq_len // 2).astype(np.int32).repeat(batch_size, 0),
        "masked_lm_positions": rng.integers(0, seq_len // 2, (batch_size, predictions)).astype(np.int32),
        "masked_lm_ids": rng.integers(1, vocab, (batch_size, predictions)).astype(np.int32),
        "masked_lm_weights": weights,
        "next_sentence_labels": rng.integers(0, 2, (batch_size,)).astype(np.int32),
    }


def _setup(config=CONFIG, microbatches=1):
    model = MobileBertForPreTraining(config)
    batch = fake_batch()
    params = nn.unbox(model.init(jax.random.key(0), batch["input_ids"])["params"])
    opt_cfg = COMMON.optimizer("lamb", lr=1e-3)
    tx = optim.build_optimizer(opt_cfg, params)
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    train_step = step_lib.make_train_step(PretrainingObjective(model), tx,
                                          microbatches=microbatches)
    return model, state, train_step, batch


def test_masked_lm_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32)
    ids = rng.integers(0, 11, (3, 5))
    w = (rng.random((3, 5)) < 0.6).astype(np.float32)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    xent = -np.take_along_axis(log_probs, ids[..., None], -1)[..., 0]
    sums = losses.masked_lm_sums(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(w))
    out = losses.summarize({**sums, **losses.nsp_sums(jnp.zeros((3, 2)), jnp.zeros(3, jnp.int32))})
    np.testing.assert_allclose(out["mlm_loss"], (xent * w).sum() / (w.sum() + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(out["mlm_accuracy"], ((logits.argmax(-1) == ids) * w).sum() / (w.sum() + 1e-5),
                               rtol=1e-6)
    np.testing.assert_allclose(out["nsp_loss"], np.log(2.0), rtol=1e-6)


def test_gradient_accumulation_equals_big_batch():
    # No dropout, so the two runs see the same function.
    config = CONFIG.replace(attention_probs_dropout_prob=0.0)
    _, state1, step1, batch = _setup(config, microbatches=1)
    _, state4, step4, _ = _setup(config, microbatches=4)
    for _ in range(2):
        state1, m1 = jax.jit(step1)(state1, batch)
        state4, m4 = jax.jit(step4)(state4, batch)
    for key in ("loss", "mlm_accuracy", "grad_norm"):
        np.testing.assert_allclose(m1[key], m4[key], rtol=2e-5)
    # The whole batch's non-padding tokens, however the step splits it.
    assert int(m1["real_tokens"]) == int(m4["real_tokens"]) == int(batch["input_mask"].sum()) < batch["input_mask"].size
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6), state1.params, state4.params)
    assert int(state4.step) == 2


def test_dropout_depends_on_step_only():
    _, state, train_step, batch = _setup()
    a, ma = jax.jit(train_step)(state, batch)
    b, mb = jax.jit(train_step)(state, batch)
    np.testing.assert_array_equal(ma["loss"], mb["loss"])  # same step -> same dropout
    _, mc = jax.jit(train_step)(a, batch)
    assert float(mc["loss"]) != float(ma["loss"])


def test_microbatches_must_divide_batch():
    _, state, train_step, batch = _setup(microbatches=3)
    with pytest.raises(ValueError, match="does not split into 3 microbatches"):
        train_step(state, batch)
