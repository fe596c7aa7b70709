"""Checkpoints: an Orbax CheckpointManager configured for this trainer, and a SIGTERM guard.

A checkpoint step directory holds three items:
  state   the train-state pytree (params, optimizer state, step, stage, ...),
          written by every process for the shards it owns;
  data    the data iterator's state (`get_state()`), one JSON file per
          process, since every host reads its own part of the data;
  config  the resolved experiment config as JSON, written by process 0.

Orbax writes each step into `<step>.orbax-checkpoint-tmp-<time>` and renames
it to `<step>` only after every item is finished (on object stores that
cannot rename atomically it writes `commit_success.txt` last instead), so a
checkpoint interrupted by a crash is never listed or restored; leftover
temporary directories are deleted when the next Checkpointer opens the
directory.

Config fields read here (`config.checkpoint`): every_steps, keep_last,
keep_steps (milestones kept forever), keep_period (also keep every N-th
step; optional), async_save.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from mobilebert_jax.config import ConfigError

STATE, DATA, CONFIG = "state", "data", "config"
CHECKPOINT_FIELDS = ("every_steps", "keep_last", "keep_steps", "keep_period", "async_save")


class StatefulIterator(Protocol):
    """What the data loader provides: an opaque JSON-able dict or bytes, and its inverse."""

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        every_steps=1000,
        keep_last=3,
        keep_steps=(),  # milestones, e.g. the end of each distillation stage
        keep_period=ml_collections.config_dict.placeholder(int),
        async_save=True,
    ))


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
        # Each process writes (and later reads) only its own data-iterator file.
        data_handler = ocp.JsonCheckpointHandler(
            filename=f"process_{jax.process_index()}-of-{jax.process_count()}.json",
            multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=None))
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        registry.add(STATE, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
        registry.add(STATE, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
        registry.add(DATA, ocp.args.JsonSave, data_handler)
        registry.add(DATA, ocp.args.JsonRestore, data_handler)
        registry.add(CONFIG, ocp.args.JsonSave, ocp.JsonCheckpointHandler(filename="config.json"))
        registry.add(CONFIG, ocp.args.JsonRestore, ocp.JsonCheckpointHandler(filename="config.json"))
        self.directory = epath.Path(directory).absolute() if "://" not in str(directory) else epath.Path(directory)
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)

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
        if step == self._manager.latest_step():
            return False  # e.g. the final save right after a periodic one
        if not force and not self._manager.should_save(step):
            return False
        items = {STATE: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items[DATA] = ocp.args.JsonSave(_encode_data_state(data_iterator.get_state()))
        if self._config is not None:
            items[CONFIG] = ocp.args.JsonSave(self._config)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, abstract_state: Any, step: Optional[int] = None,
                data_iterator: Optional[StatefulIterator] = None) -> Any:
        """The train state at `step` (default: latest), placed as `abstract_state` says.

        `abstract_state` holds `jax.ShapeDtypeStruct`s with the shardings of
        the current mesh (`partitioning.with_shardings`), which may differ
        from the mesh the checkpoint was written on. `data_iterator`, if
        given, is rewound with `set_state`.
        """
        step = self._step_or_latest(step)
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items[DATA] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except (FileNotFoundError, KeyError) as e:  # orbax: KeyError for a missing item
            raise FileNotFoundError(f"checkpoint {self.directory}/{step} lacks what was asked for ({e}); the data "
                                    f"iterator state is per process: was it written by {jax.process_count()} "
                                    f"process(es), and with a data iterator?") from None
        if data_iterator is not None:
            data_iterator.set_state(_decode_data_state(restored[DATA], f"{self.directory}/{step}/{DATA}"))
        return restored[STATE]

    def restore_config(self, step: Optional[int] = None) -> dict:
        """The experiment config saved with `step` (default: latest), as a plain dict."""
        step = self._step_or_latest(step)
        return self._manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]

    def wait(self) -> None:
        """Blocks until every started save is on disk (and old checkpoints are pruned)."""
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


def read_config(ckpt_cfg: Any) -> dict[str, Any]:
    """`config.checkpoint` as Checkpointer keyword arguments, defaults filled in and every field checked."""
    if not isinstance(ckpt_cfg, (Mapping, ml_collections.ConfigDict)):
        raise ConfigError(f"config.checkpoint must be a ConfigDict or dict, got {type(ckpt_cfg).__name__}")
    fields = dict(ckpt_cfg.items())
    unknown = sorted(set(fields) - set(CHECKPOINT_FIELDS))
    if unknown:
        raise ConfigError(f"config.checkpoint has unknown field(s) {unknown}; known: {list(CHECKPOINT_FIELDS)}")
    merged = {**default_config().to_dict(), **fields}
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
        raise ValueError(f"{where}: not a data-iterator state written by this trainer")
    if saved["encoding"] == "base64":
        return base64.b64decode(saved["state"])
    return saved["state"]


class PreemptionGuard:
    """Turns SIGTERM into "stop at the next step boundary".

    Single process: a signal handler sets a flag. Multi-host: each host gets
    SIGTERM at a different moment, so a local flag would stop them at
    different steps and hang the next collective; there JAX's preemption
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
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM,)):
        self._event = threading.Event()
        self._multihost = jax.process_count() > 1
        self._previous: dict[int, Any] = {}
        if not self._multihost:
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        logging.warning("received signal %d: will save and stop after the current step", signum)
        self._event.set()

    def should_stop(self, step: int) -> bool:
        if not self._multihost:
            return self._event.is_set()
        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError as e:
            raise RuntimeError("multi-host preemption needs jax.distributed.initialize() with the preemption "
                               f"service enabled (jax_enable_preemption_service): {e}") from None

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> "PreemptionGuard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
