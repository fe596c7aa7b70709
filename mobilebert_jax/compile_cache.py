"""JAX's persistent compilation cache in the workdir: a restarted run loads its compiled programs.

`use(workdir)` points `jax_compilation_cache_dir` at `<workdir>/compile_cache`
(local or gs://: JAX reads and writes a non-local cache directory through
etils.epath, the same gcsfs backend as `storage`), unless the cache directory was
already chosen by the user (`JAX_COMPILATION_CACHE_DIR` or
`jax.config.update`) or the cache is switched off (`jax_enable_compilation_cache`),
which it then leaves alone. Only process 0 writes entries (JAX's rule), every
process reads them, so one slice's restart and a restart on a fresh slice both
load instead of compiling.

`Counts` tallies, from JAX's monitoring events, how many programs a run loaded
from the cache and how long getting its executables took (compiling or loading).
"""

from __future__ import annotations

import dataclasses
import threading

import jax
from jax.experimental.compilation_cache import compilation_cache

from mobilebert_jax import storage

DIRNAME = "compile_cache"
# JAX's default writes only programs that took >= 1 s to compile. A CPU run's steps take a few seconds, its
# initializer, evaluation step and checkpoint helpers well under one; those below 0.1 s (single array ops) cost
# more as a file (on gs:// a round trip each) than they take to compile again.
MIN_COMPILE_TIME_SECS = 0.1
# No size floor: JAX otherwise lets a filesystem-specific minimum apply, which skips small CPU executables.
MIN_ENTRY_SIZE_BYTES = -1

_lock = threading.Lock()
_ours: str | None = None  # the directory `use` set last; any other value was set by the user
_counts = {"hits": 0, "stored": 0, "compile_seconds": 0.0}
_listening = False


def use(workdir: str) -> str | None:
    """Caches compiled programs in `<workdir>/compile_cache`; returns the directory in use (None: cache off)."""
    global _ours
    _listen()
    if not jax.config.jax_enable_compilation_cache:
        return None
    current = jax.config.jax_compilation_cache_dir
    if current and current != _ours:
        return current  # chosen by the user: theirs to keep
    wanted = storage.absolute(str(storage.path(workdir, DIRNAME)))
    if wanted != current:
        jax.config.update("jax_compilation_cache_dir", wanted)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", MIN_ENTRY_SIZE_BYTES)
        # JAX opens its cache once per process; a second stage in the same process (the pipeline) has its own.
        compilation_cache.reset_cache()
        _ours = wanted
    return wanted


@dataclasses.dataclass(frozen=True)
class Counts:
    """Programs loaded from the persistent cache, written to it (JAX counts a write as its miss), and seconds spent
    getting executables (compiling or loading, every program, cached or not)."""
    hits: int
    stored: int
    compile_seconds: float

    def since(self, start: "Counts") -> "Counts":
        return Counts(self.hits - start.hits, self.stored - start.stored,
                      self.compile_seconds - start.compile_seconds)

    def describe(self) -> str:
        return (f"{self.hits} programs loaded from the compilation cache, {self.stored} compiled and stored; "
                f"{self.compile_seconds:.1f} s getting executables")


def counts() -> Counts:
    """The process's totals so far; `counts().since(start)` is one run's share."""
    with _lock:
        return Counts(**_counts)


def _listen() -> None:
    global _listening
    with _lock:
        if _listening:
            return
        _listening = True
    jax.monitoring.register_event_listener(_on_event)
    jax.monitoring.register_event_duration_secs_listener(_on_duration)


def _on_event(event: str, **_) -> None:
    key = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "stored"}.get(event)
    if key:
        with _lock:
            _counts[key] += 1


def _on_duration(event: str, seconds: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":  # a compile or a cache load, whichever happened
        with _lock:
            _counts["compile_seconds"] += seconds
