"""Experiment configs: `experiments/X.py[:arg]` files, dotted overrides, checks before compiling.

An experiment file defines `get_config(arg=None) -> ml_collections.ConfigDict`
(ml_collections' `DEFINE_config_file` convention, which this module uses
underneath). Overrides are `--config.optimizer.lr=1e-3` (or without the
`--config.` prefix); a field that does not exist, or a value of the wrong
type, is an error naming the field. Experiment files share code through
files next to them (`experiments/common.py`), read with `load_module`.

Trainer fields `validate` checks (other sections belong to their owners):
  config.mesh        see partitioning.py
  config.batch_size  global batch size (sequences per step, all hosts together)
  config.microbatches  how many equal pieces of it each step accumulates (must divide it)
  config.eval.batch_size  when set and the run evaluates, split over the mesh and the processes like config.batch_size
  config.optimizer   see optim/config.py (optional section)
  config.checkpoint  see checkpointing.py (optional section)

A CLI's `main` lets this module parse the command line (main.py, data/prepare.py, tools/aot_compile.py):

    app.run(main, flags_parser=experiment_config.absl_flags_parser)
    def main(parsed):
        config, argv = parsed
"""

from __future__ import annotations

import datetime
import difflib
import importlib.util
import json
import os
import pprint
import re
import shlex
import subprocess
import sys
import types
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
from absl import flags
from etils import epath
from ml_collections import config_flags

from mobilebert_jax import checkpointing, optim, partitioning, storage
from mobilebert_jax.errors import ConfigError

_FLAG = "config"
_OVERRIDE = re.compile(r"^(?:--?config\.|config\.)?([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(.*)$", re.S)


def load_experiment(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The (locked) config `spec` = "path/to/file.py[:arg]" describes, with `overrides` applied.

    The file may be on gs:// (a run's resolved `config.py` is): it is read from this host's scratch copy, so it
    must not load files beside it (the resolved config does not).
    """
    path, arg = split_spec(spec)
    if not storage.path(path).is_file():
        raise ConfigError(f"experiment config file {path!r} not found (from {spec!r})")
    if storage.is_remote(path):
        spec = storage.local_copy(path) + arg
    parsed = []
    for o in overrides:
        m = _OVERRIDE.match(o)
        if not m:
            raise ConfigError(f"override {o!r}: expected --config.FIELD.SUBFIELD=VALUE (whole tuples as "
                              f"--config.mesh.shape='(2, 4, 1)')")
        parsed.append((o, m.group(1), m.group(2)))

    base = _parse(spec, [])
    for original, field, _ in parsed:
        _check_field_exists(base, field, original)
    return _parse(spec, [f"--{_FLAG}.{field}={value}" for _, field, value in parsed])


def split_spec(spec: str) -> tuple[str, str]:
    """"file.py:arg" -> ("file.py", ":arg"); the colon of a URL's scheme (gs://) is not the argument's."""
    scheme = storage.scheme(spec)
    path, colon, arg = spec[len(scheme):].partition(":")
    return scheme + path, colon + arg


def load_module(path: str) -> types.ModuleType:
    """The Python file `path` as a module, loaded afresh on each call.

    How an experiment file uses the files next to it (`os.path.join(os.path.dirname(__file__), "common.py")`):
    experiments/ is a directory of files named on the command line, not a package on sys.path.
    """
    if not storage.path(path).is_file():
        raise ConfigError(f"experiment module {path!r} not found")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0],
                                                  storage.local_copy(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(spec: str, override_args: list[str]) -> ml_collections.ConfigDict:
    # A private FlagValues, so that loading configs (in tests, or twice here)
    # never touches the process-wide absl FLAGS.
    argv = ["load_experiment", f"--{_FLAG}={spec}", *override_args]
    flag_values = flags.FlagValues()
    try:
        holder = config_flags.DEFINE_config_file(_FLAG, default=spec, flag_values=flag_values, lock_config=True,
                                                 sys_argv=argv)
        flag_values(argv)
        config = holder.value
    except flags.Error as e:
        raise ConfigError(f"{spec}: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{spec}: {e}") from None
    except Exception as e:  # the experiment file itself failed: a syntax error, a bad import, get_config raising
        raise ConfigError(f"{spec}: could not load the config: {type(e).__name__}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{spec}: get_config() returned {type(config).__name__}, expected a ConfigDict")
    return config


def _check_field_exists(config: ml_collections.ConfigDict, field: str, original: str) -> None:
    node: Any = config
    walked = _FLAG
    for key in field.split("."):
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"override {original!r}: {walked} holds a {type(node).__name__} value, not a config section; "
                              f"it has no field {key!r}")
        if key not in node:
            known = sorted(node.keys())
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {walked}.{close[0]}?" if close else ""
            raise ConfigError(f"override {original!r}: {walked} has no field {key!r} (fields: {known}){hint}")
        node = node[key]
        walked = f"{walked}.{key}"


def split_argv(argv: Sequence[str]) -> tuple[Optional[str], list[str], list[str]]:
    """(config spec, config overrides, everything else) from a command line."""
    spec, overrides, rest = None, [], []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a in (f"--{_FLAG}", f"-{_FLAG}") and i + 1 < len(args):
            spec, i = args[i + 1], i + 2
            continue
        if a.startswith((f"--{_FLAG}=", f"-{_FLAG}=")):
            spec = a.split("=", 1)[1]
        elif a.startswith((f"--{_FLAG}.", f"-{_FLAG}.")):
            overrides.append(a)
        else:
            rest.append(a)
        i += 1
    return spec, overrides, rest


def absl_flags_parser(argv: list[str]) -> tuple[ml_collections.ConfigDict, list[str]]:
    """For `app.run(main, flags_parser=...)`: loads --config and its overrides, parses the other flags."""
    spec, overrides, rest = split_argv(argv)
    try:
        if spec is None:
            raise ConfigError("--config=experiments/NAME.py[:arg] is required")
        config = load_experiment(spec, overrides)
    except ConfigError as e:
        from mobilebert_jax import cli

        cli.fatal("config", e)
    return config, flags.FLAGS(rest)


def validate(config: ml_collections.ConfigDict, device_count: int, *, process_count: int = 1) -> None:
    """Every check that must fail before anything compiles; all failures are reported together."""
    errors: list[str] = []

    def attempt(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ConfigError as e:
            errors.append(str(e))
            return None

    mesh_cfg = config.get("mesh")
    shape = rules = None
    if mesh_cfg is None:
        errors.append("config.mesh is required (at least config.mesh.shape, e.g. (-1, 1, 1))")
    else:
        rules = attempt(lambda: partitioning.logical_rules(mesh_cfg))
        if rules is not None:
            shape = attempt(lambda: partitioning.resolve_mesh_shape(mesh_cfg.get("shape"), device_count))
    for field in ("total_steps", "log_every"):
        value = config.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            errors.append(f"config.{field}={value!r}: must be a positive whole number of steps")
    if "batch_size" not in config:
        errors.append("config.batch_size is required (the global batch size)")
    elif shape is not None:
        attempt(lambda: partitioning.check_batch_size(config.batch_size, shape, rules, process_count))
    if "batch_size" in config:
        attempt(lambda: check_microbatches(config.get("microbatches", 1), config.batch_size))
    eval_cfg = config.get("eval")
    # A run that never evaluates (eval.enabled False, or no held-out batches) need not split an eval batch.
    evaluates = eval_cfg is not None and eval_cfg.get("enabled", True) and eval_cfg.get("num_batches", 1) != 0
    if shape is not None and evaluates and eval_cfg.get("batch_size") is not None:
        # Otherwise the first evaluation, after hours of training, is what finds out.
        attempt(lambda: partitioning.check_batch_size(eval_cfg.batch_size, shape, rules, process_count,
                                                      where="config.eval.batch_size"))
    if "optimizer" in config:
        attempt(lambda: optim.build_optimizer(config.optimizer, params=None))
        attempt(lambda: check_schedule_length(config))
    if "checkpoint" in config:
        attempt(lambda: checkpointing.read_config(config.checkpoint))
    if errors:
        # One line (the FATAL convention), every problem in it: fixing them one rerun at a time wastes starts.
        raise ConfigError(f"invalid experiment config ({len(errors)} problem{'s' if len(errors) > 1 else ''}): "
                          + "; ".join(errors))


def check_microbatches(microbatches: Any, batch_size: Any) -> None:
    """`config.microbatches` splits the global batch into equal pieces that are accumulated."""
    if isinstance(microbatches, bool) or not isinstance(microbatches, int) or microbatches < 1:
        raise ConfigError(f"config.microbatches={microbatches!r}: must be a positive whole number")
    if isinstance(batch_size, int) and batch_size > 0 and batch_size % microbatches:
        raise ConfigError(f"config.microbatches={microbatches} does not divide config.batch_size={batch_size}: "
                          "each step accumulates equal microbatches of the global batch")


def check_schedule_length(config: ml_collections.ConfigDict) -> None:
    """The learning-rate schedule ends with the run: an override of one of the two lengths alone is refused.

    The experiment files tie `optimizer.schedule.total_steps` to `total_steps`
    (an ml_collections FieldReference), so overriding `total_steps` moves both.
    """
    schedule = config.optimizer.get("schedule") or {}
    length, run = schedule.get("total_steps"), config.get("total_steps")
    if length is not None and run is not None and length != run:
        raise ConfigError(f"config.optimizer.schedule.total_steps={length} but config.total_steps={run}: the "
                          f"learning-rate schedule must end with the run; change them together "
                          f"(--config.total_steps={run} --config.optimizer.schedule.total_steps={run})")


def check_shared_storage(config: ml_collections.ConfigDict, workdir: str, process_count: int) -> None:
    """With several processes (a pod's hosts), the workdir and the prepared data must be on shared storage.

    Every host writes its checkpoint shards into the workdir and reads the data
    process 0 prepared; on a local path each host would see only its own disk.
    """
    storage.require_shared("--workdir", workdir, process_count)
    data = config.get("data")
    if data is not None and data.get("prepared_dir"):
        storage.require_shared("config.data.prepared_dir", data.prepared_dir, process_count)


# Fields renamed or removed since runs were recorded: old dotted name -> new dotted name (None: removed). A
# workdir's config.json is read through `upgrade_recorded`, so such a run still resumes, evaluates and exports.
RENAMED_FIELDS = {
    "data.vocab": "data.tokenizer",  # fine-tuning named its tokenizer as no other stage did
    "data.scratch_vocab": "data.scratch_tokenizer",
    "model_preset": None,  # a free-text label that selected nothing
    # Progressive transfer's layer-by-layer parts are phases; a stage is a kind of run (stages.STAGES).
    "distill.stage_steps": "distill.phase_steps",
    "distill.last_stage": "distill.last_phase",
    "optimizer.groups.*.multiplier.stage_steps": "optimizer.groups.*.multiplier.phase_steps",
}


def _sections(tree: dict, names: list[str]) -> list[dict]:
    """The dicts at the dotted path `names` in `tree` ("*": every entry at that level)."""
    found = [tree]
    for name in names:
        found = [child for section in found if isinstance(section, dict)
                 for child in (section.values() if name == "*" else [section.get(name)])]
    return [section for section in found if isinstance(section, dict)]


def upgrade_recorded(recorded: dict) -> dict:
    """A recorded config (config.json's dict) with the fields of RENAMED_FIELDS under their current names."""
    recorded = json.loads(json.dumps(recorded))  # a deep copy
    for old, new in RENAMED_FIELDS.items():
        *parents, leaf = old.split(".")
        for section in _sections(recorded, parents):
            if leaf in section:
                value = section.pop(leaf)
                if new is not None:
                    section.setdefault(new.split(".")[-1], value)
    return recorded


def read_recorded(workdir: str) -> Optional[ml_collections.ConfigDict]:
    """The config a workdir's run was started with (its config.json, upgraded), or None where it has none."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); it records the config this workdir was started with: "
                          "restore it, or use a new --workdir") from None
    return ml_collections.ConfigDict(upgrade_recorded(recorded))


def save_resolved(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes `config.json`, a loadable `config.py` and appends to `command.txt` in `workdir` (process 0 only).

    `config.py` reproduces the run with `--config=<workdir>/config.py`.
    Values that are not Python literals (functions) are written as their
    repr string and listed at the top of the file. `command.txt` gets one
    entry per start of the run (a resume is a start): the time, the git
    revision of the code and the exact command line; `config.py` names the
    latest in its header.
    """
    if jax.process_index() != 0:
        return
    workdir_path = epath.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    (workdir_path / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    command, revision = command_line(), git_revision()
    record = workdir_path / "command.txt"
    previous = record.read_text() if record.exists() else ""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record.write_text(previous + f"{stamp}  git {revision}  cwd {os.getcwd()}\n  {command}\n")
    replaced: list[str] = []
    literal = _literal(config.to_dict(), "config", replaced)
    header = ["# The resolved experiment config of this run (mobilebert_jax.experiment_config.save_resolved).",
              "# Rerun with --config=<this file>.",
              f"# Written by: {command}",
              f"# Code: git {revision}; every start of this run is in command.txt."]
    header += [f"# not a literal, written as its repr: {field}" for field in replaced]
    body = pprint.pformat(literal, indent=4, width=100, sort_dicts=False)
    (workdir_path / "config.py").write_text(
        "\n".join(header) + "\n\nimport ml_collections\n\n\ndef get_config(arg=None):\n"
        f"    del arg\n    return ml_collections.ConfigDict(\n{_indent(body, 8)}\n    )\n")


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command line as a person would retype it: `python -m PACKAGE.MODULE args` for `-m` runs."""
    argv = list(sys.argv if argv is None else argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and argv and os.path.abspath(argv[0]) == os.path.abspath(main.__file__ or ""):
        name = spec.name[:-len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        head = ["python", "-m", name]
    else:
        head = argv[:1]
    return shlex.join(head + argv[1:])


def git_revision() -> str:
    """The commit of the code that runs (with `-dirty` for local changes), or why there is none."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _literal(value: Any, where: str, replaced: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _literal(v, f"{where}.{k}", replaced) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_literal(v, f"{where}[{i}]", replaced) for i, v in enumerate(value))
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    replaced.append(where)
    return repr(value)


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


