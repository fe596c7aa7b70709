"""The project's error types: bad input a person can fix, as opposed to bugs.

Every command-line tool turns these into one line `FATAL <kind> error: ...` and exit code 1 (cli.py); anything
else is a bug and keeps its traceback. Each message names the file, line, config field or tensor at fault.
"""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


class DataError(ValueError):
    """Bad input or inconsistent prepared data; the message names the file, line or field."""


class CheckpointError(ValueError):
    """A checkpoint or parameter file cannot be used; the message names the file or tensor."""


class NonFiniteLossError(ArithmeticError):
    """Training produced a non-finite loss; the message names the step, the metric and the last good checkpoint."""


# (type, kind) in the order they are matched; the kind is the word after FATAL.
KINDS: tuple[tuple[type, str], ...] = (
    (ConfigError, "config"),
    (DataError, "data"),
    (CheckpointError, "checkpoint"),
    (NonFiniteLossError, "training"),
    # A path that is not there or not readable is bad input too; the OS error's message names the path.
    ((FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError), "file"),
)


def kind_of(error: BaseException) -> str | None:
    """The FATAL kind of an expected input error, None for anything else (a bug)."""
    for types, kind in KINDS:
        if isinstance(error, types):
            return kind
    return None
