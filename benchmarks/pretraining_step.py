"""What the training-step benchmarks share: the step's shape flags, its batch and its optimizer.

Imported by train_step.py, step_bound.py and compile_time.py (run from benchmarks/, or with it on sys.path).
"""

from __future__ import annotations

import os

from absl import flags

flags.DEFINE_string("preset", "mobilebert", "model preset")
flags.DEFINE_integer("batch_size", 8, "sequences per step")
flags.DEFINE_integer("seq_len", 128, "tokens per sequence")
flags.DEFINE_integer("predictions", 20, "masked positions per sequence")


def make_batch(c, batch_size, seq_len, predictions, seed=0):
    """A pretraining batch of random tokens: MLM on `predictions` sorted positions, NSP labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(1, c.vocab_size, (batch_size, seq_len)).astype(np.int32),
        "input_mask": np.ones((batch_size, seq_len), np.int32),
        "segment_ids": (np.arange(seq_len)[None] >= seq_len // 2).astype(np.int32).repeat(batch_size, 0),
        "masked_lm_positions": np.sort(rng.choice(seq_len, (batch_size, predictions)), -1).astype(np.int32),
        "masked_lm_ids": rng.integers(1, c.vocab_size, (batch_size, predictions)).astype(np.int32),
        "masked_lm_weights": np.ones((batch_size, predictions), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (batch_size,)).astype(np.int32),
    }


def lamb_optimizer(params):
    """TF1's LAMB as every stage starts from it (experiments/common.py), at the paper's peak rate."""
    from mobilebert_jax import optim
    from mobilebert_jax.experiment_config import load_module

    common = load_module(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                                      "common.py"))
    return optim.build_optimizer(common.optimizer("lamb", lr=1.5e-3), params)
