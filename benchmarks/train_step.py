"""Training-step throughput: this project's jitted step next to HF transformers on PyTorch CPU, interleaved.

    python benchmarks/train_step.py [--preset=mobilebert --batch_size=8 --seq_len=128 --steps=3 --repeats=5]

All sides run MobileBERT MLM + NSP in float32 on the same batch, in one
process, timed in turns (A B C A B C ...) so that load from elsewhere hits
each side alike; each prints the median and the spread (min..max) of its
per-repeat ms/step.

  ours        LAMB (TF1), MLM head on the 20 gathered masked positions, as pretraining runs it.
  HF same     `MobileBertForPreTraining`'s encoder and heads, the MLM head on the same gathered
              positions: the same work as ours, torch AdamW (torch has no LAMB; the optimizer
              is a small part of the step).
  HF as-is    `MobileBertForPreTraining` with its own loss (MLM logits on all 128 positions,
              labels -100 elsewhere) and torch AdamW: what a user of HF runs, more work.

PyTorch gets a fair environment: OMP_WAIT_POLICY=PASSIVE (set before torch
loads; libgomp's default busy-waiting steals the other side's cores) and
`--threads` threads, by default one per core as XLA's CPU client uses. The
achieved FLOP/s counts the same-work model FLOPs (`mobilebert_jax.flops`,
MLM on the gathered positions) for every side, so for "HF as-is" it
understates what that side computes; it is printed as a fraction of a
measured float32 matmul peak (a 2048^3 matmul in each framework).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import flags

import pretraining_step
from pretraining_step import lamb_optimizer, make_batch

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(pretraining_step)  # --preset, --batch_size, --seq_len, --predictions, in --help
flags.DEFINE_integer("steps", 3, "timed steps per repeat (after 2 warm-up steps)")
flags.DEFINE_integer("repeats", 5, "interleaved repeats of each side")
flags.DEFINE_integer("threads", os.cpu_count(), "torch threads (XLA's CPU client uses one per core)")
flags.DEFINE_bool("hf", True, "also time HF transformers on PyTorch")
flags.DEFINE_bool("explicit_weight_gradients", False,
                  "our step with MobileBertConfig.explicit_weight_gradients (benchmarks/step_bound.py measures it)")


def _set_torch_environment(threads: int) -> None:
    """Must run before torch is imported: libgomp reads these when its thread pool starts."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["OMP_NUM_THREADS"] = str(threads)


def ours_step(c, batch):
    """A function that runs one training step of this project (state carried inside), and blocks."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from mobilebert_jax.modeling import MobileBertForPreTraining
    from mobilebert_jax.train import step as step_lib
    from mobilebert_jax.pretraining.objective import PretrainingObjective

    model = MobileBertForPreTraining(c)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), batch["input_ids"])["params"])
    tx = lamb_optimizer(params)
    train_step = jax.jit(step_lib.make_train_step(PretrainingObjective(model), tx),
                         donate_argnums=0)
    carried = {"state": step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))}
    device_batch = jax.device_put(batch)

    def one_step():
        carried["state"], metrics = train_step(carried["state"], device_batch)
        jax.block_until_ready(metrics)

    return one_step


def hf_step(c, batch, same_work: bool):
    import torch
    import transformers

    d = {k: v for k, v in c.to_hf_dict().items() if k not in ("architectures", "mobilebert_jax")}
    model = transformers.MobileBertForPreTraining(transformers.MobileBertConfig(**d)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    mask = torch.tensor(batch["input_mask"])
    segments = torch.tensor(batch["segment_ids"], dtype=torch.long)
    nsp_labels = torch.tensor(batch["next_sentence_labels"], dtype=torch.long)
    positions = torch.tensor(batch["masked_lm_positions"], dtype=torch.long)
    masked_ids = torch.tensor(batch["masked_lm_ids"], dtype=torch.long)
    rows = torch.arange(ids.shape[0])[:, None]
    labels = torch.full_like(ids, -100)
    labels[rows, positions] = masked_ids
    cross_entropy = torch.nn.CrossEntropyLoss()

    def loss_as_is():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=segments, labels=labels,
                     next_sentence_label=nsp_labels).loss

    def loss_same_work():
        sequence_BxTxD, pooled_BxD = model.mobilebert(input_ids=ids, attention_mask=mask, token_type_ids=segments,
                                                      return_dict=False)[:2]
        gathered_BxPxD = sequence_BxTxD[rows, positions]
        mlm_logits = model.cls.predictions(gathered_BxPxD)
        nsp_logits = model.cls.seq_relationship(pooled_BxD)
        return (cross_entropy(mlm_logits.reshape(-1, mlm_logits.shape[-1]), masked_ids.reshape(-1)) +
                cross_entropy(nsp_logits, nsp_labels))

    loss_fn = loss_same_work if same_work else loss_as_is

    def one_step():
        opt.zero_grad()
        loss_fn().backward()
        opt.step()

    return one_step


def matmul_peak_gflops(framework: str, n: int = 2048, repeats: int = 5) -> float:
    """Float32 n^3 matmul rate, best of `repeats`: the ceiling a step's matmuls can reach on this machine."""
    if framework == "jax":
        import jax
        import jax.numpy as jnp

        a = jnp.ones((n, n), jnp.float32)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        run = lambda: f(a).block_until_ready()  # noqa: E731
    else:
        import torch

        a = torch.ones((n, n))
        run = lambda: a @ a  # noqa: E731
        run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def main(argv):
    del argv
    import jax

    from mobilebert_jax import flops, get_preset

    c = get_preset(FLAGS.preset).replace(explicit_weight_gradients=FLAGS.explicit_weight_gradients)
    batch = make_batch(c, FLAGS.batch_size, FLAGS.seq_len, FLAGS.predictions)
    tokens = FLAGS.batch_size * FLAGS.seq_len
    model_flops = FLAGS.batch_size * flops.pretraining_train_flops_per_sequence(c, FLAGS.seq_len, FLAGS.predictions)
    device = jax.devices()[0]
    print(f"{FLAGS.preset} MLM+NSP training step, batch {FLAGS.batch_size} x {FLAGS.seq_len}, float32, "
          f"{device.platform} ({device.device_kind}), {os.cpu_count()} cores, {FLAGS.threads} torch threads, "
          f"jax {jax.__version__}, {FLAGS.repeats} interleaved repeats of {FLAGS.steps} steps")
    ours = "mobilebert-jax (LAMB, MLM on gathered positions" + (
        ", explicit weight gradients)" if FLAGS.explicit_weight_gradients else ")")
    sides = {ours: ours_step(c, batch)}
    peaks = {"jax": matmul_peak_gflops("jax")}
    if FLAGS.hf:
        import torch
        import transformers

        torch.set_num_threads(FLAGS.threads)
        print(f"torch {torch.__version__} ({torch.get_num_threads()} threads, OMP_WAIT_POLICY="
              f"{os.environ.get('OMP_WAIT_POLICY')}), transformers {transformers.__version__}")
        sides["HF same work (AdamW, MLM on gathered positions)"] = hf_step(c, batch, same_work=True)
        sides["HF as-is (AdamW, MLM on all positions)"] = hf_step(c, batch, same_work=False)
        peaks["torch"] = matmul_peak_gflops("torch")
    print("float32 2048^3 matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))

    for one_step in sides.values():  # warm-up: compiles, allocator pools
        for _ in range(2):
            one_step()
    seconds = {name: [] for name in sides}
    for _ in range(FLAGS.repeats):
        for name, one_step in sides.items():
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                one_step()
            seconds[name].append((time.perf_counter() - start) / FLAGS.steps)

    ours_median = statistics.median(next(iter(seconds.values())))
    width = max(len(name) for name in seconds)
    print(f"{'side':<{width}} {'ms/step median (min..max)':>28} {'tokens/s':>9} {'GFLOP/s':>8} "
          f"{'of peak':>8} {'ours faster':>11}")
    for name, times in seconds.items():
        median = statistics.median(times)
        peak = peaks["jax" if name.startswith("mobilebert-jax") else "torch"]
        achieved = model_flops / median / 1e9
        spread = f"{median * 1e3:8.0f} ({min(times) * 1e3:.0f}..{max(times) * 1e3:.0f})"
        print(f"{name:<{width}} {spread:>28} {tokens / median:9,.0f} {achieved:8.1f} {achieved / peak:8.0%} "
              f"{median / ours_median:10.2f}x")


if __name__ == "__main__":
    _set_torch_environment(next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--threads=")),
                                 os.cpu_count()))
    from mobilebert_jax import cli

    cli.run_absl(main)
