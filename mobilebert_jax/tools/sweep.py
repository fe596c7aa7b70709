r"""Sweeps: runs over a grid of config values, one after another here or one per TPU slice, and a summary table.

A sweep file (experiments/sweeps/NAME.py) defines `get_sweep() -> dict` with
  config   the base experiment, "experiments/X.py[:arg]"
  axes     a list of axes; the runs are their cartesian product. An axis is {setting: [values]}; several
           settings in one axis are zipped (equal-length lists that vary together)
  fixed    optional {field: value} for every run
  derive   optional settings -> {field: value}: the config fields a run sets, for settings that are not
           fields themselves (epochs -> total_steps); without it each setting is a config field
  metrics  optional: the final metrics the summary shows (default: every metric the runs logged)

    python -m mobilebert_jax.tools.sweep SWEEP.py list --root=runs/sweeps
    python -m mobilebert_jax.tools.sweep SWEEP.py run --root=runs/sweeps [--dry_run]    # here, one after another
    python -m mobilebert_jax.tools.sweep SWEEP.py launch --root=gs://BUCKET/sweeps --slice_prefix=mb \
        --tpu_run_args="--zone=europe-west4-a --accelerator=v3-8" [--dry_run]          # one slice per run
    python -m mobilebert_jax.tools.sweep SWEEP.py summary --root=runs/sweeps

Config paths are relative to the repository root (where the command runs, and where tpu_run.sh runs the
training on the workers). Run i of sweep NAME works in ROOT/NAME/<i>_<settings>. Every run's config is
loaded (fields and types checked) before anything starts; a finished run (metrics logged at config.total_steps) is not started again,
and an unfinished one continues from its checkpoint. `summary` writes summary.md and summary.json next to
the runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Callable, Optional, Sequence

from etils import epath

from mobilebert_jax import cli, experiment_config, jsonl, plot, storage
from mobilebert_jax.config_schema import Schema
from mobilebert_jax.errors import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU_RUN = os.path.join(REPO_ROOT, "launch", "tpu_run.sh")
SCHEMA = Schema(fields=("config", "axes", "fixed", "derive", "metrics"),
                optional=dict(fixed={}, derive=None, metrics=None))  # no fixed fields, settings as fields, all metrics


@dataclasses.dataclass(frozen=True)
class Run:
    index: int
    name: str
    settings: dict[str, Any]  # the swept values
    overrides: dict[str, Any]  # config fields it sets (fixed + settings or derive(settings))
    workdir: str
    total_steps: int


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    config: str
    runs: list[Run]
    metrics: Optional[tuple[str, ...]]


def load_sweep_file(path: str) -> dict:
    if not storage.path(path).is_file():
        raise ConfigError(f"sweep file {path!r} not found")
    spec = importlib.util.spec_from_file_location(f"sweep_{os.path.basename(path)[:-3]}", storage.local_copy(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_sweep", None)):
        raise ConfigError(f"{path}: defines no get_sweep() function")
    sweep = module.get_sweep()
    if not isinstance(sweep, dict):
        raise ConfigError(f"{path}: get_sweep() returned {type(sweep).__name__}, expected a dict")
    return SCHEMA.read(sweep, f"{path}: get_sweep()")


def expand_axes(axes: Sequence[dict], where: str = "axes") -> list[dict[str, Any]]:
    """The cartesian product of the axes; the settings within one axis are zipped."""
    if isinstance(axes, dict) or not isinstance(axes, (list, tuple)):
        raise ConfigError(f"{where}: must be a list of axes ({{setting: [values]}}), got {type(axes).__name__}")
    columns = []
    for i, axis in enumerate(axes):
        if not isinstance(axis, dict) or not axis:
            raise ConfigError(f"{where}[{i}]: must be a non-empty {{setting: [values]}} dict")
        lengths = {}
        for key, values in axis.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"{where}[{i}][{key!r}]: must be a non-empty list of values")
            lengths[key] = len(values)
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"{where}[{i}]: zipped settings need lists of one length, got {lengths}")
        columns.append([dict(zip(axis, values)) for values in zip(*axis.values())])
    combos = []
    for parts in itertools.product(*columns):
        settings: dict[str, Any] = {}
        for part in parts:
            repeated = sorted(set(settings) & set(part))
            if repeated:
                raise ConfigError(f"{where}: setting(s) {repeated} appear on more than one axis")
            settings.update(part)
        combos.append(settings)
    return combos


def run_name(index: int, settings: dict[str, Any]) -> str:
    label = ",".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in settings.items())
    return f"{index:03d}_" + re.sub(r"[^A-Za-z0-9._=,+-]", "", label)[:120]


def _short(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "x".join(_short(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def build(path: str, root: str) -> Sweep:
    """The sweep's runs, every run's config loaded and checked."""
    sweep = load_sweep_file(path)
    name = os.path.splitext(os.path.basename(path))[0]
    root = storage.absolute(root)
    fixed = dict(sweep.get("fixed") or {})
    derive: Optional[Callable[[dict], dict]] = sweep.get("derive")
    runs = []
    for index, settings in enumerate(expand_axes(sweep["axes"], f"{path}: axes")):
        overrides = {**fixed, **(derive(dict(settings)) if derive else settings)}
        try:
            config = experiment_config.load_experiment(sweep["config"], override_args(overrides))
        except ConfigError as e:
            raise ConfigError(f"{path}: run {index} ({settings}): {e}") from None
        label = run_name(index, settings)
        runs.append(Run(index, label, settings, overrides, os.path.join(root, name, label), config.total_steps))
    metrics = sweep.get("metrics")
    return Sweep(name, sweep["config"], runs, tuple(metrics) if metrics else None)


def override_args(overrides: dict[str, Any]) -> list[str]:
    return [f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()]


def _flag_value(value: Any) -> str:
    # ml_collections parses tuples and numbers from their Python spelling; strings go as they are.
    return value if isinstance(value, str) else repr(value)


def train_args(sweep: Sweep, run: Run) -> list[str]:
    return [f"--config={sweep.config}", f"--workdir={run.workdir}", *override_args(run.overrides)]


def read_metrics(workdir: str) -> tuple[Optional[int], dict[str, float]]:
    """The last step logged and each metric's latest value, from `workdir`/metrics.jsonl (local or gs://)."""
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return None, {}
    last_step, latest = None, {}
    for _, record in jsonl.records(path):  # a line cut short by a killed run is skipped
        last_step = max(record.get("step", 0), last_step or 0)
        latest.update({k: v for k, v in plot.current_names(record).items() if k not in ("step", "time")})
    return last_step, latest


def finished(run: Run) -> bool:
    step, _ = read_metrics(run.workdir)
    return step is not None and step >= run.total_steps


def _run_each(sweep: Sweep, command_for: Callable[[Run], list[str]], where: Callable[[Run], str],
              dry_run: bool) -> list[int]:
    """Runs `command_for(run)` for each unfinished run, one after another; returns the failed runs' indices."""
    failed = []
    for run in sweep.runs:
        command = command_for(run)
        if dry_run:
            print(shlex.join(command))
            continue
        if finished(run):
            print(f"[sweep] run {run.name}: finished before, skipped", flush=True)
            continue
        print(f"[sweep] run {run.name}{where(run)}", flush=True)
        if subprocess.run(command).returncode != 0:
            print(f"[sweep] run {run.name} FAILED", flush=True)
            failed.append(run.index)
    return failed


def run_locally(sweep: Sweep, dry_run: bool) -> list[int]:
    """Runs the unfinished runs here, one after another."""
    def command_for(run: Run) -> list[str]:
        return [sys.executable, "-m", "mobilebert_jax.main", *train_args(sweep, run)]

    return _run_each(sweep, command_for, lambda run: ": " + shlex.join(command_for(run)), dry_run)


def launch_on_slices(sweep: Sweep, slice_prefix: str, tpu_run_args: Sequence[str], dry_run: bool) -> list[int]:
    """Starts each unfinished run on its own slice, `slice_prefix`-<index>, through launch/tpu_run.sh."""
    def command_for(run: Run) -> list[str]:
        return [TPU_RUN, f"--name={slice_prefix}-{run.index}", *tpu_run_args, "start", "--", *train_args(sweep, run)]

    return _run_each(sweep, command_for, lambda run: f" on slice {slice_prefix}-{run.index}", dry_run)


def summarize(sweep: Sweep) -> tuple[str, list[dict]]:
    """A markdown table (run, settings, status, final metrics) and the same rows as dicts."""
    rows = []
    for run in sweep.runs:
        step, latest = read_metrics(run.workdir)
        status = "not started" if step is None else ("done" if step >= run.total_steps else
                                                      f"step {step}/{run.total_steps}")
        rows.append({"run": run.name, **run.settings, "status": status, "metrics": latest})
    metrics = list(sweep.metrics or sorted({k for r in rows for k in r["metrics"]}))
    settings = list(dict.fromkeys(k for run in sweep.runs for k in run.settings))
    header = ["run", *settings, "status", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["run"], *(_short(r.get(k, "")) for k in settings), r["status"]]
        cells += [f"{r['metrics'][m]:.4g}" if isinstance(r["metrics"].get(m), (int, float)) else ""
                  for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    if "seed" in settings:
        table += "\n\n" + seed_table(rows, [k for k in settings if k != "seed"], metrics)
    return table, rows


def seed_table(rows: list[dict], settings: list[str], metrics: list[str]) -> str:
    """Runs that differ only in `seed`, as mean ± sample standard deviation over the finished seeds.

    Small GLUE tasks (CoLA, MRPC, RTE) move by points between seeds, so one run says little.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] == "done":
            groups.setdefault(tuple(repr(r.get(k)) for k in settings), []).append(r)
    header = [*settings, "seeds", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for members in groups.values():
        cells = [_short(members[0].get(k, "")) for k in settings] + [str(len(members))]
        for m in metrics:
            values = [r["metrics"][m] for r in members if isinstance(r["metrics"].get(m), (int, float))]
            if not values:
                cells.append("")
                continue
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            cells.append(f"{mean:.4g} ± {std:.2g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.ArgumentParser(prog="python -m mobilebert_jax.tools.sweep", description=__doc__)
    parser.add_argument("sweep_file")
    parser.add_argument("command", choices=("list", "run", "launch", "summary"))
    parser.add_argument("--root", default=os.path.join("runs", "sweeps"),
                        help="runs go to ROOT/<sweep name>/<run> (gs://... for launch)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("--slice_prefix", help="launch: run i uses the TPU slice PREFIX-i")
    parser.add_argument("--tpu_run_args", default="", help="launch: options for launch/tpu_run.sh, one string")
    args = parser.parse_args(argv)
    try:
        sweep = build(args.sweep_file, args.root)
        if args.command == "list":
            for run in sweep.runs:
                print(f"{run.name}\t{run.workdir}\t{' '.join(override_args(run.overrides))}")
            return 0
        if args.command == "run":
            failed = run_locally(sweep, args.dry_run)
        elif args.command == "launch":
            if not args.slice_prefix:
                raise ConfigError("launch needs --slice_prefix (run i goes to the slice PREFIX-i)")
            failed = launch_on_slices(sweep, args.slice_prefix, shlex.split(args.tpu_run_args), args.dry_run)
        else:
            failed = []
    except ConfigError as e:
        print(f"FATAL config error: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        return 0
    if args.command in ("run", "summary"):
        table, rows = summarize(sweep)
        print(table)
        out = epath.Path(args.root) / sweep.name
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(table + "\n")
        (out / "summary.json").write_text(json.dumps(rows, indent=2, default=repr) + "\n")
    if failed:
        print(f"[sweep] failed runs: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_argparse(main))
