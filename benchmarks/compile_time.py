"""Train-step compile time and step time with the encoder's layers unrolled and under nn.scan (`scan_layers`).

    python benchmarks/compile_time.py [--preset=mobilebert --batch_size=8 --seq_len=128 --steps=3]

Each layout runs in a fresh process (so neither reuses the other's traces, and each peak memory is its
own), with JAX's persistent compilation cache off: the MLM + NSP pretraining step with TF1 LAMB, as
benchmarks/train_step.py builds it. Printed per layout: tracing + lowering to StableHLO, XLA's compile,
the process's peak resident memory after compiling, and the median (min..max) ms of `--steps` steps
after two warm-up steps. For the TPU figures of a full-size stage use tools.aot_compile with
`--config.model.scan_layers=True` (docs/training.md, "Layers under scan").
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import flags

import pretraining_step  # defines --preset, --batch_size, --seq_len, --predictions

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(pretraining_step)  # its flags in this script's --help
flags.DEFINE_integer("steps", 3, "timed steps (after 2 warm-up steps)")
flags.DEFINE_bool("remat", False, "rematerialize each layer in the backward pass")
flags.DEFINE_enum("layout", None, ["unrolled", "scanned"], "internal: measure this layout in this process")

LAYOUTS = ("unrolled", "scanned")


def measure(scan_layers: bool) -> dict:
    """Compile and run the step in this process; the figures as a dict."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from mobilebert_jax import get_preset
    from mobilebert_jax.modeling import MobileBertForPreTraining
    from mobilebert_jax.train import step as step_lib
    from mobilebert_jax.pretraining.objective import PretrainingObjective

    jax.config.update("jax_enable_compilation_cache", False)
    c = get_preset(FLAGS.preset, scan_layers=scan_layers, remat=FLAGS.remat)
    batch = jax.device_put(pretraining_step.make_batch(c, FLAGS.batch_size, FLAGS.seq_len, FLAGS.predictions))
    model = MobileBertForPreTraining(c)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), batch["input_ids"])["params"])
    tx = pretraining_step.lamb_optimizer(params)  # TF1's LAMB, as every stage has it
    state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, jax.jit(tx.init)(params))
    step = jax.jit(step_lib.make_train_step(PretrainingObjective(model), tx), donate_argnums=0)

    start = time.perf_counter()
    lowered = step.trace(state, batch).lower()
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    for _ in range(2):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(FLAGS.steps):
        start_step = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start_step)
    return dict(lower_s=lowered_at - start, compile_s=compiled_at - lowered_at, peak_rss=peak_rss,
                step_ms=[t * 1e3 for t in times])


def main(argv):
    del argv
    if FLAGS.layout:
        print("RESULT " + json.dumps(measure(FLAGS.layout == "scanned")), flush=True)
        return
    import jax

    print(f"{FLAGS.preset} MLM+NSP training step (LAMB), batch {FLAGS.batch_size} x {FLAGS.seq_len}, float32, "
          f"remat={FLAGS.remat}, {jax.devices()[0].platform}, {os.cpu_count()} cores, jax {jax.__version__}; "
          f"each layout in a fresh process, one after the other", flush=True)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    results = {}
    for layout in LAYOUTS:
        args = [f"--{f}={getattr(FLAGS, f)}" for f in ("preset", "batch_size", "seq_len", "predictions", "steps")]
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args, f"--remat={FLAGS.remat}",
                               f"--layout={layout}"], env=env, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"the {layout} measurement failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[layout] = json.loads(line[len("RESULT "):])
    print(f"{'layout':<9} {'trace+lower s':>13} {'compile s':>10} {'peak RSS GiB':>13} "
          f"{'ms/step median (min..max)':>26}")
    for layout, r in results.items():
        ms = r["step_ms"]
        spread = f"{statistics.median(ms):.0f} ({min(ms):.0f}..{max(ms):.0f})"
        print(f"{layout:<9} {r['lower_s']:13.1f} {r['compile_s']:10.1f} {r['peak_rss'] / 2**30:13.2f} {spread:>26}")
    unrolled, scanned = results["unrolled"], results["scanned"]
    print(f"scanned / unrolled: trace+lower {scanned['lower_s'] / unrolled['lower_s']:.2f}x, compile "
          f"{scanned['compile_s'] / unrolled['compile_s']:.2f}x, step "
          f"{statistics.median(scanned['step_ms']) / statistics.median(unrolled['step_ms']):.2f}x")


if __name__ == "__main__":
    from mobilebert_jax import cli

    cli.run_absl(main)
