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
import contextlib
import functools
import logging
import os
import sys
import tempfile
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence

from absl import app, flags
from absl import logging as absl_logging
from etils import epath

from mobilebert_jax import errors

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
    """Turns the project's error types raised inside into `FATAL <kind> error: ...` and exit 1."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 -- re-raised unless it is an expected input error
        kind = errors.kind_of(e)
        if kind is None:
            raise
        fatal(kind, e)


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
    parse = fatal_on_errors(flags_parser) if flags_parser is not None else None
    kwargs = {"flags_parser": parse} if parse is not None else {}
    app.run(fatal_on_errors(main), argv=argv, **kwargs)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors follow the FATAL convention (exit 1) and whose help is the module docstring."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        fatal("usage", message)


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
    workdir on a remote file system (gs://) logs to a local temporary file, since appending to a remote object is
    not possible; the returned path says where.
    """
    if verbosity_asked():
        return None
    if "://" in str(workdir):
        path = os.path.join(tempfile.mkdtemp(prefix="mobilebert_jax-log-"), LOG_FILE)
    else:
        path = os.fspath(epath.Path(workdir) / LOG_FILE)
    handler = absl_logging.get_absl_handler().python_handler
    old = handler.stream
    handler.stream = _OpenedOnFirstWrite(path)
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
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._file = open(self.path, "a", buffering=1)  # line-buffered: a crash loses no record
        return self._file.write(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


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
