r"""Check a stage's whole configuration against a TPU slice before asking for one.

    python -m mobilebert_jax.tools.install_libtpu    # the TPU compiler, once (or set TPU_LIBRARY_PATH)
    python -m mobilebert_jax.tools.preflight --config=experiments/distill_progressive.py --topology=v5e:16x16 \
        [--num_slices=2] [--workdir=gs://BUCKET/runs/x] [--offline] [--nocompile] [--config.FIELD=VALUE ...]

It takes the training command's arguments as they are (`python -m mobilebert_jax.main`'s flags are accepted:
`--workdir` is checked, the others change nothing here).

--topology is JAX's slice name (v3:8x16, v5e:16x16, ...) or Cloud TPU's accelerator type (v3-256,
v5litepod-256, ...); --num_slices=N is N such slices over the data-center network (multislice).
Nothing runs on a TPU: the checks use libtpu's compile-only devices, as tools/aot_compile.py does.

In order, each problem one `FATAL <kind> error: ...` line on stderr naming the field and the value to set
(exit status 1 when there is one), every finding on stdout:

1. the config check the trainer runs first (`experiment_config.validate`: batch sizes against the mesh and
   the process count, the optimizer, the checkpoint section, ...) for the slice's devices and hosts;
2. the mesh over the slice(s) (`partitioning.make_mesh`): with several slices the data axis must divide by
   their number; the line names the `config.mesh.shape` that does;
3. memory (skipped with --nocompile): the train step compiled for the slice (`aot_compile.compile_stage`);
   when it does not fit the HBM, the step is compiled again with `config.model.remat=True` and then with
   more `config.microbatches` (doubling, while the per-device batch allows) until it fits, and the line names
   the settings that fit;
4. shared storage (skipped with --offline): the tokenizer, the prepared data (else the corpus it is prepared
   from), the teacher and the initial checkpoints exist and are readable; with several hosts the workdir and
   prepared_dir are shared (gs://);
5. per-host disk (from the prepared data's manifest): every host copies all the shards it reads into its
   scratch directory ($MOBILEBERT_JAX_SCRATCH).
"""

from __future__ import annotations

import math
import os
import re
import sys
from typing import Callable, Optional

import ml_collections
from absl import flags

# main's flags (--workdir, ...): the preflight takes the training arguments as they are (tpu_run.sh passes them
# through) and checks --workdir; the others do not change what is checked.
from mobilebert_jax import experiment_config, main as train_main, partitioning, storage  # noqa: F401
from mobilebert_jax.errors import ConfigError, DataError
from mobilebert_jax.tools import aot_compile

flags.DEFINE_string("topology", None, "the slice: JAX's name (v3:8x16, v5e:16x16, ...) or Cloud TPU's accelerator "
                                      "type (v3-256, v5litepod-256, v4-128, v5p-128, v6e-16, ...)")
flags.DEFINE_integer("num_slices", 1, "how many such slices (multislice over the data-center network)")
flags.DEFINE_bool("offline", False, "skip the checks that read storage (tokenizer, data, teacher, checkpoints)")
flags.DEFINE_bool("compile", True, "--nocompile: skip the memory check (the train step's compile for the slice)")
FLAGS = flags.FLAGS

# Cloud TPU accelerator type -> JAX's topology name. v2/v3/v4/v5p types count TensorCores (two per chip),
# v5e and v6e count chips.
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16",
              512: "16x32", 1024: "32x32"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_ACCELERATORS = {"v2": ("v2", _SHAPES_2D, 2), "v3": ("v3", _SHAPES_2D, 2), "v4": ("v4", _SHAPES_3D, 2),
                 "v5p": ("v5p", _SHAPES_3D, 2), "v5litepod": ("v5e", _SHAPES_2D, 1), "v6e": ("v6e", _SHAPES_2D, 1)}
MAX_MICROBATCHES_TRIED = 64


def topology_name(topology: str) -> str:
    """JAX's topology name for `topology`, given as one or as a Cloud TPU accelerator type (v3-256)."""
    match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", topology)
    if not match:
        return topology
    generation, count = match.group(1), int(match.group(2))
    if generation not in _ACCELERATORS:
        raise ConfigError(f"--topology={topology!r}: unknown accelerator generation; one of "
                          f"{sorted(_ACCELERATORS)}, or JAX's name (v3:8x16)")
    jax_generation, shapes, cores_per_chip = _ACCELERATORS[generation]
    chips = count // cores_per_chip
    if count % cores_per_chip or chips not in shapes:
        raise ConfigError(f"--topology={topology!r}: no {generation} slice of that size is known here; give JAX's "
                          f"name instead ({jax_generation}:SHAPE in chips, e.g. {jax_generation}:{shapes[16]})")
    return f"{jax_generation}:{shapes[chips]}"


class Findings:
    """What the checks found: problems (one FATAL line each) and notes (stdout)."""

    def __init__(self, out: Callable[[str], None] = print):
        self.problems: list[tuple[str, str]] = []
        self.out = out

    def note(self, line: str) -> None:
        self.out(line)

    def problem(self, kind: str, message: str) -> None:
        self.problems.append((kind, message))

    def lines(self) -> list[str]:
        return [f"FATAL {kind} error: {message}" for kind, message in self.problems]


def run(config: ml_collections.ConfigDict, topology: str, *, num_slices: int = 1, workdir: Optional[str] = None,
        offline: bool = False, compile_step: bool = True, config_name: str = "",
        out: Callable[[str], None] = print) -> Findings:
    """Every check on `config` for `num_slices` x `topology` (aot_compile.prepare_libtpu() first)."""
    findings = Findings(out)
    if num_slices < 1:
        findings.problem("config", f"--num_slices={num_slices}: must be at least 1")
        return findings
    try:
        name = topology_name(topology)
        devices = aot_compile.topology_devices(name, num_slices=num_slices)
    except ConfigError as e:
        findings.problem("config", str(e))
        return findings
    hosts = len({d.process_index for d in devices})
    slices = f"{num_slices} x {name}" if num_slices > 1 else name
    findings.note(f"{config_name or 'config'} on {slices}: {len(devices)} {devices[0].device_kind} devices, "
                  f"{hosts} hosts")
    try:
        experiment_config.validate(config, len(devices), process_count=hosts)
    except ConfigError as e:
        findings.problem("config", str(e))
        return findings  # the mesh and the compile need a valid config
    mesh = _check_mesh(config, devices, num_slices, findings)
    if mesh is None:
        return findings
    if compile_step:
        batch_shards = math.prod(mesh.shape[a] for a in partitioning.batch_axes(partitioning.logical_rules(
            config.mesh)))
        _check_memory(config, name, num_slices, config_name, batch_shards, findings)
    else:
        findings.note("memory: not checked (--nocompile)")
    if workdir is not None:
        try:
            experiment_config.check_shared_storage(config, workdir, hosts)
        except ConfigError as e:
            findings.problem("config", str(e))
    if offline:
        findings.note("storage: not checked (--offline)")
    else:
        _check_storage(config, findings)
    return findings


def _check_mesh(config: ml_collections.ConfigDict, devices: list, num_slices: int, findings: Findings):
    """The mesh over `devices`, or None (a problem recorded)."""
    try:
        mesh = partitioning.make_mesh(config.mesh, devices)
    except ConfigError as e:
        message = str(e)
        if num_slices > 1:
            per_slice = len(devices) // num_slices
            message += (f". With {num_slices} slices the data axis crosses them: set "
                        f"--config.mesh.shape='({num_slices}, {per_slice}, 1)' (fsdp inside each slice) or "
                        f"'({len(devices)}, 1, 1)' (data parallel)")
        findings.problem("config", message)
        return None
    findings.note(f"mesh: {dict(mesh.shape)}" + (f" over {num_slices} slices" if num_slices > 1 else ""))
    return mesh


def _fits(config, topology: str, num_slices: int, config_name: str) -> tuple[Optional[bool], str]:
    """(fits, what the compile says); fits is None when the device's HBM is not known."""
    try:
        result = aot_compile.compile_stage(config, topology, config_name=config_name, num_slices=num_slices)
    except ConfigError as e:
        if "does not fit" in str(e):
            return False, str(e).split(": ", 2)[-1]
        raise
    return result.fits, (f"{aot_compile.gib(result.total_bytes)} of {aot_compile.gib(result.hbm_bytes)} HBM per "
                         f"device, compiled in {result.compile_seconds:.0f} s")


def _check_memory(config: ml_collections.ConfigDict, topology: str, num_slices: int, config_name: str,
                  batch_shards: int, findings: Findings) -> None:
    fits, how = _fits(config, topology, num_slices, config_name)
    if fits is not False:
        findings.note(f"memory: {'fits' if fits else 'HBM unknown'}: {how}")
        return
    tried = config.copy_and_resolve_references()
    changes: list[str] = []
    if "remat" in tried.model and not tried.model.remat:
        tried.model.remat = True
        changes.append("--config.model.remat=True")
        findings.note(f"memory: does not fit ({how}); trying {' '.join(changes)}")
        fits, how = _fits(tried, topology, num_slices, config_name)
    per_device = config.batch_size // batch_shards
    microbatches = config.microbatches
    while fits is False and microbatches * 2 <= min(per_device, MAX_MICROBATCHES_TRIED):
        microbatches *= 2
        tried.microbatches = microbatches
        attempt = changes + [f"--config.microbatches={microbatches}"]
        findings.note(f"memory: does not fit ({how}); trying {' '.join(attempt)}")
        fits, how = _fits(tried, topology, num_slices, config_name)
        if fits is not False:
            changes = attempt
    now = f"config.model.remat={config.model.get('remat')}, config.microbatches={config.microbatches}"
    if fits is False:
        most = " ".join(changes + [f"--config.microbatches={microbatches}"])
        findings.problem("config", f"the train step does not fit {topology} at config.batch_size={config.batch_size} "
                                   f"({now}), not even with {most} ({how}): lower config.batch_size or shard over "
                                   "more devices (config.mesh.shape)")
    else:
        findings.problem("config", f"the train step does not fit {topology} at config.batch_size={config.batch_size} "
                                   f"({now}); set {' '.join(changes)} (then {how})")


def _check_storage(config: ml_collections.ConfigDict, findings: Findings) -> None:
    from mobilebert_jax import model_source

    data = config.get("data")
    if data is not None:
        tokenizer_field = "tokenizer" if "tokenizer" in data else "vocab" if "vocab" in data else None
        if tokenizer_field and data[tokenizer_field]:
            _check(findings, f"config.data.{tokenizer_field}", lambda: _load_tokenizer(data[tokenizer_field]))
        if "corpus" in data:
            _check_pretraining_data(data, findings)
    for field in ("distill.teacher", "distill.student_init", "init_checkpoint"):
        section, _, name = field.rpartition(".")
        holder = config.get(section) if section else config
        spec = holder.get(name) if holder is not None else None
        if spec:
            _check(findings, f"config.{field}", lambda s=spec, f=field: model_source.open_source(s, f"config.{f}"))


def _load_tokenizer(spec: str):
    from mobilebert_jax.data.tokenizers import load_tokenizer

    return load_tokenizer(spec)


def _check_pretraining_data(data: ml_collections.ConfigDict, findings: Findings) -> None:
    from mobilebert_jax.data import manifest as manifest_lib
    from mobilebert_jax.data import sources

    prepared = data.get("prepared_dir", "")
    if prepared:
        try:
            manifest = manifest_lib.load_manifest(prepared)
        except DataError as e:
            findings.note(f"config.data.prepared_dir={prepared!r}: not prepared yet ({e}); process 0 prepares it "
                          "from config.data.corpus at the start, the other hosts wait")
        else:
            shards = [f"{prepared}/{name}" for split in manifest["splits"].values() for name in split["shards"]]
            size = sum(storage.path(s).stat().length for s in shards)
            where = ("read in place, nothing copied to the hosts' disks" if storage.is_remote(prepared)
                     else "on every host's own disk")
            findings.note(f"config.data.prepared_dir={prepared!r}: prepared; {len(shards)} shards, "
                          f"{aot_compile.gib(size)}, {where}")
            return
    else:
        findings.note("config.data.prepared_dir is empty: the stage prepares into its own workdir (a later stage "
                      "prepares again; set a shared gs:// prepared_dir to prepare once)")
    _check(findings, "config.data.corpus", lambda: sources.plan_units(
        data.corpus, corpus_format=data.corpus_format, tfds_data_dir=data.get("tfds_data_dir", ""),
        tfds_text_field=data.tfds_text_field))


def _check(findings: Findings, field: str, read: Callable[[], object]) -> None:
    try:
        read()
    except (ConfigError, DataError, OSError) as e:
        findings.problem("data" if isinstance(e, DataError) else "config",
                         str(e) if field in str(e) else f"{field}: {e}")
    else:
        findings.note(f"{field}: found")


def main(parsed) -> None:
    config, _ = parsed
    spec, _, _ = experiment_config.split_argv(sys.argv)
    if not FLAGS.topology:
        raise ConfigError("--topology is required, e.g. --topology=v5e:16x16 or --topology=v5litepod-256")
    aot_compile.prepare_libtpu()
    findings = run(config, FLAGS.topology, num_slices=FLAGS.num_slices, workdir=FLAGS.workdir,
                   offline=FLAGS.offline, compile_step=FLAGS.compile, config_name=spec or "")
    for line in findings.lines():
        print(line, file=sys.stderr, flush=True)
    if findings.problems:
        sys.exit(1)
    print("preflight: no problems found", flush=True)


if __name__ == "__main__":
    from mobilebert_jax import cli

    cli.run_absl(main, flags_parser=experiment_config.absl_flags_parser,
                 doc=__doc__ + "\n--config=experiments/X.py[:arg] with --config.FIELD=VALUE overrides, and:")
