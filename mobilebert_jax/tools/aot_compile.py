r"""Compile a stage's real train step for a TPU topology, without TPU hardware, and predict its memory and time.

    python -m mobilebert_jax.tools.install_libtpu    # the TPU compiler, once (or set TPU_LIBRARY_PATH to a libtpu.so)
    python -m mobilebert_jax.tools.aot_compile --config=experiments/distill_progressive.py --topology=v3:8x16 \
        [--mfu=0.4] [--json_out=FILE] [--nocompile] [--config.FIELD=VALUE ...]
    python -m mobilebert_jax.tools.aot_compile --config=experiments/teacher_ib_bert_large.py:smoke \
        --topology=v4:2x2x1 --config.mesh.shape='(1,-1,1)'

Every current generation: v2, v3 (a JAX device is a TensorCore), v4 and v5p
(megacore: a device is a chip, as jobs run there), v5e, v6e; --topology's
help lists slice names.

The step is built by the trainer's own code (`trainer.build_program`: mesh,
logical shardings, the jitted step with its frozen teacher argument and
donated state) over the topology's compile-only devices, lowered with
abstract inputs and compiled by libtpu's XLA. It is built from the stage's
pure part alone (`Stage.spec` of `stages.STAGES`: shapes and configs), so no
data is prepared and no teacher or checkpoint is read.

Printed, per device: arguments (state, batch, teacher), outputs not aliased
to the donated state, temporaries, generated code, and their total against
the device's HBM; per step: XLA's FLOPs (cost analysis, recomputation
included; not with layers under scan, whose loop body it counts once) and
the model's FLOPs (the analytic count MFU uses); and the step time and run
time (config.total_steps) the model FLOPs take at --mfu of the devices' peak
(hardware.py). First, from the shardings alone, what one device holds of the
train state and of the frozen teacher; --nocompile stops there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from typing import Optional

import jax
import ml_collections
from absl import flags

from mobilebert_jax import experiment_config, hardware, partitioning, storage
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.tools import install_libtpu

# The slices --help names (each one is checked by tests/test_aot_compile.py): JAX's name, what Cloud TPU calls it.
TOPOLOGY_EXAMPLES = (
    ("v3:8x16", "v3-256, the paper's 256 cores"),
    ("v3:2x2", "v3-8"),
    ("v4:4x4x8", "v4-256, 128 chips"),
    ("v5p:4x4x4", "v5p-128, 64 chips"),
    ("v5e:16x16", "v5litepod-256"),
    ("v6e:4x4", "v6e-16"),
)


def define_flags() -> None:
    """This command's flags (defined when it runs, so that tools.preflight can import this module)."""
    flags.DEFINE_string("topology", None, "TPU slice as JAX names it, GENERATION:SHAPE in chips, e.g. " +
                        ", ".join(f"{name} ({what})" for name, what in TOPOLOGY_EXAMPLES) +
                        "; v4 and v5p compile as megacore (one JAX device per chip), as they run")
    flags.DEFINE_bool("compile", True, "--nocompile: stop after building the step and report only what each device "
                      "holds of the train state and the frozen teacher, from their shardings (seconds, not minutes)")
    flags.DEFINE_float("mfu", 0.4, "model FLOPs utilization at which step and run times are predicted")
    flags.DEFINE_string("json_out", None, "also write the results to this JSON file")


FLAGS = flags.FLAGS

GIB = 1 << 30
# HBM per JAX device (a TensorCore on v2/v3, a chip from v4 on), from the Cloud TPU data sheets; first match wins.
HBM_BYTES: tuple[tuple[str, int], ...] = (
    (r"^TPU v2", 8 * GIB),
    (r"^TPU v3", 16 * GIB),
    (r"^TPU v4", 32 * GIB),
    (r"^TPU v5 ?(lite|e)", 16 * GIB),
    (r"^TPU v5p?$", 95 * GIB),
    (r"^TPU v6 ?(lite|e)", 32 * GIB),
)


def hbm_bytes(device_kind: str) -> Optional[int]:
    for pattern, size in HBM_BYTES:
        if re.search(pattern, device_kind):
            return size
    return None


def prepare_libtpu() -> None:
    """Checks that libtpu can be found and sets what a compile-only libtpu needs; call before any JAX backend."""
    if not os.environ.get("TPU_LIBRARY_PATH") and os.path.isfile(install_libtpu.LIBRARY):  # not a user path: the venv's libtpu
        os.environ["TPU_LIBRARY_PATH"] = install_libtpu.LIBRARY
    if not os.environ.get("TPU_LIBRARY_PATH"):
        try:
            import libtpu  # noqa: F401  (the package jax[tpu] installs)
        except ImportError:
            raise ConfigError("ahead-of-time TPU compiles need libtpu: python -m mobilebert_jax.tools.install_libtpu "
                              "(or pip install -e '.[aot]', or set TPU_LIBRARY_PATH to a libtpu.so)") from None
    elif not os.path.isfile(os.environ["TPU_LIBRARY_PATH"]):  # not a user path: a shared library dlopen loads locally
        raise ConfigError(f"TPU_LIBRARY_PATH={os.environ['TPU_LIBRARY_PATH']!r} is not a file")
    # No chips are opened, so the one-process-per-TPU lock does not apply; there is
    # no metadata server off Cloud, and no worker list to look up.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # Host-side work (building the stage's spec and abstract shapes) stays on the CPU.
    jax.config.update("jax_platforms", "cpu")


# Generations whose chips hold two TensorCores that JAX drives as one device ("megacore"), as a real slice does;
# libtpu's compile-only topology would otherwise list each TensorCore (two devices per chip), a layout
# `mesh_utils.create_device_mesh` refuses for v4 and no v4 or v5p job runs with.
MEGACORE_GENERATIONS = ("v4", "v5p")
GENERATIONS = ("v2", "v3", "v4", "v5e", "v5p", "v6e")


def topology_devices(topology: str, num_slices: int = 1) -> list:
    """The compile-only devices of `num_slices` x `topology`; with several slices each carries its slice_index."""
    from jax.experimental import topologies

    generation = topology.split(":", 1)[0]
    if ":" not in topology or generation not in GENERATIONS:
        raise ConfigError(f"--topology={topology!r}: must be GENERATION:SHAPE with GENERATION one of "
                          f"{list(GENERATIONS)}, e.g. v3:8x16, v4:4x4x8, v5e:16x16")
    options = {"chip_config_name": "megacore"} if generation in MEGACORE_GENERATIONS else {}
    if num_slices > 1:
        options["num_slices"] = num_slices
    try:
        return list(topologies.get_topology_desc(topology, "tpu", **options).devices)
    except Exception as e:  # libtpu reports a bad name as a generic runtime error
        raise ConfigError(f"--topology={topology!r}: {e}") from None


def per_device_bytes(abstract, shardings) -> int:
    """Bytes the fullest device holds of `abstract` placed by `shardings` (before TPU tile padding)."""
    leaves = jax.tree.leaves(partitioning.unbox_without_constraints(abstract))
    return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
               for x, s in zip(leaves, jax.tree.leaves(shardings), strict=True))


@dataclasses.dataclass
class Result:
    config: str
    topology: str
    devices: int
    hosts: int
    device_kind: str
    mesh: dict
    batch_size: int
    microbatches: int
    # From the shardings: the train state (parameters, optimizer state) and the frozen teacher on one device.
    state_bytes: int
    frozen_bytes: int
    frozen_dtype: Optional[str]
    compiled: bool
    # From the compiled step (0 when --nocompile):
    argument_bytes: int
    output_bytes: int  # outputs not aliased to (donated) arguments
    temp_bytes: int
    code_bytes: int
    total_bytes: int
    hbm_bytes: Optional[int]
    xla_flops_per_step: Optional[float]  # None with layers under scan: XLA's cost analysis counts a loop body once
    model_flops_per_step: float
    mfu: float
    step_seconds: Optional[float]
    total_steps: int
    run_seconds: Optional[float]
    compile_seconds: float

    @property
    def fits(self) -> Optional[bool]:
        return None if self.hbm_bytes is None or not self.compiled else self.total_bytes <= self.hbm_bytes


def compile_stage(config: ml_collections.ConfigDict, topology: str, mfu: float = 0.4, config_name: str = "",
                  compile_step: bool = True, num_slices: int = 1) -> Result:
    """Compiles `config`'s train step for (`num_slices` x) `topology` (prepare_libtpu() first) and measures it;
    with `compile_step=False`, only what the shardings place on each device."""
    from mobilebert_jax import stages
    from mobilebert_jax.train import trainer

    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu={mfu}: must be in (0, 1]")
    devices = topology_devices(topology, num_slices)
    hosts = len({d.process_index for d in devices})
    experiment_config.validate(config, len(devices), process_count=hosts)
    mesh = partitioning.make_mesh(config.mesh, devices)
    spec = stages.lookup(config.stage).spec(config)
    program = trainer.build_program(config, spec, mesh)
    # The global batch: the stage's example at the real global size.
    batch = {k: jax.ShapeDtypeStruct((config.batch_size, *v.shape), v.dtype, sharding=program.batch_sharding)
             for k, v in spec.example.items()}
    frozen = program.frozen_target()
    held = dict(state_bytes=per_device_bytes(program.abstract_state, program.shardings),
                frozen_bytes=0 if frozen is None else per_device_bytes(spec.frozen_abstract, program.frozen_shardings),
                frozen_dtype=None if frozen is None else str(jax.tree.leaves(frozen)[0].dtype))
    kind = devices[0].device_kind
    header = dict(config=config_name, topology=topology, devices=len(devices), hosts=hosts, device_kind=kind,
                  mesh=dict(mesh.shape), batch_size=config.batch_size, microbatches=config.microbatches,
                  hbm_bytes=hbm_bytes(kind), mfu=mfu, total_steps=config.total_steps, **held)
    if not compile_step:
        return Result(**header, compiled=False, argument_bytes=0, output_bytes=0, temp_bytes=0, code_bytes=0,
                      total_bytes=0, xla_flops_per_step=0.0, model_flops_per_step=0.0, step_seconds=None,
                      run_seconds=None, compile_seconds=0.0)

    start = time.perf_counter()
    with program.context():
        try:
            compiled = program.train_step.lower(program.state_target(), batch, frozen).compile()
        except jax.errors.JaxRuntimeError as e:
            # The TPU compiler refuses a program whose buffers exceed the device's HBM: an answer, not a bug.
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            raise ConfigError(f"{config_name or 'the config'} does not fit {topology} at config.batch_size="
                              f"{config.batch_size}: {str(e).splitlines()[0]}; lower config.batch_size, raise "
                              "config.microbatches, set config.model.remat=True or shard over more devices "
                              "(config.mesh.shape)") from None
    compile_seconds = time.perf_counter() - start

    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    outputs = memory.output_size_in_bytes - memory.alias_size_in_bytes
    total = memory.argument_size_in_bytes + outputs + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes
    model_flops = float(spec.train_flops_per_example) * config.batch_size
    scanned = any(m.scan_layers for m in spec.models)
    peak = hardware.peak_flops(kind, dtype=config.model.get("dtype", "bfloat16"))
    step_seconds = None if peak is None else model_flops / (mfu * peak * len(devices))
    return Result(
        **header, compiled=True,
        argument_bytes=memory.argument_size_in_bytes, output_bytes=outputs, temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes, total_bytes=total,
        # cost_analysis describes one device's partition of the SPMD program.
        # None under nn.scan: XLA's cost analysis counts a scanned layer once, not L times (measured: a 4-layer
        # scanned step's count is that of about one layer plus the rest).
        xla_flops_per_step=None if scanned else float(cost.get("flops", 0.0)) * len(devices),
        model_flops_per_step=model_flops,
        step_seconds=step_seconds, run_seconds=None if step_seconds is None else step_seconds * config.total_steps,
        compile_seconds=compile_seconds)


def gib(n: Optional[float]) -> str:
    if n is None:
        return "?"
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.1f} MiB"


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "? (no peak FLOP/s known for this device)"
    if seconds < 120:
        return f"{seconds:.3g} s"
    hours = seconds / 3600
    return f"{hours:.1f} h ({hours / 24:.2f} days)" if hours >= 24 else f"{hours:.2f} h"


def _xla_flops(r: Result) -> str:
    if r.xla_flops_per_step is None:
        return "not known (layers under scan: XLA's cost analysis counts the loop body once)"
    return f"{r.xla_flops_per_step:.4g} (recomputation included)"


def report(r: Result) -> str:
    verdict = {True: "fits", False: "DOES NOT FIT", None: "HBM unknown"}[r.fits]
    held = f"  held per device (from the shardings): train state {gib(r.state_bytes)}"
    if r.frozen_dtype is not None:
        held += f", frozen teacher {gib(r.frozen_bytes)} ({r.frozen_dtype})"
    lines = [
        f"{r.config} on {r.topology}: {r.devices} x {r.device_kind} ({r.hosts} hosts), mesh {r.mesh}, "
        f"global batch {r.batch_size}" + (f" in {r.microbatches} microbatches" if r.microbatches > 1 else ""),
        held,
    ]
    if not r.compiled:
        return "\n".join(lines + ["  not compiled (--nocompile)"])
    lines += [
        f"  memory per device: arguments {gib(r.argument_bytes)}, outputs (not aliased) {gib(r.output_bytes)}, "
        f"temporaries {gib(r.temp_bytes)}, code {gib(r.code_bytes)}",
        f"  total {gib(r.total_bytes)} of {gib(r.hbm_bytes)} HBM: {verdict}",
        f"  FLOPs per step: XLA {_xla_flops(r)}, model {r.model_flops_per_step:.4g}",
        f"  at {r.mfu:.0%} MFU: {_duration(r.step_seconds)} per step, {r.total_steps:,} steps in "
        f"{_duration(r.run_seconds)}" + ("" if r.xla_flops_per_step is None else
                                         f"; the chips then execute XLA's FLOPs at "
                                         f"{r.mfu * r.xla_flops_per_step / r.model_flops_per_step:.0%} of peak"),
        f"  compiled in {r.compile_seconds:.0f} s",
    ]
    return "\n".join(lines)


def main(parsed) -> None:
    config, _ = parsed
    spec, _, _ = experiment_config.split_argv(sys.argv)
    try:
        if not FLAGS.topology:
            raise ConfigError("--topology is required, e.g. --topology=v3:8x16")
        prepare_libtpu()
        result = compile_stage(config, FLAGS.topology, FLAGS.mfu, config_name=spec or "", compile_step=FLAGS.compile)
    except ConfigError as e:
        print(f"FATAL config error: {e}", file=sys.stderr)
        sys.exit(1)
    print(report(result), flush=True)
    if FLAGS.json_out:
        storage.path(FLAGS.json_out).write_text(
            json.dumps({**dataclasses.asdict(result), "fits": result.fits}, indent=2) + "\n")


if __name__ == "__main__":
    from mobilebert_jax import cli

    define_flags()
    cli.run_absl(main, flags_parser=experiment_config.absl_flags_parser,
                 doc=__doc__ + "\n--config=experiments/X.py[:arg] with --config.FIELD=VALUE overrides, and:")
