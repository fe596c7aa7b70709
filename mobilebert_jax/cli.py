"""How every command-line tool of this project starts, prints its help, logs and fails.

    if __name__ == "__main__":
        cli.run_absl(main)                    # absl tools: main(argv)
        sys.exit(cli.run_argparse(main))      # argparse tools: main(argv) -> exit code, parser = cli.ArgumentParser

- `--help` (and `-h`, `--helpshort`, `--helpfull`) prints the tool's docstring and every flag it defines, exits 0
  and does nothing else (absl's own --help exits 1 and omits flags defined outside the main module).
- The project's error types (errors.py) become one line `FATAL <kind> error: ...` on stderr and exit code 1;
  anything else is a bug and keeps its traceback.
- `log_libraries_to(workdir)`: library INFO records (absl, orbax, jax, grain) go to `<workdir>/log.txt`, so the
  terminal shows the project's own lines; `-v 0` (`--verbosity=0`; higher is more) prints them again.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import difflib
import functools
import logging
import os
import sys
import tempfile
import threading
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence

from absl import app, flags
from absl import logging as absl_logging

from mobilebert_jax import errors, preemption, storage

# `logging.info(..., extra=FILE_ONLY)`: a record for the log file only, never echoed on the terminal (a line the
# terminal already shows another way, as a progress bar).
FILE_ONLY = {"file_only": True}
HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "--helpfull", "-helpfull", "-?")
LOG_FILE = "log.txt"
LOGGING_HELP = ("Logging: library INFO records (absl, orbax, jax, grain) go to <workdir>/log.txt; -v 0 (--verbosity=0, "
                "higher for more) prints them here too.\n--helpfull also lists absl's own flags.")


def fatal(kind: str, message: Any) -> NoReturn:
    """Prints `FATAL <kind> error: <message>` as one line (newlines in the message become spaces), exits 1."""
    one_line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"FATAL {kind} error: {one_line}", file=sys.stderr, flush=True)
    sys.exit(1)


@contextlib.contextmanager
def errors_are_fatal() -> Iterator[None]:
    """Turns the project's error types raised inside into `FATAL <kind> error: ...` and exit 1.

    Ctrl-C outside the training loop (which saves first, preemption.py) is one line and exit 130, no traceback:
    every file the project writes is written whole or not at all, so a rerun continues or starts again.
    """
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted: stopped before the end; rerun the same command to continue", file=sys.stderr,
              flush=True)
        sys.exit(preemption.INTERRUPTED_EXIT)
    except Exception as e:  # noqa: BLE001 -- re-raised unless it is an expected input error
        kind = errors.kind_of(e)
        if kind is None:
            raise
        fatal(kind, e)
    finally:
        # Here, not at interpreter exit: by then gcsfs has closed its HTTP session ("Session is closed").
        for log in list(_REMOTE_LOGS):
            log.finish()


def fatal_on_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with errors_are_fatal():
            return fn(*args, **kwargs)
    return wrapped


def help_text(doc: Optional[str], full: bool = False) -> str:
    """The docstring, then the flags of this project's modules (all flags with `full`), then how logging works."""
    parts = [(doc or "").strip()]
    if full:
        parts.append(flags.FLAGS.get_help())
    else:
        by_module = flags.FLAGS.flags_by_module_dict()
        # absl files a script's (and a `-m` module's) flags under sys.argv[0], the others under the module's name.
        ours = [m for m in by_module if m in ("__main__", sys.argv[0]) or "mobilebert_jax" in m]
        for module in sorted(ours):
            parts.append(flags.FLAGS.module_help(module))
    parts.append(LOGGING_HELP)
    return "\n\n".join(p for p in parts if p) + "\n"


def run_absl(main: Callable[[Any], None], *, flags_parser: Optional[Callable] = None, doc: Optional[str] = None,
             argv: Optional[Sequence[str]] = None) -> None:
    """`absl.app.run(main)` with the project's --help and FATAL handling."""
    argv = list(sys.argv if argv is None else argv)
    asked = [a for a in argv[1:] if a in HELP_FLAGS]
    if asked:
        if doc is None:
            doc = sys.modules[main.__module__].__doc__
        sys.stdout.write(help_text(doc, full=any("full" in a for a in asked)))
        sys.exit(0)
    app.run(fatal_on_errors(main), argv=argv, flags_parser=_usage_errors_are_fatal(flags_parser or flags.FLAGS))


def _usage_errors_are_fatal(parse: Callable) -> Callable:
    """A flags parser whose flag errors (an unknown or mistyped flag, a bad value) are `FATAL usage error: ...`.

    absl's message names the flag and, for an unknown one, the closest real ones ("Did you mean: workdir ?");
    absl itself would print `FATAL Flags parsing error`, and a project parser would let the error through as a
    traceback.
    """
    @functools.wraps(parse)
    def parse_or_fail(argv):
        with errors_are_fatal():
            try:
                return parse(argv)
            except flags.Error as e:
                fatal("usage", f"{e} (--help lists the flags)")
    return parse_or_fail


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors follow the FATAL convention (exit 1) and whose help is the module docstring."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        if message.startswith("unrecognized arguments:"):
            message += self._closest(message.split(":", 1)[1].split())
        fatal("usage", message)

    def _closest(self, unknown: Sequence[str]) -> str:
        """"; did you mean --output?" for each unknown flag with a close real one (argparse names none)."""
        known = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        hints = []
        for arg in unknown:
            flag = arg.split("=", 1)[0]
            close = difflib.get_close_matches(flag, known, n=1)
            if flag.startswith("-") and close:
                hints.append(f"{flag}: did you mean {close[0]}?")
        return ("; " + "; ".join(hints)) if hints else ""


def run_argparse(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """`main(argv)` (argparse tools) with the FATAL handling; its exit code."""
    with errors_are_fatal():
        return main(argv)


def verbosity_asked() -> bool:
    """Whether the command line asked absl to print log records (-v/--verbosity, --logtostderr, ...)."""
    f = flags.FLAGS
    return f.is_parsed() and (f["verbosity"].present or f.logtostderr or f.alsologtostderr)


def log_libraries_to(workdir: str) -> Optional[str]:
    """Sends absl/Python log records to `<workdir>/log.txt` instead of the terminal; returns that path.

    Warnings and errors still reach stderr (absl's --stderrthreshold, here `warning` unless given). None when the
    command line asked for the records on the terminal (-v/--verbosity, --logtostderr, --alsologtostderr). A
    Cloud Storage object cannot be appended to: a gs:// workdir's log is written line by line to a scratch file of
    this host and copied whole into the workdir's log.txt (after what it held) every `REMOTE_LOG_EVERY_S` and at
    exit (`_RemoteLog`).
    """
    if verbosity_asked():
        return None
    path = os.fspath(storage.path(workdir) / LOG_FILE)
    handler = absl_logging.get_absl_handler().python_handler
    old = handler.stream
    handler.stream = _RemoteLog(path) if storage.is_remote(path) else _OpenedOnFirstWrite(path)
    if old not in (sys.stderr, sys.stdout, None):
        old.close()
    if flags.FLAGS.is_parsed() and not flags.FLAGS["stderrthreshold"].present:
        flags.FLAGS.stderrthreshold = "warning"
    if not any(isinstance(h, _ProjectInfo) for h in logging.getLogger().handlers):
        logging.getLogger().addHandler(_ProjectInfo())
    return path


class _OpenedOnFirstWrite:
    """An append-mode, line-buffered file that exists only once something is logged.

    A command refused for bad input before any record must leave no workdir behind.
    """

    def __init__(self, path: str):
        self.path = path
        self._file = None

    def write(self, text: str) -> int:
        if self._file is None:
            storage.makedirs(os.path.dirname(self.path) or ".")
            self._file = storage.open_append(self.path)  # line-buffered: a crash loses no record
        return self._file.write(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


REMOTE_LOG_EVERY_S = 30.0


class _RemoteLog:
    """A remote log: lines go to a scratch file at once; a thread copies the file into the object every `every_s`,
    and `close` (at exit) once more, then removes the file.

    The object is `path` for process 0 (and a single process), `log.process-N.txt` beside it for process N of a
    multi-process job, so the hosts of a pod do not overwrite each other; what it held before this process is kept
    in front. The name is chosen at the first upload, `every_s` after the first record, by when the distributed
    runtime is initialized (records come before it). Uploads never run under the logging handler's lock (neither
    in `flush` nor in `close`): gcsfs logs from its own I/O thread, which would wait on that lock while the upload
    waited on it. A host killed
    outright loses at most the last `every_s` from the object; the scratch file still has them.
    """

    def __init__(self, path: str, every_s: float = REMOTE_LOG_EVERY_S):
        self.path = path
        self._every = every_s
        self._file = None
        self._target = None
        self._before = ""
        self._stop = threading.Event()
        self._thread = None
        self._uploading = threading.Lock()

    def write(self, text: str) -> int:
        if self._file is None:
            self._file = tempfile.NamedTemporaryFile("w", encoding="utf-8", buffering=1, prefix="log-",
                                                     suffix=".txt", dir=storage.scratch_dir(), delete=False)
            self._thread = threading.Thread(target=self._upload_every, name="remote-log", daemon=True)
            self._thread.start()
            _REMOTE_LOGS.append(self)
            atexit.register(self.finish)  # for a caller outside errors_are_fatal
        if self._file.closed:
            return 0  # a record after the final upload (at interpreter exit)
        return self._file.write(text)

    def flush(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.flush()

    def _upload_every(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.upload()
            except OSError as e:  # the next upload retries; the scratch file keeps every line meanwhile
                print(f"warning: could not copy the log to {self.path}: {e}", file=sys.stderr)

    def upload(self) -> None:
        """Copies the scratch file into the object now."""
        with self._uploading:
            if self._target is None:
                import jax  # already imported by anything that logs; here only to read the process index
                index = jax.process_index() if jax.distributed.is_initialized() else 0
                target = storage.path(self.path)
                self._target = target if index == 0 else target.with_name(f"log.process-{index}.txt")
                self._before = self._target.read_text() if self._target.exists() else ""
            with storage.open(self._file.name) as f:
                self._target.write_text(self._before + f.read())

    def close(self) -> None:
        """What a logging handler calls, holding its lock (also at exit, from `logging.shutdown`): no upload here,
        since gcsfs's I/O thread logs and would wait on that lock. `finish` (at exit) uploads."""
        self.flush()

    def finish(self) -> None:
        """The last upload, then the scratch file is removed (kept, and named, when the upload fails)."""
        if self._file is None or self._file.closed:
            return
        self._stop.set()
        self._thread.join()
        self._file.flush()
        self._file.close()
        if self in _REMOTE_LOGS:
            _REMOTE_LOGS.remove(self)
        try:
            self.upload()
        except (OSError, RuntimeError) as e:  # RuntimeError: an HTTP session already closed at exit
            print(f"warning: could not copy the log to {self.path} ({e}); it is kept in {self._file.name}",
                  file=sys.stderr)
            return
        storage.path(self._file.name).unlink()


_REMOTE_LOGS: list[_RemoteLog] = []  # the remote logs of this process not yet finished


class _ProjectInfo(logging.StreamHandler):
    """The project's own INFO records ("prepared data/x: ...") stay on the terminal, as plain lines.

    Warnings and above already reach stderr through absl's threshold; library INFO records stay in the file.
    """

    _PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep

    def __init__(self):
        super().__init__(sys.stdout)
        self.setFormatter(logging.Formatter("%(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno < logging.WARNING and record.pathname.startswith(self._PACKAGE)
                and not getattr(record, "file_only", False))
