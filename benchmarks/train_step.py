"""Training-step throughput: this project's jitted step next to HF transformers on PyTorch CPU.

    python benchmarks/train_step.py [--preset=mobilebert --batch_size=8 --seq_len=128 --steps=10]

Both run MobileBERT MLM + NSP in float32 on the same batch, in one process.
Ours: LAMB (TF1), MLM head on the 20 gathered masked positions, as pretraining
runs it. HF: `MobileBertForPreTraining` with its own loss (MLM logits on every
position, labels -100 elsewhere) and torch AdamW (torch has no LAMB), default
attention implementation. Prints tokens/s for each, the ratio, and the
achieved FLOP/s of ours (analytic model FLOPs, `mobilebert_jax.flops`).
"""

from __future__ import annotations

import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mobilebert_jax import flops, get_preset, optim
from mobilebert_jax.modeling import MobileBertForPreTraining
from mobilebert_jax.train import step as step_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "mobilebert", "model preset")
flags.DEFINE_integer("batch_size", 8, "sequences per step")
flags.DEFINE_integer("seq_len", 128, "tokens per sequence")
flags.DEFINE_integer("predictions", 20, "masked positions per sequence")
flags.DEFINE_integer("steps", 10, "timed steps (after 2 warm-up steps)")
flags.DEFINE_bool("hf", True, "also time HF transformers on PyTorch")


def make_batch(c, batch_size, seq_len, predictions, seed=0):
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


def time_ours(c, batch, steps):
    model = MobileBertForPreTraining(c)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), batch["input_ids"])["params"])
    opt_cfg = optim.default_config("lamb")
    tx = optim.build_optimizer(opt_cfg, params)
    state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    train_step = jax.jit(step_lib.make_train_step(step_lib.pretraining_sums_fn(model, deterministic=False), tx),
                         donate_argnums=0)
    batch = jax.device_put(batch)
    for _ in range(2):
        state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def time_hf(c, batch, steps):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    d = {k: v for k, v in c.to_hf_dict().items() if k not in ("architectures", "mobilebert_jax")}
    model = transformers.MobileBertForPreTraining(transformers.MobileBertConfig(**d)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    labels = torch.full_like(ids, -100)
    rows = np.arange(ids.shape[0])[:, None]
    labels[rows, batch["masked_lm_positions"]] = torch.tensor(batch["masked_lm_ids"], dtype=torch.long)
    inputs = dict(input_ids=ids, attention_mask=torch.tensor(batch["input_mask"]),
                  token_type_ids=torch.tensor(batch["segment_ids"], dtype=torch.long), labels=labels,
                  next_sentence_label=torch.tensor(batch["next_sentence_labels"], dtype=torch.long))

    def one_step():
        opt.zero_grad()
        model(**inputs).loss.backward()
        opt.step()

    for _ in range(2):
        one_step()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    return (time.perf_counter() - start) / steps


def main(argv):
    del argv
    c = get_preset(FLAGS.preset)
    batch = make_batch(c, FLAGS.batch_size, FLAGS.seq_len, FLAGS.predictions)
    tokens = FLAGS.batch_size * FLAGS.seq_len
    model_flops = FLAGS.batch_size * flops.pretraining_train_flops_per_sequence(c, FLAGS.seq_len, FLAGS.predictions)
    device = jax.devices()[0]
    print(f"{FLAGS.preset} MLM+NSP training step, batch {FLAGS.batch_size} x {FLAGS.seq_len}, float32, "
          f"{device.platform} ({device.device_kind}), {os.cpu_count()} cores, jax {jax.__version__}")
    ours = time_ours(c, batch, FLAGS.steps)
    print(f"mobilebert-jax : {ours * 1e3:8.1f} ms/step  {tokens / ours:10,.0f} tokens/s  "
          f"{model_flops / ours / 1e9:7.1f} GFLOP/s (model FLOPs)")
    if FLAGS.hf:
        import torch
        import transformers

        hf = time_hf(c, batch, FLAGS.steps)
        print(f"HF transformers: {hf * 1e3:8.1f} ms/step  {tokens / hf:10,.0f} tokens/s  "
              f"(torch {torch.__version__}, transformers {transformers.__version__})")
        print(f"ratio (ours / HF tokens/s): {hf / ours:.2f}x")


if __name__ == "__main__":
    app.run(main)
