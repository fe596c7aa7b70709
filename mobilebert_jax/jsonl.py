"""JSON-lines files the project appends to (`metrics.jsonl`): a write cut short by a crash costs that line only.

A process killed mid-write (SIGKILL, a full disk, a VM gone) can leave the file's last line without its newline:
appending onto it would join the next record to the broken one. `open_append` first repairs the end (a tail that
parses gets its newline, one that does not is dropped, with a warning naming the file and what was dropped), and
`records` skips a line that does not parse, with a warning, instead of failing the reader.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterator, TextIO

from mobilebert_jax import storage


def repair_end(path: storage.PathLike) -> None:
    """Ends `path` (if it exists) at a complete line: a torn last line is completed if it parses, else dropped."""
    p = storage.path(path)
    if not p.is_file():
        return
    data = p.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    try:
        json.loads(tail)
        repaired = data + b"\n"
    except ValueError:
        logging.warning("%s: dropped its last line, cut short by an earlier crash (%d bytes: %r)", os.fspath(path),
                        len(tail), tail[:80])
        repaired = data[:start]
    p.write_bytes(repaired)  # once per resume, through the storage door (a gs:// object is replaced whole anyway)


def open_append(path: storage.PathLike) -> TextIO:
    """`path` opened to append lines (local or gs://), its end repaired first."""
    repair_end(path)
    return storage.open_append(path)


def records(path: storage.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line that parses; the others are skipped with a warning."""
    text = storage.path(path).read_bytes().decode("utf-8", errors="replace")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except ValueError as e:
            logging.warning("%s, line %d: skipped, not a JSON record (a write cut short?): %s", os.fspath(path), n, e)
