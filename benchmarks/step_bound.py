"""What bounds the CPU training step: its matmuls timed alone, the optimizer alone, and XLA CPU options A/B.

    python benchmarks/step_bound.py [--preset=mobilebert --batch_size=8 --seq_len=128 --steps=3 --repeats=5]

Three measurements of this project's MobileBERT pretraining step (the step of benchmarks/train_step.py), in one
process:

1. **Levers**: the step with one model option turned on (`explicit_weight_gradients`) or compiled with one XLA
   CPU option (`--levers`), timed in turns (A B C A B C ...): median ms/step and the ratio to the default step.
   Compiler options are passed per compile (`Lowered.compile(compiler_options=...)`), so every variant shares
   the process, the batch and the load.
2. **Matmul floor**: every dot of the compiled step (its optimized HLO), grouped by shape, each shape timed alone
   as a jitted `lax.dot_general` (median of `--dot_repeats` calls); their sum is what the step's matmuls cost at
   the speed XLA reaches for each shape when nothing else runs. The rest of the step (elementwise, norms,
   softmax, the optimizer) can only add to it.
3. **Optimizer alone**: the LAMB update (clipping, moments, trust ratio, apply) over the full parameter tree, as
   its own jitted function on donated buffers.

Shares the step's shape flags, batch and optimizer with benchmarks/train_step.py (benchmarks/pretraining_step.py).
"""

from __future__ import annotations

import collections
import math
import re
import statistics
import time

from absl import flags

import pretraining_step  # defines --preset, --batch_size, --seq_len, --predictions

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(pretraining_step)  # its flags in this script's --help
flags.DEFINE_integer("steps", 3, "timed steps per repeat (after 2 warm-up steps)")
flags.DEFINE_integer("repeats", 5, "interleaved repeats of each variant")
flags.DEFINE_list("levers", ["explicit_weight_gradients", "xla_cpu_use_xnnpack=true", "xla_cpu_use_onednn=true",
                             "xla_cpu_enable_fast_math=true"],
                  "variants compared with the default step, one each: a bool MobileBertConfig field (set true) "
                  "or an XLA CPU compiler option (name=value)")
flags.DEFINE_integer("dot_repeats", 20, "timed calls of each distinct matmul shape")

# Optimized HLO names operands without their shapes (`%dot.1 = f32[16,4]{1,0} dot(%param_0, %param_1), ...`), so
# each computation's instructions are read into a name -> shape table first.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\S* (\w[\w\-]*)\((.*)")
_DIMS = re.compile(r"(lhs_batch_dims|rhs_batch_dims|lhs_contracting_dims|rhs_contracting_dims)=\{([\d,]*)\}")


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split(",") if d)


def dots_of(hlo_text: str) -> collections.Counter:
    """(lhs shape, rhs shape, dimension numbers, dtype) -> how many times the compiled step runs that dot."""
    out = collections.Counter()
    shapes: dict[str, tuple[int, ...]] = {}
    for line in hlo_text.splitlines():
        if line.rstrip().endswith("{") and "(" in line:  # a new computation: its names are its own
            shapes = {}
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, dtype, dims, op, rest = m.groups()
        shapes[name] = _shape(dims)
        if op != "dot":
            continue
        lhs_name, rhs_name = (a.strip().lstrip("%") for a in rest.split(")", 1)[0].split(","))
        dims = {k: _shape(v) for k, v in _DIMS.findall(rest)}
        numbers = ((dims.get("lhs_contracting_dims", ()), dims.get("rhs_contracting_dims", ())),
                   (dims.get("lhs_batch_dims", ()), dims.get("rhs_batch_dims", ())))
        out[(shapes[lhs_name], shapes[rhs_name], numbers, dtype)] += 1
    return out


def dot_flops(lhs: tuple[int, ...], rhs: tuple[int, ...], numbers) -> int:
    (lc, rc), (lb, _) = numbers
    free_lhs = [d for i, d in enumerate(lhs) if i not in lc and i not in lb]
    free_rhs = [d for i, d in enumerate(rhs) if i not in rc and i not in numbers[1][1]]
    return 2 * math.prod(lhs[i] for i in lb) * math.prod(free_lhs) * math.prod(free_rhs) * math.prod(
        lhs[i] for i in lc)


def time_dot(lhs, rhs, numbers, dtype: str, repeats: int) -> float:
    """Median seconds of one jitted dot_general of these shapes."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.dtype({"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64"}[dtype])
    a = jax.random.normal(jax.random.key(0), lhs, dtype)
    b = jax.random.normal(jax.random.key(1), rhs, dtype)
    f = jax.jit(lambda x, y: jax.lax.dot_general(x, y, numbers))
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_floor(hlo_text: str, table: bool) -> float:
    """Seconds the compiled step's dots take when each is timed alone; prints the per-shape table if `table`."""
    rows = []
    for (lhs, rhs, numbers, dtype), count in dots_of(hlo_text).items():
        flop = dot_flops(lhs, rhs, numbers)
        one = time_dot(lhs, rhs, numbers, dtype, FLAGS.dot_repeats)
        rows.append((count * one, count, lhs, rhs, numbers[0], flop, one))
    rows.sort(reverse=True)
    total_s = sum(r[0] for r in rows)
    total_flop = sum(r[1] * r[5] for r in rows)
    if table:
        print(f"\n{'lhs':<18} {'rhs':<18} {'contracting':<12} {'count':>5} {'MFLOP each':>10} {'ms each':>8} "
              f"{'GFLOP/s':>8} {'ms total':>9}")
        for total, count, lhs, rhs, (lc, rc), flop, one in rows:
            print(f"{str(list(lhs)):<18} {str(list(rhs)):<18} {f'{list(lc)}x{list(rc)}':<12} {count:5d} "
                  f"{flop / 1e6:10.1f} {one * 1e3:8.2f} {flop / one / 1e9:8.1f} {total * 1e3:9.1f}")
    print(f"{len(rows)} matmul shapes, {sum(r[1] for r in rows)} dots, {total_flop / 1e9:.1f} GFLOP: "
          f"{total_s * 1e3:.0f} ms at their standalone speeds ({total_flop / total_s / 1e9:.1f} GFLOP/s)")
    return total_s


def _option(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    parsed = {"true": True, "false": False}.get(value.lower(), value)
    if isinstance(parsed, str) and parsed.lstrip("-").isdigit():
        parsed = int(parsed)
    return name, parsed


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import flax.linen as nn

    from mobilebert_jax import get_preset
    from mobilebert_jax.modeling import MobileBertForPreTraining
    from mobilebert_jax.train import step as step_lib
    from mobilebert_jax.pretraining.objective import PretrainingObjective

    c = get_preset(FLAGS.preset)
    batch = jax.device_put(pretraining_step.make_batch(c, FLAGS.batch_size, FLAGS.seq_len, FLAGS.predictions))

    def lower(config):
        model = MobileBertForPreTraining(config)
        params = nn.unbox(jax.jit(model.init)(jax.random.key(0), batch["input_ids"])["params"])
        tx = pretraining_step.lamb_optimizer(params)
        state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
        step_fn = jax.jit(step_lib.make_train_step(PretrainingObjective(model), tx), donate_argnums=0)
        return step_fn.lower(state, batch), state, params, tx

    lowered, _, params, tx = lower(c)
    print(f"{FLAGS.preset} MLM+NSP training step, batch {FLAGS.batch_size} x {FLAGS.seq_len}, float32, "
          f"jax {jax.__version__}, {jax.devices()[0].device_kind}")

    # 1. Levers: one compile per variant, the steps interleaved.
    compiled, states, model_variants = {}, {}, {"default": lowered}
    for name in ["default"] + FLAGS.levers:
        start = time.perf_counter()
        options = dict([_option(name)]) if "=" in name else {}
        if name != "default" and not options:
            model_variants[name], _, _, _ = lower(c.replace(**{name: True}))
        _, states[name], _, _ = lower(c)  # a fresh state for each variant: the steps donate it
        compiled[name] = model_variants.get(name, lowered).compile(compiler_options=options)
        print(f"compiled {name} in {time.perf_counter() - start:.1f} s")
    variants = list(compiled)
    for name in variants:  # warm-up
        for _ in range(2):
            states[name], metrics = compiled[name](states[name], batch)
            jax.block_until_ready(metrics)
    seconds = {name: [] for name in variants}
    for _ in range(FLAGS.repeats):
        for name in variants:
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                states[name], metrics = compiled[name](states[name], batch)
                jax.block_until_ready(metrics)
            seconds[name].append((time.perf_counter() - start) / FLAGS.steps)
    base = statistics.median(seconds["default"])
    print(f"\n{'variant':<44} {'ms/step median (min..max)':>28} {'default / this':>15}")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"{name:<44} {f'{median * 1e3:.0f} ({min(times) * 1e3:.0f}..{max(times) * 1e3:.0f})':>28} "
              f"{base / median:14.2f}x")
    del states, compiled

    # 2. The matmul floor of each model variant's compile.
    for name, variant_lowered in model_variants.items():
        floor_s = matmul_floor(variant_lowered.compile().as_text(), table=name == "default")
        step_s = statistics.median(seconds[name])
        print(f"{name}: matmuls alone {floor_s * 1e3:.0f} ms of the {step_s * 1e3:.0f} ms step; "
              f"{(step_s - floor_s) * 1e3:.0f} ms outside the matmuls")

    # 3. The optimizer alone: per parameter (as the step runs it) and over one flat buffer of the same size,
    # the ceiling of "a fused update over fewer, larger buffers" (its trust ratio would be per buffer, so the
    # flat form only measures the memory traffic, not a usable optimizer).
    flat = {"all": jnp.concatenate([x.ravel() for x in jax.tree.leaves(params)])}
    updates = {"per parameter": optimizer_update(tx, params),
               "one flat buffer": optimizer_update(pretraining_step.lamb_optimizer(flat), flat)}
    times = {name: [] for name in updates}
    for _ in range(FLAGS.repeats * FLAGS.steps):
        for name, run in updates.items():
            times[name].append(run())
    n = sum(x.size for x in jax.tree.leaves(params))
    for name, t in times.items():
        print(f"LAMB update alone, {name} ({n / 1e6:.1f}M parameters): {statistics.median(t) * 1e3:.0f} ms median "
              f"({min(t) * 1e3:.0f}..{max(t) * 1e3:.0f})")


def optimizer_update(tx, params):
    """A function that runs one jitted optimizer update and apply on donated buffers and returns its seconds."""
    import jax
    import jax.numpy as jnp

    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)

    def update(opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return opt_state, jax.tree.map(jnp.add, params, updates)

    update = jax.jit(update, donate_argnums=(0, 1))
    carried = {"state": (tx.init(params), jax.tree.map(jnp.copy, params))}
    for _ in range(2):  # compile, warm up
        carried["state"] = update(*carried["state"])
    jax.block_until_ready(carried["state"])

    def run() -> float:
        start = time.perf_counter()
        carried["state"] = update(*carried["state"])
        jax.block_until_ready(carried["state"])
        return time.perf_counter() - start

    return run


if __name__ == "__main__":
    from mobilebert_jax import cli

    cli.run_absl(main)
