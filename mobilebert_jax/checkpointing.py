"""Checkpoints: an Orbax CheckpointManager configured for this trainer, and a SIGTERM guard.

A checkpoint step directory holds three items:
  state   the train-state pytree (params, optimizer state, step, stage, ...),
          written by every process for the shards it owns;
  data    the data iterator's state (`get_state()`), one JSON file per
          process (`process_I-of-N.json`). The state is the global stream's
          position (the next global batch), the same on every host; a
          restore on another process count reads the one state all N files
          hold, so a run resumes on a slice of any size;
  config  the resolved experiment config as JSON, written by process 0.

Orbax writes each step into `<step>.orbax-checkpoint-tmp-<time>` and renames
it to `<step>` only after every item is finished (on object stores that
cannot rename atomically it writes `commit_success.txt` last instead), so a
checkpoint interrupted by a crash is never listed or restored; leftover
temporary directories are deleted when the next Checkpointer opens the
directory.

Restoring without an explicit step tries the newest checkpoint first; one
that cannot be read (a truncated or missing file, unparsable metadata) is
moved aside to `corrupt-<step>-<time>` beside the steps (never deleted) with
a warning naming the step and the file, and the next newest is tried.
Multi-host: every process reports whether it could read its part, and the
step is used only if all could (`_all_processes`), so all restore the same
step.

Listings on gs:// (gcsfs caches them per process; storage.forget_listings):
the steps are listed afresh whenever orbax lists them here (opening the
directory, after a step was moved aside, after a failed save), since other
hosts and tensorstore write there unseen by this process's cache. A moved
step stays a sibling of the steps, not inside a `corrupt/` folder: on Cloud
Storage a folder exists only through its objects (epath's rename refuses a
destination folder that does not exist yet), and orbax deletes any
directory there without a `commit_success.txt` as an unfinished save when it
opens the directory; the moved step keeps its own commit file, and its name
is no step number.

A save that fails (disk full, permission, storage error) raises
`CheckpointError` naming the step: at once for a synchronous save, and at the
next `save`/`check`/`wait` for an asynchronous one. The checkpoints before it
stay as they were (orbax prunes old steps only after a save has committed).

Config fields read here (`config.checkpoint`; the values are the experiment's, experiments/common.checkpoint):
every_steps, keep_last and async_save are required (a missing one is a ConfigError naming it); keep_steps
(milestones kept forever; left out: none) and keep_period (also keep every N-th step; left out or None: off)
are optional.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from mobilebert_jax import preemption, storage
from mobilebert_jax.config_schema import Schema
from mobilebert_jax.errors import CheckpointError, ConfigError

STATE, DATA, CONFIG = "state", "data", "config"
CORRUPT_PREFIX = "corrupt-"  # unreadable steps are moved to <directory>/corrupt-<step>-<UTC time>
SCHEMA = Schema(fields=("every_steps", "keep_last", "keep_steps", "keep_period", "async_save"),
                optional=dict(keep_steps=(), keep_period=None))  # no milestones, no periodic keeps


class StatefulIterator(Protocol):
    """A host-local batch iterator whose position can be saved and restored exactly: `get_state` gives an opaque
    JSON-able value or bytes (saved with each checkpoint), `set_state` its inverse."""

    def __next__(self) -> dict: ...

    def __iter__(self): ...

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


class Checkpointer:
    """Saves and restores (train state, data iterator state, config) under one directory."""

    def __init__(
        self,
        directory: str,
        *,
        every_steps: int,
        keep_last: int,
        keep_steps: Sequence[int] = (),
        keep_period: Optional[int] = None,
        async_save: bool = True,
        config: Any = None,
    ):
        read_config(dict(every_steps=every_steps, keep_last=keep_last, keep_steps=keep_steps,
                         keep_period=keep_period, async_save=async_save))
        self._config = _config_json(config)
        keep = [policies.LatestN(n=keep_last), policies.CustomSteps(steps=list(keep_steps))]
        if keep_period:
            keep.append(policies.EveryNSteps(interval_steps=keep_period))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policies.AnySavePolicy([
                policies.FixedIntervalPolicy(every_steps),
                policies.SpecificStepsPolicy(set(keep_steps)),
                # Multi-host: all hosts reach JAX's preemption sync point at the same step.
                policies.PreemptionCheckpointingPolicy(),
            ]),
            preservation_policy=policies.AnyPreservationPolicy(keep),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        # Each process writes its own data-iterator file and, on as many processes, restores it through orbax;
        # on another process count `_try_restore` reads the file `_data_state_file` picks.
        data_handler = ocp.JsonCheckpointHandler(
            filename=_data_filename(jax.process_index(), jax.process_count()),
            multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=None))
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        registry.add(STATE, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
        registry.add(STATE, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
        registry.add(DATA, ocp.args.JsonSave, data_handler)
        registry.add(DATA, ocp.args.JsonRestore, data_handler)
        registry.add(CONFIG, ocp.args.JsonSave, ocp.JsonCheckpointHandler(filename="config.json"))
        registry.add(CONFIG, ocp.args.JsonRestore, ocp.JsonCheckpointHandler(filename="config.json"))
        self.directory = storage.path(storage.absolute(directory))
        storage.forget_listings(self.directory)  # orbax lists the steps now: other processes may have saved since
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)
        self._saving: Optional[int] = None  # the step of the save that may still be in flight

    @classmethod
    def from_config(cls, directory: str, ckpt_cfg: Any, config: Any = None) -> "Checkpointer":
        """A Checkpointer from `config.checkpoint`; `config` (the whole experiment) is saved with each step."""
        return cls(directory, **read_config(ckpt_cfg), config=config)

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> Sequence[int]:
        return self._manager.all_steps()

    def save(self, step: int, state: Any, data_iterator: Optional[StatefulIterator] = None,
             force: bool = False) -> bool:
        """Starts saving if the policy says so (or `force`); returns whether it did.

        Call it every step on every process. With async saves it returns once
        the arrays are copied off the devices, so the state may be donated to
        the next step; the files are written in the background.
        """
        self.check()
        if step == self._manager.latest_step():
            return False  # e.g. the final save right after a periodic one
        if not force and not self._manager.should_save(step):
            return False
        items = {STATE: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items[DATA] = ocp.args.JsonSave(_encode_data_state(data_iterator.get_state()))
        if self._config is not None:
            items[CONFIG] = ocp.args.JsonSave(self._config)
        self._finish_previous()  # orbax would wait for it too; waiting here names the right step if it failed
        try:
            started = self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:  # orbax/tensorstore raise plain ValueError/OSError/Exception for storage failures
            raise self._save_error(step, e) from None
        self._saving = step
        return started

    def due(self, step: int) -> bool:
        """Whether the policy saves `step` (the trainer then makes sure that state is finite first)."""
        return step != self._manager.latest_step() and self._manager.should_save(step)

    def check(self) -> None:
        """Raises CheckpointError if an asynchronous save has failed; cheap, so call it every step."""
        if self._saving is None:
            return
        self._raise_as_save_error(self._manager.check_for_errors)
        if not self._manager.is_saving_in_progress():
            self._finish_previous()  # returns at once; re-raises an error of the finalize thread

    def _finish_previous(self) -> None:
        if self._saving is None:
            return
        self._raise_as_save_error(self._manager.wait_until_finished)
        self._saving = None

    def _raise_as_save_error(self, orbax_call: Callable[[], Any]) -> None:
        """Runs `orbax_call`; a failure of the save in flight becomes a CheckpointError naming its step."""
        try:
            orbax_call()
        except Exception as e:  # orbax/tensorstore raise plain ValueError/OSError/Exception for storage failures
            raise self._save_error(self._saving, e) from None

    def _save_error(self, step: int, error: Exception) -> CheckpointError:
        try:
            self._reload()  # from the directory: orbax's own list may already lack steps it meant to prune
        except Exception:  # the storage may fail to list too; the message then uses orbax's list
            pass
        kept = [s for s in self._manager.all_steps() if s != step]
        return CheckpointError(f"saving checkpoint step {step} in {self.directory} failed: {_first_line(error)}; "
                               f"the run stops here; earlier checkpoints are untouched "
                               f"(latest intact: {max(kept) if kept else 'none'})")

    def restore(self, abstract_state: Any, step: Optional[int] = None,
                data_iterator: Optional[StatefulIterator] = None) -> Any:
        """The train state at `step` (default: the newest readable one), placed as `abstract_state` says.

        `abstract_state` holds `jax.ShapeDtypeStruct`s with the shardings of
        the current mesh (`partitioning.with_shardings`), which may differ
        from the mesh the checkpoint was written on. `data_iterator`, if
        given, is rewound with `set_state`. Without `step`, an unreadable
        newest checkpoint is moved aside and the one before it is tried.
        """
        if step is not None:
            self._step_or_latest(step)
            restored, problems = self._try_restore(step, abstract_state, data_iterator)
            if problems:
                raise CheckpointError(f"checkpoint step {step} in {self.directory} cannot be read: "
                                      f"{'; '.join(problems)}")
            return restored
        moved = []
        while (step := self._manager.latest_step()) is not None:
            restored, problems = self._try_restore(step, abstract_state, data_iterator)
            if not problems:
                return restored
            moved.append(self._move_aside(step, problems))
            self._reload()
        if moved:
            raise CheckpointError(f"no intact checkpoint in {self.directory}: every step was unreadable and was moved "
                                  f"aside ({', '.join(moved)}); start over in a new workdir, or repair one")
        raise FileNotFoundError(f"no finished checkpoint in {self.directory}")

    def _try_restore(self, step: int, abstract_state: Any, data_iterator: Optional[StatefulIterator]
                     ) -> tuple[Any, list[str]]:
        """(state, []), or (None, what is wrong with `step`, as every process agrees)."""
        step_dir = self.directory / str(step)
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        data_file = _data_state_file(step_dir) if data_iterator is not None else None
        ours = data_file is not None and data_file.name == _data_filename(jax.process_index(), jax.process_count())
        if ours:
            items[DATA] = ocp.args.JsonRestore()
        # Files checked before any array is read, and agreed on, so no process enters orbax's restore barrier alone.
        problems = _all_processes(_inspect(step_dir, data_file))
        if problems:
            return None, problems
        problem = None
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # tensorstore and orbax raise ValueError, OSError or plain Exception
            problem = _storage_problem(e, step_dir)
            if problem is None and re.search(r"shape|tree|structure|dtype", str(e), re.I):
                # Readable, but another model's: the run's recorded config.json no longer describes its checkpoints.
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} holds another model than this config describes "
                    f"({_first_line(e)}); was {self.directory.parent / 'config.json'} edited? Restore the config the "
                    "run was started with, or use a new --workdir") from None
            if problem is None:
                raise  # not an unreadable file and not another model: a bug, not corruption
        # An array file cut short shows only while reading it; a process that fails there leaves the others
        # waiting in orbax's barrier until it times out (DEADLINE_EXCEEDED, counted as unreadable), then all agree.
        problems = _all_processes(problem)
        if problems:
            return None, problems
        if data_file is not None:
            saved = restored[DATA] if ours else json.loads(data_file.read_text())
            data_iterator.set_state(_decode_data_state(saved, str(data_file)))
        return restored[STATE], None

    def _reload(self) -> None:
        """orbax's list of steps, from the directory as it is now (not from this process's cached listing)."""
        storage.forget_listings(self.directory)
        self._manager.reload()

    def _move_aside(self, step: int, problems: list[str]) -> str:
        """Moves an unreadable step to corrupt-<step>-<time> (process 0; the others wait); returns the new path."""
        target = self.directory / f"{CORRUPT_PREFIX}{step}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        if jax.process_index() == 0:
            print(f"WARNING: checkpoint step {step} is unreadable: {'; '.join(problems)}; moving it to {target} "
                  "and trying the one before", file=sys.stderr, flush=True)
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint_moved_aside_{step}")
        return str(target)

    def wait(self) -> None:
        """Blocks until every started save is on disk (and old checkpoints are pruned); raises if one failed."""
        self._finish_previous()
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _step_or_latest(self, step: Optional[int]) -> int:
        if step is None:
            step = self._manager.latest_step()
            if step is None:
                raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
        elif step not in self._manager.all_steps():
            raise FileNotFoundError(f"no finished checkpoint for step {step} in {self.directory}; "
                                    f"available: {list(self._manager.all_steps())}")
        return step


def _inspect(step_dir: epath.Path, data_file: Optional[epath.Path]) -> Optional[str]:
    """The first missing or unparsable file of this process's part of `step_dir`, found without reading arrays."""
    required = [step_dir / STATE / "_METADATA"]
    if list((step_dir / STATE).glob("ocdbt.process_*")):
        required.append(step_dir / STATE / "manifest.ocdbt")  # the root of the OCDBT database
        required += [p / "manifest.ocdbt" for p in (step_dir / STATE).glob("ocdbt.process_*")]
    if data_file is not None:
        required.append(data_file)
    for path in required:
        if not path.exists():
            return f"{path} is missing"
        if path.name.endswith(".json") or path.name == "_METADATA":
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                return f"{path} is not valid JSON ({e})"
        elif path.stat().length == 0:
            return f"{path} is empty"
    return None


def _data_filename(process_index: int, process_count: int) -> str:
    return f"process_{process_index}-of-{process_count}.json"


def _data_state_file(step_dir: epath.Path) -> epath.Path:
    """The data-iterator file this process restores from.

    Its own when the checkpoint was written by as many processes as now run (a missing one is left to `_inspect`,
    which treats it as corruption). Written by another count, the files hold one global position, the same in
    each: any of them continues the same global stream here, and files that differ (an iterator whose state is
    per host) are refused, naming the count that wrote them.
    """
    if not (step_dir / DATA).exists():
        raise CheckpointError(f"checkpoint {step_dir} holds no data iterator state: it was written without a data "
                              "iterator")
    ours = step_dir / DATA / _data_filename(jax.process_index(), jax.process_count())
    written = sorted(p.name for p in (step_dir / DATA).glob("process_*-of-*.json"))
    counts = {int(m.group(1)) for m in (re.fullmatch(r"process_\d+-of-(\d+)\.json", n) for n in written) if m}
    if not counts or jax.process_count() in counts:
        return ours
    if len(counts) > 1:
        raise CheckpointError(f"checkpoint {step_dir}/{DATA}: data iterator states written by several process "
                              f"counts ({', '.join(written)}); the step directory was assembled from two runs")
    (count,) = counts
    files = [step_dir / DATA / _data_filename(i, count) for i in range(count)]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        return step_dir / DATA / missing[0]  # `_inspect` reports it
    states = set()
    for f in files:
        try:
            states.add(json.dumps(json.loads(f.read_text()), sort_keys=True))
        except (ValueError, UnicodeDecodeError):
            return f  # `_inspect` reports it
    if len(states) > 1:
        raise CheckpointError(f"checkpoint {step_dir}/{DATA}: the {count} processes that wrote it saved different "
                              f"data iterator states, a per-host position that {jax.process_count()} processes "
                              f"cannot continue; resume with {count} processes")
    return files[0]


# What tensorstore, orbax and json say when a file is missing, cut short or garbled (as opposed to a target that
# does not fit the checkpoint, which is a bug or a config change and must not move a checkpoint aside).
_STORAGE_CODES = re.compile(r"\b(OUT_OF_RANGE|NOT_FOUND|DATA_LOSS|FAILED_PRECONDITION|DEADLINE_EXCEEDED)\b|"
                            r"[Cc]hecksum|Error (reading|decoding)|[Nn]ot found|does not exist")


def _storage_problem(error: BaseException, step_dir: epath.Path) -> Optional[str]:
    """The innermost error in `error`'s chain that says a file is unreadable, as one line; None if none does.

    Tensorstore names the OCDBT key it could not read, not the file; a cut-short data file is found by the size it
    reports.
    """
    found = None
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError)) or \
                _STORAGE_CODES.search(str(error)):
            found = error
        error = error.__cause__ or error.__context__
    if found is None:
        return None
    message = _first_line(found)
    if size := re.search(r"value of size (\d+)", message):
        cut = [str(p) for p in (step_dir / STATE).glob("ocdbt.process_*/d/*") if p.stat().length == int(size[1])]
        if cut:
            message += f" (cut short: {', '.join(cut)})"
    return message


def _all_processes(problem: Optional[str]) -> list[str]:
    """Every process's problem with a step (empty if none had one), so that all processes decide alike."""
    if jax.process_count() == 1:
        return [problem] if problem else []
    encoded = (problem or "").encode()[:1000].ljust(1000, b" ")
    gathered = multihost_utils.process_allgather(np.frombuffer(encoded, np.uint8))
    return [f"process {i}: {bytes(row).decode(errors='replace').strip()}" for i, row in enumerate(gathered)
            if bytes(row).strip()]


def _first_line(error: BaseException) -> str:
    """An error's message without tensorstore's multi-kilobyte spec dumps."""
    text = re.split(r" \[tensorstore_spec|\n", str(error), maxsplit=1)[0].strip()
    return f"{type(error).__name__}: {text[:500]}"


def read_config(ckpt_cfg: Any) -> dict[str, Any]:
    """`config.checkpoint` as Checkpointer keyword arguments, every field checked (the optional ones filled in)."""
    merged = SCHEMA.read(ckpt_cfg, "config.checkpoint")
    for field in ("every_steps", "keep_last"):
        _check_positive(merged[field], f"config.checkpoint.{field}")
    if merged["keep_period"] is not None:
        _check_positive(merged["keep_period"], "config.checkpoint.keep_period")
    keep_steps = merged["keep_steps"]
    if isinstance(keep_steps, (str, bytes)) or not isinstance(keep_steps, (list, tuple)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in keep_steps):
        raise ConfigError(f"config.checkpoint.keep_steps={keep_steps!r}: must be a list of step numbers")
    if not isinstance(merged["async_save"], bool):
        raise ConfigError(f"config.checkpoint.async_save={merged['async_save']!r}: must be true or false")
    return merged


def _check_positive(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}={value!r}: must be a positive integer")


def _config_json(config: Any) -> Optional[dict]:
    if config is None:
        return None
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json_best_effort())
    if isinstance(config, Mapping):
        return json.loads(json.dumps(config, default=repr))
    raise TypeError(f"config must be a ConfigDict or a mapping, got {type(config).__name__}")


# Iterator states are either JSON-able values (grain's DatasetIterator) or
# bytes (grain's DataLoaderIterator); bytes travel base64-encoded.
def _encode_data_state(state: Any) -> dict:
    if isinstance(state, bytes):
        return {"encoding": "base64", "state": base64.b64encode(state).decode("ascii")}
    return {"encoding": "json", "state": state}


def _decode_data_state(saved: Any, where: str) -> Any:
    if not isinstance(saved, dict) or saved.get("encoding") not in ("json", "base64"):
        raise CheckpointError(f"{where}: not a data-iterator state written by this trainer")
    if saved["encoding"] == "base64":
        return base64.b64decode(saved["state"])
    return saved["state"]


class PreemptionGuard:
    """Turns SIGTERM into "stop at the next step boundary".

    Single process: `preemption.handle` sets `preemption.STOP`, a flag
    shared with any handler installed earlier (`main` installs it before
    importing JAX), so a SIGTERM during set-up is not lost. Multi-host: each
    host gets SIGTERM at a different moment, so a local flag would stop them
    at different steps and hang the next collective; there JAX's preemption
    service (on after `jax.distributed.initialize()`) catches the signal and
    `reached_preemption_sync_point(step)` turns true on every host at the
    same step. No Python handler is installed then, so as not to replace the
    service's own.

        with PreemptionGuard() as guard:
            for step in ...:
                state = train_step(state, batch)
                if guard.should_stop(step):   # every host, every step
                    ckpt.save(step, state, data_iterator, force=True)
                    ckpt.wait()
                    break

    Closing the outermost guard clears the flag; a guard nested in one that
    is still open (or in `main`'s handler) leaves it set, so that a SIGTERM
    also stops the stages that would follow.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM,)):
        self._multihost = jax.process_count() > 1
        self._previous: dict[int, Any] = {}
        if not self._multihost:
            self._previous = preemption.install(tuple(signals))

    def should_stop(self, step: int) -> bool:
        if not self._multihost:
            return preemption.STOP.is_set()
        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError as e:
            raise RuntimeError("multi-host preemption needs jax.distributed.initialize() with the preemption "
                               f"service enabled (jax_enable_preemption_service): {e}") from None

    def close(self) -> None:
        outermost = bool(self._previous) and all(h is not preemption.handle for h in self._previous.values())
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if outermost:
            preemption.STOP.clear()
            preemption.RECEIVED.clear()

    def __enter__(self) -> "PreemptionGuard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
