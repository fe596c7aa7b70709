r"""On-device-style latency, the paper's way: LiteRT next to onnxruntime and HF PyTorch, batch 1, sequence 128.

    python benchmarks/inference.py [--presets=mobilebert,mobilebert_tiny,bert_base] [--threads=4,2] \
        [--runs=100] [--warmup=10] [--runtimes=litert_float32,...] [--cache_dir=/tmp/mobilebert_jax_bench]

MobileBERT's paper reports TFLite latency on a Pixel 4 at batch 1 and sequence 128 with 4 threads
(MobileBERT 62 ms, MobileBERT-TINY 40 ms, BERT-base 342 ms: BERT-base / MobileBERT = 5.5x). This script
measures the same quantity on this machine's CPU for every (model, runtime, thread count): a sequence
classifier (2 labels, random weights, random ids) exported by this project (LiteRT float32, dynamic-range
int8, full int8; ONNX float32, dynamic int8 and full int8 (QDQ) on onnxruntime) and HF transformers on PyTorch (float32,
`MobileBertForSequenceClassification` with the same config; `BertForSequenceClassification` for BERT-base) and
the project's own JAX forward (`export.model_function` under `jax.jit`; XLA sizes its CPU thread pool to the
machine once per process, so the JAX row is like-for-like only where `--threads` equals the core count).

Fairness: OMP_WAIT_POLICY=PASSIVE (set before any runtime loads, so no runtime's idle threads spin and steal
cores from the next one), each runtime's thread count set explicitly (LiteRT `num_threads`, onnxruntime
intra-op threads with one inter-op thread, `torch.set_num_threads`), `--warmup` untimed calls each, then the
models interleaved: every timed round calls every (model, runtime, threads) once, in turn, so that load
from other processes falls on all of them alike. Figures are medians of `--runs` rounds. Exported files are
cached in `--cache_dir` (converting BERT-base takes minutes).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch / onnxruntime / TF start their pools

import gc  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from mobilebert_jax import get_preset  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("presets", ["mobilebert", "mobilebert_tiny", "bert_base"], "model presets")
flags.DEFINE_list("threads", ["4", "2"], "thread counts (the paper: 4)")
RUNTIMES = ("litert_float32", "litert_dynamic_int8", "litert_full_int8", "onnx_float32", "onnx_dynamic_int8",
            "onnx_full_int8",
            "torch_float32", "jax_float32")
flags.DEFINE_list("runtimes", list(RUNTIMES), f"from {list(RUNTIMES)}")
flags.DEFINE_integer("seq_len", 128, "tokens per sequence")
flags.DEFINE_integer("runs", 100, "timed interleaved rounds")
flags.DEFINE_integer("warmup", 10, "untimed calls per model before timing")
flags.DEFINE_integer("calibration_batches", 8, "full int8: random-id batches to calibrate on")
flags.DEFINE_string("cache_dir", "/tmp/mobilebert_jax_bench", "exported files, reused across runs")

PAPER_MS = {"mobilebert": 62.0, "mobilebert_tiny": 40.0, "bert_base": 342.0}  # Pixel 4, TFLite, 4 threads


def _inputs(vocab_size: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(min(1000, vocab_size // 2), vocab_size, (1, seq_len)).astype(np.int32),
            "input_mask": np.ones((1, seq_len), np.int32),
            "segment_ids": (np.arange(seq_len)[None] >= seq_len // 2).astype(np.int32)}


def _exported(preset: str, model, params, runtime: str) -> str:
    """The cached exported file of `preset` for `runtime` (converted when absent)."""
    from mobilebert_jax.export import export_model

    fmt, quantization = runtime.split("_", 1)
    suffix = "tflite" if fmt == "litert" else "onnx"
    path = os.path.join(FLAGS.cache_dir, f"{preset}_s{FLAGS.seq_len}_{quantization}.{suffix}")
    if not os.path.exists(path):
        start = time.perf_counter()
        calibration = None
        if quantization == "full_int8":
            batches = [_inputs(model.config.vocab_size, FLAGS.seq_len, seed) for seed in
                       range(FLAGS.calibration_batches)]
            calibration = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        export_model(model, params, path + ".part", batch_size=1, seq_len=FLAGS.seq_len, fmt=suffix,
                     quantization=quantization, calibration=calibration)
        os.replace(path + ".part", path)
        print(f"  exported {path} ({os.path.getsize(path) / 1e6:.1f} MB) in {time.perf_counter() - start:.0f} s",
              flush=True)
        gc.collect()
    return path


def _torch_model(preset: str, config):
    import torch
    import transformers

    torch.manual_seed(0)
    if preset == "bert_base":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2))
    else:
        hf_config = transformers.MobileBertConfig(**{k: v for k, v in config.to_hf_dict().items()
                                                     if k not in ("mobilebert_jax", "architectures")}, num_labels=2)
        model = transformers.MobileBertForSequenceClassification(hf_config)
    return model.eval()


def _runner(runtime: str, preset: str, threads: int, model, params, torch_model):
    """A no-argument callable running one batch-1 inference."""
    inputs = _inputs(model.config.vocab_size, FLAGS.seq_len)
    if runtime.startswith("litert"):
        from mobilebert_jax.export.tflite_export import LiteRTModel

        litert = LiteRTModel(_exported(preset, model, params, runtime), num_threads=threads)
        return lambda: litert(**inputs)
    if runtime.startswith("onnx"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(_exported(preset, model, params, runtime), options,
                                       providers=["CPUExecutionProvider"])
        return lambda: session.run(None, inputs)
    if runtime == "jax_float32":
        from mobilebert_jax.export import model_function

        # XLA's CPU client sizes its thread pool once per process (all cores); it cannot follow `threads`,
        # so only the row whose thread count equals the machine's cores is a like-for-like comparison.
        forward = jax.jit(model_function(model, params))
        jax_inputs = {k: jax.device_put(v) for k, v in inputs.items()}
        return lambda: jax.block_until_ready(forward(**jax_inputs))
    import torch

    torch_inputs = {"input_ids": torch.from_numpy(inputs["input_ids"].astype(np.int64)),
                    "attention_mask": torch.from_numpy(inputs["input_mask"].astype(np.int64)),
                    "token_type_ids": torch.from_numpy(inputs["segment_ids"].astype(np.int64))}

    def run():
        torch.set_num_threads(threads)  # interleaved with other thread counts: set on every call
        with torch.inference_mode():
            torch_model(**torch_inputs)

    return run


def main(argv) -> None:
    del argv
    import torch

    unknown = sorted(set(FLAGS.runtimes) - set(RUNTIMES))
    if unknown:
        raise app.UsageError(f"--runtimes: unknown {unknown}; choose from {list(RUNTIMES)}")
    os.makedirs(FLAGS.cache_dir, exist_ok=True)
    threads = [int(t) for t in FLAGS.threads]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; batch 1, sequence "
          f"{FLAGS.seq_len}, {FLAGS.warmup} warm-up calls, median of {FLAGS.runs} interleaved rounds", flush=True)
    runners = {}
    for preset in FLAGS.presets:
        from mobilebert_jax.modeling import MobileBertForSequenceClassification

        config = get_preset(preset)
        model = MobileBertForSequenceClassification(config, num_labels=2)
        params = nn.unbox(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
        torch_model = _torch_model(preset, config) if "torch_float32" in FLAGS.runtimes else None
        for runtime in FLAGS.runtimes:
            for n in threads:
                print(f"preparing {preset} {runtime} ({n} threads)", flush=True)
                runners[(preset, runtime, n)] = _runner(runtime, preset, n, model, params, torch_model)
        del params
        gc.collect()
    for run in runners.values():
        for _ in range(FLAGS.warmup):
            run()
    times = {key: [] for key in runners}
    for round_ in range(FLAGS.runs):
        for key, run in runners.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
        if (round_ + 1) % max(1, FLAGS.runs // 5) == 0:
            print(f"  round {round_ + 1}/{FLAGS.runs}", flush=True)
    median_ms = {key: 1e3 * statistics.median(t) for key, t in times.items()}

    print(f"\nload average after: {os.getloadavg()[0]:.1f}; torch {torch.__version__}")
    header = f"{'model':<16} {'runtime':<20}" + "".join(f" {f'{n} threads (ms)':>16}" for n in threads)
    print(header + f" {'paper, 4 thr (ms)':>18}")
    print("-" * (len(header) + 19))
    for preset in FLAGS.presets:
        for runtime in FLAGS.runtimes:
            paper = f"{PAPER_MS[preset]:>18.0f}" if runtime == "litert_float32" and preset in PAPER_MS else ""
            print(f"{preset:<16} {runtime:<20}"
                  + "".join(f" {median_ms[(preset, runtime, n)]:>16.1f}" for n in threads) + f" {paper}")
    if "bert_base" in FLAGS.presets and "mobilebert" in FLAGS.presets:
        print(f"\nBERT-base / MobileBERT latency (paper, TFLite float on a Pixel 4, 4 threads: "
              f"{PAPER_MS['bert_base'] / PAPER_MS['mobilebert']:.1f}x)")
        for runtime in FLAGS.runtimes:
            print(f"  {runtime:<20}" + "".join(
                f" {n} threads {median_ms[('bert_base', runtime, n)] / median_ms[('mobilebert', runtime, n)]:.2f}x"
                for n in threads))


if __name__ == "__main__":
    from mobilebert_jax import cli

    cli.run_absl(main)
