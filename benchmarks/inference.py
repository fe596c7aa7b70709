"""Inference speed on CPU: this project's jitted forward next to HF transformers on PyTorch, in one run.

    python benchmarks/inference.py [--presets=mobilebert,bert_base --latency_runs=20 --throughput_runs=3]

For each model, a sequence classifier (2 labels, float32, no dropout) on
random ids: batch-1 latency at sequence 128 (median of `--latency_runs`)
and batch-32 throughput at sequence 128 (sequences per second, median
batch time of `--throughput_runs`), after warm-up runs. HF runs
`MobileBertForSequenceClassification` with the same MobileBERT config, and
`BertForSequenceClassification` for BERT-base, under `torch.inference_mode`
with every CPU thread. With `--onnx` (needs the `export` extra) the
exported ONNX graph on onnxruntime is timed as well.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import flax.linen as nn
import jax
import numpy as np
from absl import flags

from mobilebert_jax import get_preset

FLAGS = flags.FLAGS
flags.DEFINE_list("presets", ["mobilebert", "bert_base"], "model presets")
flags.DEFINE_integer("seq_len", 128, "tokens per sequence")
flags.DEFINE_integer("batch_size", 32, "sequences per batch for throughput")
flags.DEFINE_integer("latency_runs", 20, "timed batch-1 runs")
flags.DEFINE_integer("throughput_runs", 3, "timed batches for throughput")
flags.DEFINE_bool("hf", True, "also time HF transformers on PyTorch")
flags.DEFINE_bool("onnx", False, "also time the ONNX export on onnxruntime")


def _inputs(vocab_size: int, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"input_ids": rng.integers(1000, vocab_size, (batch, seq_len)).astype(np.int32),
            "input_mask": np.ones((batch, seq_len), np.int32),
            "segment_ids": (np.arange(seq_len)[None] >= seq_len // 2).astype(np.int32).repeat(batch, 0)}


def _median_seconds(run, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_ours(config, shapes):
    from mobilebert_jax.modeling import MobileBertForSequenceClassification

    model = MobileBertForSequenceClassification(config, num_labels=2)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    forward = jax.jit(lambda p, b: model.apply({"params": p}, b["input_ids"], attention_mask=b["input_mask"],
                                               token_type_ids=b["segment_ids"], deterministic=True)["logits"])
    results = []
    for batch, runs in shapes:
        inputs = jax.device_put(_inputs(config.vocab_size, batch, FLAGS.seq_len))
        results.append(_median_seconds(lambda: forward(params, inputs).block_until_ready(), runs))
    return results, (model, params)


def time_hf(config, preset: str, shapes):
    import torch
    import transformers

    torch.manual_seed(0)
    if preset == "bert_base":
        hf_model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2))
    else:
        hf_config = transformers.MobileBertConfig(**{k: v for k, v in config.to_hf_dict().items()
                                                     if k not in ("mobilebert_jax", "architectures")}, num_labels=2)
        hf_model = transformers.MobileBertForSequenceClassification(hf_config)
    hf_model.eval()
    results = []
    for batch, runs in shapes:
        inputs = {k: torch.from_numpy(v.astype(np.int64)) for k, v in _inputs(config.vocab_size, batch,
                                                                             FLAGS.seq_len).items()}

        def run():
            with torch.inference_mode():
                hf_model(input_ids=inputs["input_ids"], attention_mask=inputs["input_mask"],
                         token_type_ids=inputs["segment_ids"])

        results.append(_median_seconds(run, runs))
    return results


def time_onnx(model, params, shapes):
    import onnxruntime as ort

    from mobilebert_jax.export import export_model

    results = []
    for batch, runs in shapes:
        proto = export_model(model, params, None, batch_size=batch, seq_len=FLAGS.seq_len)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        inputs = _inputs(model.config.vocab_size, batch, FLAGS.seq_len)
        results.append(_median_seconds(lambda: session.run(None, inputs), runs))
    return results


def main(argv) -> None:
    del argv
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); float32, sequence {FLAGS.seq_len}")
    shapes = [(1, FLAGS.latency_runs), (FLAGS.batch_size, FLAGS.throughput_runs)]
    header = f"{'model':<11} {'runtime':<22} {'batch-1 latency (ms)':>21} {f'batch-{FLAGS.batch_size} seq/s':>15}"
    print(header)
    print("-" * len(header))
    for preset in FLAGS.presets:
        config = get_preset(preset)
        rows = []
        (latency, batch_time), (model, params) = time_ours(config, shapes)
        rows.append(("mobilebert-jax (XLA)", latency, batch_time))
        if FLAGS.hf:
            latency_hf, batch_time_hf = time_hf(config, preset, shapes)
            rows.append(("HF transformers (torch)", latency_hf, batch_time_hf))
        if FLAGS.onnx:
            latency_ort, batch_time_ort = time_onnx(model, params, shapes)
            rows.append(("ONNX export (onnxruntime)", latency_ort, batch_time_ort))
        for name, lat, bt in rows:
            print(f"{preset:<11} {name:<22} {lat * 1e3:>21.1f} {FLAGS.batch_size / bt:>15.1f}", flush=True)


if __name__ == "__main__":
    from mobilebert_jax import cli

    cli.run_absl(main)
