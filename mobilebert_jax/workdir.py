"""One run per workdir: a lock with a heartbeat, and a refusal to resume under a different config.

The lock is the key `LOCK` in the workdir, created with a conditional write
through tensorstore's key-value store, which makes "create if absent" and
"replace if unchanged" atomic on local disks (the `file` driver's lock
files) and on gs:// (`ifGenerationMatch` preconditions); etils.epath has no
such operation. It holds the holder's host, pid, start time and heartbeat.
The holder rewrites it every `heartbeat_seconds` (only if it is still the
version it wrote last, so a takeover is noticed: `check` then raises).

A lock is stale, and taken over with a warning, when its heartbeat is older
than `stale_after_seconds` (a crashed run on another host), or at once when
its holder is a process on this host that no longer exists. Multi-host runs:
process 0 takes the lock for all; the others learn the outcome from it.

`check_config_unchanged` compares the resolved config with the one the
workdir recorded (`config.json`, written by `experiment_config.save_resolved`);
only the fields in RESUMABLE_FIELDS may differ. A field the recorded config
lacks (added to the library since the run started) is taken at its default:
a model field's (MobileBertConfig), a section field's (its `Schema.optional`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import sys
import threading
import time
import uuid
from typing import Any, Mapping, Optional

import jax
import ml_collections
import numpy as np
import tensorstore as ts
from etils import epath

from mobilebert_jax import storage
from mobilebert_jax.checkpointing import CheckpointError
from mobilebert_jax.config import MobileBertConfig
from mobilebert_jax.config_schema import NO_DEFAULT, Schema
from mobilebert_jax.errors import ConfigError

LOCK_KEY = "LOCK"
HEARTBEAT_SECONDS = 60.0
STALE_AFTER_SECONDS = 600.0  # ten missed heartbeats: a preempted VM's run is dead long before that

# Fields whose change does not change what is computed, or only extends it: resuming with other values is allowed.
RESUMABLE_FIELDS = (
    "total_steps",  # train longer (or stop earlier)
    "log_every", "eval", "profile",  # what is reported
    "checkpoint",  # how often and how many are kept
    "mesh",  # checkpoints restore onto any mesh
    "microbatches",  # the same global batch, accumulated in fewer or more pieces (memory vs. speed)
    "data.verify_checksums",  # how thoroughly the prepared shards are checked, not what they hold
)

# Config sections that hold a MobileBertConfig's fields, and those fields' defaults.
MODEL_SECTIONS = ("model", "teacher_model")
_MODEL_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MobileBertConfig)}


class WorkdirInUseError(CheckpointError):
    """Another live run holds the workdir's lock."""


class WorkdirLock:
    """Holds `workdir`'s lock while open: `with WorkdirLock(workdir) as lock: ... lock.check() ...`."""

    def __init__(self, workdir: str, *, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 stale_after_seconds: float = STALE_AFTER_SECONDS):
        self.workdir = str(workdir)
        self.heartbeat_seconds, self.stale_after_seconds = heartbeat_seconds, stale_after_seconds
        self._record = {"host": socket.gethostname(), "pid": os.getpid(), "run": uuid.uuid4().hex,
                        "started": time.time(), "command": " ".join(sys.argv)}
        self._generation: Optional[bytes] = None
        self._lost: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._kv = None

    @property
    def path(self) -> str:
        return f"{self.workdir.rstrip('/')}/{LOCK_KEY}"

    def acquire(self) -> None:
        error = None
        if jax.process_index() == 0:
            try:
                self._acquire()
            except WorkdirInUseError as e:
                error = e
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
            if not ok and error is None:
                raise WorkdirInUseError(f"{self.workdir} is in use by another run (process 0 could not lock "
                                        f"{self.path}; its log names the holder)")
        if error is not None:
            raise error

    def _acquire(self) -> None:
        self._kv = ts.KvStore.open(_kvstore_url(self.workdir)).result()
        for _ in range(3):  # a lost race re-reads the winner's record and names it
            current = self._kv.read(LOCK_KEY).result()
            if current.state == "value":
                holder = _parse(current.value)
                stale = self._stale_reason(holder)
                if stale is None:
                    raise WorkdirInUseError(f"{self.workdir} is in use by {_describe(holder)}; two runs on one "
                                            f"workdir would mix their checkpoints. Wait for it to finish, stop it, or "
                                            f"use another --workdir. If that run is dead, its lock ({self.path}) "
                                            f"expires {self.stale_after_seconds:.0f}s after its last heartbeat")
                print(f"WARNING: taking over the lock {self.path} from {_describe(holder)}: {stale}",
                      file=sys.stderr, flush=True)
            written = self._write(current.stamp.generation)
            if written:
                self._generation = written
                self._thread = threading.Thread(target=self._heartbeat, name="workdir-lock-heartbeat", daemon=True)
                self._thread.start()
                return
        raise WorkdirInUseError(f"{self.workdir}: could not take the lock {self.path}; runs keep racing for it")

    def _stale_reason(self, holder: dict) -> Optional[str]:
        age = time.time() - float(holder.get("heartbeat", 0))
        if age > self.stale_after_seconds:
            return f"its last heartbeat was {age:.0f}s ago (stale after {self.stale_after_seconds:.0f}s)"
        if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
            return f"its process {holder.get('pid')} on this host no longer exists"
        return None

    def _write(self, if_equal: bytes) -> Optional[bytes]:
        """Writes our record if the lock is still at generation `if_equal`; the new generation, or None."""
        record = dict(self._record, heartbeat=time.time())
        stamp = self._kv.write(LOCK_KEY, json.dumps(record).encode(), if_equal=if_equal).result()
        return stamp.generation or None  # an empty generation: the condition failed, nothing was written

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                written = self._write(self._generation)
            except Exception as e:  # a storage hiccup: keep the lock, try again at the next beat
                print(f"WARNING: could not refresh the lock {self.path}: {e}", file=sys.stderr, flush=True)
                continue
            if written is None:
                holder = _parse(self._kv.read(LOCK_KEY).result().value)
                self._lost = f"the lock {self.path} was taken over by {_describe(holder)}"
                return
            self._generation = written

    def check(self) -> None:
        """Raises if another run has taken the lock over (this run missed heartbeats for too long)."""
        if self._lost:
            raise WorkdirInUseError(f"{self._lost}; this run stops so as not to write into its checkpoints")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._generation is not None and not self._lost:
            self._kv.write(LOCK_KEY, None, if_equal=self._generation).result()  # only if still ours
        self._generation = None

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _kvstore_url(workdir: str) -> str:
    """tensorstore's URL of the workdir: itself for gs://, a file:// URL for a local path."""
    absolute = storage.absolute(workdir).rstrip("/") + "/"
    return absolute if storage.is_remote(workdir) else "file://" + absolute


def _parse(value: bytes) -> dict:
    try:
        record = json.loads(value)
    except ValueError:
        return {}  # unreadable: no heartbeat, so stale
    return record if isinstance(record, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "an unreadable lock record"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("started", 0))))
    beat = time.time() - float(holder.get("heartbeat", 0))
    return (f"host {holder.get('host')} pid {holder.get('pid')} (started {started}, last heartbeat {beat:.0f}s ago, "
            f"command: {holder.get('command', '?')})")


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # someone else's process, or no pid recorded: rely on the heartbeat
    return True


def check_config_unchanged(config: ml_collections.ConfigDict, workdir: str,
                           sections: Mapping[str, Schema] = {}) -> None:
    """Raises ConfigError naming each field that differs from the workdir's recorded config.json.

    `sections` are the schemas of the config sections the run reads (by name: "optimizer", "data"); a field of
    theirs that the recorded config lacks counts as recorded at its default.
    """
    from mobilebert_jax import experiment_config

    recorded_path = epath.Path(workdir) / "config.json"
    recorded_config = experiment_config.read_recorded(workdir)
    if recorded_config is None:
        return
    recorded = recorded_config.to_dict()
    now = json.loads(config.to_json_best_effort())
    before, after = _flatten(recorded), _flatten(now)

    def recorded_value(key: str) -> Any:
        return before[key] if key in before else _added_field_default(key, sections)

    changed = [k for k in sorted(set(before) | set(after))
               if recorded_value(k) != after.get(k, "<absent>") and not _resumable(k)]
    if changed:
        details = "; ".join(f"config.{k}: {recorded_value(k)!r} recorded, now "
                            f"{after.get(k, '<absent>')!r}"
                            for k in changed[:10])
        more = f" (and {len(changed) - 10} more)" if len(changed) > 10 else ""
        raise ConfigError(f"{workdir} was started with another config, and resuming it with this one would mix "
                          f"two runs: {details}{more}. Use a new --workdir, or the recorded values ({recorded_path}). "
                          f"Fields that may change on resume: {', '.join(RESUMABLE_FIELDS)}")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for k, v in tree.items():
            flat.update(_flatten(v, f"{prefix}{k}."))
        return flat or {prefix[:-1]: {}}
    # Non-JSON values are written as a description; addresses of objects change from run to run.
    return {prefix[:-1]: re.sub(r" at 0x[0-9a-f]+", "", tree) if isinstance(tree, str) else tree}


def _added_field_default(key: str, sections: Mapping[str, Schema]) -> Any:
    """What a workdir recorded before a field existed meant: that field's default (else "<absent>").

    A model option added later (`scan_layers`, `explicit_weight_gradients`) or a section's optional field
    (`config.optimizer.mu_dtype`, `config.data.whole_word_masking`) is absent from the config.json of a run
    started before it; that run computed exactly what the default computes, so resuming it is no change.
    """
    section, _, field = key.partition(".")
    if section in MODEL_SECTIONS and field in _MODEL_FIELD_DEFAULTS:
        return _MODEL_FIELD_DEFAULTS[field]
    if section in sections and field:
        default = sections[section].default(tuple(field.split(".")))
        if default is not NO_DEFAULT:
            return json.loads(json.dumps(default))  # as config.json holds it: tuples as lists
    return "<absent>"


def _resumable(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS)
