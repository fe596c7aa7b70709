"""Progressive transfer's train step in its first and last phase: both models stop at the phase's layer.

    python benchmarks/progressive_step.py [--layers=24 --batch_size=8 --seq_len=128 --repeats=5 --full --scan=false
                                          --other_layout]

An IB-BERT teacher and a MobileBERT student (the `*_test` presets' small width, `--layers` deep), the paper's
progressive distillation objective (FMT, mean, variance, attention transfer) and TF1's LAMB, on random batches.
One compiled step serves every phase (the phase is the step counter, a traced value); the first phase's step
(layer 0) and the last's (layer L-1) alternate A B A B ... in this process after a warm-up call each, so load on
the machine falls on both alike. The layers are under nn.scan by default (`--scan=false`: unrolled, whose
24-layer step takes minutes to compile on 2 cores). Printed: each program's compile time (tracing, lowering and
XLA compile), with `--other_layout` also that of the other layout (compile only); the per-phase median (min..max)
ms; with `--full` also the step that runs every layer of both models in every phase (the objective's
stop_at_phase=False), interleaved with the others; and last the line `first/last phase step time: X`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pretraining_step  # noqa: E402  (make_batch, lamb_optimizer; defines --batch_size, --seq_len, ...)

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(pretraining_step)
flags.DEFINE_integer("layers", 24, "layers of the teacher and the student")
flags.DEFINE_integer("repeats", 5, "timed steps per phase (after one warm-up step each)")
flags.DEFINE_bool("full", False, "also time the step that runs every layer in every phase (the reference)")
flags.DEFINE_bool("scan", True, "the layers under nn.scan (False: unrolled)")
flags.DEFINE_bool("other_layout", False, "also compile the phase-limited step in the other layout (compile time "
                  "only)")

PHASE_STEPS = 10


def build(scan_layers: bool, stop_at_phase: bool):
    """(jitted step, state, frozen teacher, batch) of the phase-limited (or the full) progressive step."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from mobilebert_jax import get_preset
    from mobilebert_jax.distill import config as distill_config
    from mobilebert_jax.distill.objective import DistillationObjective
    from mobilebert_jax.experiment_config import load_module
    from mobilebert_jax.modeling import MobileBertForPreTraining
    from mobilebert_jax.train import step as step_lib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    common = load_module(os.path.join(root, "experiments", "distill_common.py"))
    fields = dict(common.distill("progressive").to_dict(), teacher="(in memory)", phase_steps=PHASE_STEPS)
    d = distill_config.read(fields)
    teacher_cfg = get_preset("ib_bert_test", num_hidden_layers=FLAGS.layers, scan_layers=scan_layers)
    student_cfg = get_preset("mobilebert_test", num_hidden_layers=FLAGS.layers, scan_layers=scan_layers)
    teacher, student = MobileBertForPreTraining(teacher_cfg), MobileBertForPreTraining(student_cfg)
    objective = DistillationObjective(distill=d, num_layers=FLAGS.layers, layer_map=tuple(range(FLAGS.layers)),
                                      student=student, teacher=teacher, stop_at_phase=stop_at_phase)
    batch = jax.device_put(pretraining_step.make_batch(student_cfg, FLAGS.batch_size, FLAGS.seq_len,
                                                       FLAGS.predictions))
    ids = batch["input_ids"]
    # Op by op: a jitted init of 24 unrolled layers compiles for minutes on 2 cores.
    frozen = nn.unbox(teacher.init(jax.random.key(1), ids)["params"])
    params = nn.unbox(student.init(jax.random.key(0), ids)["params"])
    tx = pretraining_step.lamb_optimizer(params)
    state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, jax.jit(tx.init)(params))
    return jax.jit(step_lib.make_train_step(objective, tx)), state, frozen, batch


def compiled(name: str, scan_layers: bool, stop_at_phase: bool):
    """The step compiled (timed, printed) and its arguments."""
    step, state, frozen, batch = build(scan_layers, stop_at_phase)
    start = time.perf_counter()
    program = step.trace(state, batch, frozen).lower().compile()
    print(f"{name}: compile {time.perf_counter() - start:.1f} s (trace, lower, XLA)", flush=True)
    return program, state, frozen, batch


def main(argv):
    del argv
    if FLAGS["preset"].present:
        raise app.UsageError("--preset: the models are the ib_bert_test and mobilebert_test presets, --layers deep")
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_compilation_cache", False)
    print(f"{FLAGS.layers} layers, batch {FLAGS.batch_size} x {FLAGS.seq_len}, {jax.devices()[0].device_kind}",
          flush=True)
    layout = {True: "scanned", False: "unrolled"}
    programs = {"phase-limited": compiled(f"phase-limited, {layout[FLAGS.scan]}", FLAGS.scan, True)}
    if FLAGS.other_layout:
        compiled(f"phase-limited, {layout[not FLAGS.scan]}", not FLAGS.scan, True)
    if FLAGS.full:
        programs["full"] = compiled(f"every layer (reference), {layout[FLAGS.scan]}", FLAGS.scan, False)
    last = FLAGS.layers - 1
    # The phase's first step would have learning rate 0; one step in, both phases do the same optimizer work.
    phases = {"first": 1, "last": last * PHASE_STEPS + 1}
    runs = [(name, phase) for name in programs for phase in phases]
    times = {run: [] for run in runs}
    for repeat in range(FLAGS.repeats + 1):  # the first round warms up
        for name, phase in runs:
            program, state, frozen, batch = programs[name]
            at = state.replace(step=jnp.asarray(phases[phase], jnp.int32))
            start = time.perf_counter()
            jax.block_until_ready(program(at, batch, frozen))
            if repeat:
                times[(name, phase)].append(1e3 * (time.perf_counter() - start))
    for (name, phase), ms in times.items():
        layer = 0 if phase == "first" else last
        print(f"{name} step, {phase} phase (layer {layer}): {statistics.median(ms):.1f} ms "
              f"({min(ms):.1f}..{max(ms):.1f})")
    first, last_ms = (statistics.median(times[("phase-limited", p)]) for p in phases)
    print(f"first/last phase step time: {first / last_ms:.3f}")


if __name__ == "__main__":
    from mobilebert_jax import cli

    cli.run_absl(main)
