"""Local and gs:// paths, the same either way: etils.epath plus what it lacks.

Every user path the project reads or writes (vocabularies, corpora, prepared
data, HF directories, GLUE/SQuAD files, workdirs, outputs, logs) goes through
this module: `path` (an `epath.Path`, what orbax uses), `open`, `makedirs`,
`size`, `glob_files`, `files_under`, `is_remote`, `absolute`.
`tests/test_storage_door.py` fails on a raw `open()`, `os.path.isfile`-like
call, `os.makedirs`, `glob` or `"://"` test elsewhere in the library. This
module adds the few things epath does not do:

- `local_copy` / `staged_write`: for readers and writers that reach local
  files only (an experiment file imported by path, ArrayRecord's writer, a
  tokenizer library), a copy in this host's scratch directory, refused with
  a DataError naming the folder and the bytes needed when the disk lacks
  room, and written there first, then uploaded. Prepared training shards are
  not copied: ArrayRecord's reader opens gs:// itself (riegeli's GcsReader on
  the google-cloud-cpp client, which finds an emulator through
  CLOUD_STORAGE_EMULATOR_ENDPOINT) and the loader reads them in place. The
  scratch directory is `$MOBILEBERT_JAX_SCRATCH`, else `<tmp>/mobilebert_jax`:
  per host, disposable, never the place a result is kept.
- `write_text_atomic`: a local file is written beside and renamed (a reader
  never sees half a file); a Cloud Storage object is atomic by itself.
- `open_append`: Cloud Storage objects cannot be appended to; a remote log is
  kept in memory and the whole object rewritten (as tensorboardX does for its
  gs:// event files), at most every `upload_every_s` and on close.
- `require_shared`: with several processes (hosts) every one of them must see
  the data and the workdir; a local path would be one per host.
- `forget_listings`: gcsfs caches directory listings for the life of the
  process and keeps them right only for its own writes; call it before
  listing what tensorstore or another process may have written since.
"""

from __future__ import annotations

import builtins
import contextlib
import glob as _glob
import io
import os
import shutil
import tempfile
import time
import uuid
from typing import IO, Callable, Iterator, TextIO, Union

# etils picks TensorFlow's gfile for gs:// whenever TensorFlow is importable (the `test` extra installs it) and
# fsspec/gcsfs otherwise. Always use gcsfs, so gs:// behaves the same (and reads STORAGE_EMULATOR_HOST) either way.
os.environ["EPATH_USE_TF"] = "false"

from etils import epath  # noqa: E402  (after EPATH_USE_TF)
from etils.epath import backend as epath_backend  # noqa: E402

from mobilebert_jax.errors import ConfigError, DataError  # noqa: E402

PathLike = Union[str, os.PathLike]
SCRATCH_ENV = "MOBILEBERT_JAX_SCRATCH"


def path(p: PathLike, *parts: PathLike) -> epath.Path:
    """`p` (joined with `parts`) as an `epath.Path`; a local relative path stays relative, as `open` resolves it."""
    return epath.Path(p, *parts)


def is_remote(p: PathLike) -> bool:
    """True for gs:// (or any other URL scheme epath supports): never a local directory."""
    return "://" in os.fspath(p)


def scheme(p: PathLike) -> str:
    """"gs://" for gs://bucket/x, "" for a local path."""
    text = os.fspath(p)
    return text[:text.index("://") + 3] if is_remote(text) else ""


def absolute(p: PathLike) -> str:
    """An absolute local path, or the URL unchanged (`os.path.abspath('gs://b')` would make it local)."""
    return os.fspath(p) if is_remote(p) else os.path.abspath(p)


def open(p: PathLike, mode: str = "r", *, encoding: str = "utf-8", newline: str | None = None) -> IO:
    """`open` for a local or remote file, with the io module's interface (gcsfs's files lack `readline(size)`);
    text modes decode with `encoding` (epath's own `open` takes UTF-8 only)."""
    binary = path(p).open(mode.replace("b", "") + "b")
    if is_remote(p) and "r" in mode:
        binary = io.BufferedReader(binary, buffer_size=8 << 20)
    return binary if "b" in mode else io.TextIOWrapper(binary, encoding=encoding, newline=newline)


def makedirs(p: PathLike) -> None:
    """`p` and its parents (Cloud Storage has no directories: nothing to do there)."""
    path(p).mkdir(parents=True, exist_ok=True)


def size(p: PathLike) -> int:
    """The file's size in bytes."""
    return int(path(p).stat().length)


def _fs(p: PathLike):
    return epath_backend.fsspec_backend.fs(os.fspath(p))  # the one filesystem instance epath itself uses


def _with_scheme(like: PathLike, name: str) -> str:
    return os.fspath(like).split("://", 1)[0] + "://" + name


def glob_files(pattern: PathLike) -> list[str]:
    """The files (not directories) matching a glob, `**` recursive, sorted."""
    pattern = os.fspath(pattern)
    if not is_remote(pattern):
        return sorted(p for p in _glob.glob(pattern, recursive=True) if os.path.isfile(p))
    found = _fs(pattern).glob(pattern, detail=True)
    return sorted(_with_scheme(pattern, name) for name, info in found.items() if info.get("type") == "file")


def files_under(directory: PathLike) -> list[str]:
    """Every file below `directory`, at any depth, sorted."""
    directory = os.fspath(directory)
    if not is_remote(directory):
        return sorted(os.path.join(root, name) for root, _, names in os.walk(directory) for name in names)
    fs = _fs(directory)
    forget_listings(directory)  # what is there now, not an earlier listing of this process
    return sorted(_with_scheme(directory, name) for name in fs.find(fs._strip_protocol(directory)))


def scratch_dir() -> str:
    """This host's scratch directory for local copies of remote files (created on first use)."""
    root = os.environ.get(SCRATCH_ENV) or os.path.join(tempfile.gettempdir(), "mobilebert_jax")
    os.makedirs(root, exist_ok=True)
    return root


def write_text_atomic(p: PathLike, text: str) -> None:
    target = path(p)
    if is_remote(p):
        target.write_text(text)
        return
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, target)


def local_copy(p: PathLike) -> str:
    """A local file with the bytes of `p`: `p` itself when local, else a copy cached in `scratch_dir()`.

    The cache is keyed by the URL and checked against the object's current version (fsspec's `checksum` of its
    metadata: on Cloud Storage the generation and hash change with every upload), so a rerun reuses it and an
    object prepared again at the same URL, of any size, is fetched again. (A size check alone served a stale
    shard of the same size, from an earlier preparation, for a manifest of a newer format.)
    """
    if not is_remote(p):
        return os.fspath(p)
    scheme, rest = os.fspath(p).split("://", 1)
    local = os.path.join(scratch_dir(), "cache", scheme, rest)
    fs = epath_backend.fsspec_backend.fs(os.fspath(p))
    name = fs._strip_protocol(os.fspath(p))
    fs.invalidate_cache(name)  # the object as the server has it now, not as an earlier listing saw it
    version = str(fs.checksum(name))
    version_file = f"{local}.version"
    if os.path.isfile(local) and os.path.isfile(version_file) and builtins.open(version_file).read() == version:
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    needed = int(fs.size(name))
    free = shutil.disk_usage(os.path.dirname(local)).free
    if needed > free:
        raise DataError(f"{p}: a local copy needs {needed:,} bytes in {os.path.dirname(local)}, which has {free:,} "
                        f"free; give the scratch directory more room or point ${SCRATCH_ENV} at a larger disk")
    tmp = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
    with path(p).open("rb") as fin, builtins.open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, length=8 << 20)
    os.replace(tmp, local)
    with builtins.open(f"{version_file}.tmp-{uuid.uuid4().hex[:8]}", "w") as f:
        f.write(version)
    os.replace(f.name, version_file)
    return local


@contextlib.contextmanager
def staged_write(p: PathLike) -> Iterator[str]:
    """Yields a local file name to write `p` through; on success it becomes `p` whole.

    Local: a temporary beside `p`, renamed. Remote: a scratch file, uploaded
    (an object appears only when its upload completes) and removed.
    """
    if not is_remote(p):
        tmp = f"{os.fspath(p)}.tmp"
        yield tmp
        os.replace(tmp, p)
        return
    fd, tmp = tempfile.mkstemp(prefix="staged-", dir=scratch_dir())
    os.close(fd)
    try:
        yield tmp
        with builtins.open(tmp, "rb") as fin, path(p).open("wb") as fout:
            shutil.copyfileobj(fin, fout, length=8 << 20)
    finally:
        os.remove(tmp)


def local_dir_for(p: PathLike) -> str:
    """A local directory to write `p`'s files into (for a writer that reaches local files only): `p` itself when
    local, else a new folder in `scratch_dir()`; `publish_dir` then puts them at `p`."""
    if not is_remote(p):
        return os.fspath(p)
    return tempfile.mkdtemp(prefix="dir-", dir=scratch_dir())


def publish_dir(local: str, p: PathLike) -> None:
    """Uploads the files `local_dir_for(p)` gave under `p` (keeping their relative paths) and removes them."""
    if not is_remote(p) or os.fspath(local) == os.fspath(p):
        return
    for root, _, names in os.walk(local):
        for name in names:
            source = os.path.join(root, name)
            with builtins.open(source, "rb") as fin, path(p, os.path.relpath(source, local)).open("wb") as fout:
                shutil.copyfileobj(fin, fout, length=8 << 20)
    shutil.rmtree(local)


def forget_listings(p: PathLike) -> None:
    """Drops the directory listings this process has cached at, above and under `p` (local paths: nothing).

    epath reaches gs:// through one gcsfs filesystem per process, which caches every listing it makes and
    answers later listings and existence checks under that directory from it (`use_listings_cache`). Its own
    writes update the cache; writes by tensorstore (orbax's arrays) and by other processes (the other hosts of a
    pod, an earlier stage run as a subprocess) do not. The next listing of `p` then goes to the server.
    """
    if not is_remote(p):
        return
    fs = _fs(p)
    root = fs._strip_protocol(os.fspath(p)).rstrip("/")
    fs.invalidate_cache(root)  # `p` and every directory above it
    for key in [k for k in fs.dircache if k.startswith(root + "/")]:
        fs.dircache.pop(key, None)


def require_shared(field: str, value: PathLike, process_count: int) -> None:
    """With several processes, `value` (config field or flag `field`) must be shared storage, not a local path."""
    if process_count > 1 and value and not is_remote(value):
        raise ConfigError(
            f"{field}={os.fspath(value)!r} is a local path, but {process_count} processes (hosts) run: each would "
            "have its own copy on its own disk, and a recreated VM loses it. Use shared storage (gs://bucket/...).")


class _RemoteAppender(io.TextIOBase):
    """Appends text to a Cloud Storage object by rewriting it (throttled); what it held before is kept."""

    def __init__(self, p: PathLike, upload_every_s: float, clock: Callable[[], float]):
        self._path = path(p)
        self._text = io.StringIO()
        if self._path.is_file():
            self._text.write(self._path.read_text(encoding="utf-8"))
        self._every, self._clock = upload_every_s, clock
        self._uploaded_at = None
        self._dirty = False

    def write(self, text: str) -> int:
        self._dirty = True
        return self._text.write(text)

    def flush(self) -> None:
        now = self._clock()
        if self._dirty and (self._uploaded_at is None or now - self._uploaded_at >= self._every):
            self._upload(now)

    def _upload(self, now: float) -> None:
        self._path.write_text(self._text.getvalue(), encoding="utf-8")
        self._uploaded_at, self._dirty = now, False

    def close(self) -> None:
        if not self.closed:
            if self._dirty:
                self._upload(self._clock())
            super().close()


def open_append(p: PathLike, upload_every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> TextIO:
    """A text file to append lines to: local `open(p, "a")`; remote, see `_RemoteAppender`."""
    if not is_remote(p):
        return builtins.open(p, "a", encoding="utf-8", buffering=1)  # line-buffered: a crash loses no line
    return _RemoteAppender(p, upload_every_s, clock)
