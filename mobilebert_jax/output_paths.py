"""Where a command may write: never into a training workdir, never over files it did not write itself.

A command that writes a directory (convert's `--output`) leaves a `.written_by` file naming itself there, so that
running it again may replace its own output; a directory holding anything else, and an existing output file, are
refused unless the command line says `--overwrite`. A training workdir (its config.json with checkpoints/,
metrics.jsonl or command.txt) and anything under its checkpoints/ are refused even then: writing there would
leave a run that can no longer be resumed or evaluated.
"""

from __future__ import annotations

import os
from typing import Sequence

from mobilebert_jax import storage
from mobilebert_jax.errors import ConfigError

MARKER = ".written_by"
_RUN_FILES = ("checkpoints", "metrics.jsonl", "command.txt")


def is_training_workdir(p: storage.PathLike) -> bool:
    d = storage.path(p)
    return d.is_dir() and (d / "config.json").is_file() and any((d / name).exists() for name in _RUN_FILES)


def _inside_a_run(p: storage.PathLike) -> str | None:
    """The training workdir `p` is, or whose checkpoints/ it is under; None otherwise."""
    d = storage.path(storage.absolute(p))
    if is_training_workdir(d):
        return os.fspath(d)
    for parent in d.parents:
        if parent.name == "checkpoints" and is_training_workdir(parent.parent):
            return os.fspath(parent.parent)
    return None


def check_directory(p: storage.PathLike, flag: str, command: str, overwrite: bool = False, *,
                    has_overwrite_flag: bool = True) -> None:
    """Raises ConfigError naming `flag` and what is there unless `command` may write into `p`; writes nothing."""
    run = _inside_a_run(p)
    if run is not None:
        raise ConfigError(f"{flag}={os.fspath(p)!r} is inside the training workdir {run}: writing there would "
                          "overwrite the run's files (it could no longer be resumed or evaluated); choose another "
                          "directory")
    d = storage.path(p)
    if d.exists() and not d.is_dir():
        raise ConfigError(f"{flag}={os.fspath(p)!r} is a file; expected a directory to write")
    if d.is_dir() and not overwrite:
        entries = sorted(e.name for e in d.iterdir())
        ours = MARKER in entries and (d / MARKER).read_text().strip() == command
        if entries and not ours:
            shown = ", ".join(entries[:3]) + (f", ... ({len(entries)} entries)" if len(entries) > 3 else "")
            raise ConfigError(f"{flag}={os.fspath(p)!r} already holds files this command did not write ({shown}); "
                              "choose a new or empty directory"
                              + (", or pass --overwrite to write over them" if has_overwrite_flag else ""))


def mark_directory(p: storage.PathLike, command: str) -> None:
    """Records that `command` writes `p` (a later run of it may write there again)."""
    d = storage.path(p)
    d.mkdir(parents=True, exist_ok=True)
    (d / MARKER).write_text(command + "\n")


def claim_files(paths: Sequence[storage.PathLike], flag: str, overwrite: bool = False) -> None:
    """Refuses (ConfigError naming `flag`) to write `paths` over existing files, or into a training workdir."""
    for p in paths:
        run = _inside_a_run(storage.path(p).parent)
        if run is not None:
            raise ConfigError(f"{flag}: {os.fspath(p)!r} would be written into the training workdir {run}; "
                              "choose another place")
    existing = [os.fspath(p) for p in paths if storage.path(p).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{flag}: {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; choose "
                          "another name, or pass --overwrite to replace "
                          + ("it" if len(existing) == 1 else "them"))
