"""Text files (local or gs://) in three layouts, read defensively.

- `bert`: one sentence per line, a blank line between documents (the input of
  BERT's `create_pretraining_data.py`).
- `paragraphs`: a file is one document; runs of non-blank lines are paragraphs
  (hard-wrapped lines are joined) and are split into sentences.
- `wikitext`: WikiText's layout: a ` = Title = ` line starts a document, each
  other line is a paragraph split into sentences, ` = = Section = = ` lines are dropped.

A file that is binary or not UTF-8 is skipped whole (nothing it held is kept),
a line over `max_line_bytes` is skipped alone; both are counted and named.
"""

from __future__ import annotations

import math
import re
from typing import BinaryIO, Callable, Iterator, Optional

from mobilebert_jax import storage
from mobilebert_jax.data.sources.sentences import paragraph_blocks, split_sentences
from mobilebert_jax.data.sources.skips import SkipLog
from mobilebert_jax.errors import DataError

FORMATS = ("bert", "paragraphs", "wikitext")
SNIFF_BYTES = 8192
NUL = b"\x00"
_WIKITEXT_TITLE = re.compile(r"^ ?= [^=].* = ?$")
_WIKITEXT_SECTION = re.compile(r"^ ?(= ){2,}.*( =){2,} ?$")

Document = list[str]  # its sentences, in order


class _SkipFile(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def expand_paths(spec: str) -> list[str]:
    """A file, a directory (every file below it) or a glob, as a sorted list of files."""
    if any(c in spec for c in "*?["):
        matches = storage.glob_files(spec)
        if not matches:
            raise DataError(f"corpus glob {spec!r} matches no file")
        return matches
    if storage.path(spec).is_dir():
        files = storage.files_under(spec)
        if not files:
            raise DataError(f"corpus directory {spec!r} holds no file")
        return files
    if storage.path(spec).is_file():
        return [spec]
    raise DataError(f"corpus path {spec!r} does not exist")


def read_documents(path: str, fmt: str, skips: SkipLog, *, max_line_bytes: int,
                   byte_range: Optional[tuple[int, int]] = None) -> list[Document]:
    """Every document of one file, or of its byte range [a, b), or none when it is skipped (recorded in `skips`).

    A range holds the lines from the first document boundary (`bert`: a blank line, `wikitext`: a title line)
    starting at or after byte a to the first one starting at or after byte b, so the ranges of one file hold its
    documents exactly once, in order, however it is cut. A `paragraphs` file is one document and is never cut.
    """
    if fmt not in FORMATS:
        raise DataError(f"corpus_format must be one of {FORMATS}, not {fmt!r}")
    start, stop = byte_range or (0, math.inf)
    where = path if byte_range is None else f"{path}[{start}:{stop}]"
    try:
        with storage.open(path, "rb") as f:
            if start == 0:
                head = f.read(SNIFF_BYTES)
                if not head.strip():
                    raise _SkipFile("empty_file", "no text")
                if NUL in head:
                    raise _SkipFile("binary", f"NUL byte at offset {head.index(NUL)}")
                f.seek(0)
            else:
                f.seek(start - 1)
                _discard_rest_of_line(f)  # to the first line that starts at or after `start`
            boundary = _BOUNDARY.get(fmt)
            lines = list(_decoded_lines(f, path, skips, max_line_bytes, start=start, stop=stop, boundary=boundary))
    except _SkipFile as skip:
        skips.add(skip.reason, where, skip.detail)
        return []
    except OSError as e:
        skips.add("unreadable", where, e.strerror or str(e))
        return []
    if fmt == "bert":
        return _bert_documents(lines)
    if fmt == "paragraphs":
        sentences = [s for p in paragraph_blocks(lines) for s in split_sentences(p)]
        return [sentences] if sentences else []
    return _wikitext_documents(lines)


def _decoded_lines(f: BinaryIO, path: str, skips: SkipLog, max_line_bytes: int, *, start: int = 0,
                   stop: float = math.inf, boundary: Optional[Callable[[str], bool]] = None) -> Iterator[str]:
    """The lines of [start, stop) as `read_documents` cuts a range; from a line start at or after `start`.

    Lines before the range's first boundary belong to the range before it and are neither decoded strictly nor
    counted; within the range, line numbers count from the start of the file only when the range starts there,
    so elsewhere a line is named by its byte offset.
    """
    line_no = 0
    owned = start == 0
    while True:
        offset = f.tell()
        raw = f.readline(max_line_bytes + 1)
        if not raw:
            return
        line_no += 1
        place = f"{path}:{line_no}" if start == 0 else f"{path}: byte {offset}"
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            skipped = len(raw) + _discard_rest_of_line(f)
            if owned:
                skips.add("line_too_long", place, f"{skipped} bytes")
            continue  # dropped alone: it neither ends a document nor joins its neighbours, nor cuts a range
        if boundary is not None and (not owned or offset >= stop) and boundary(
                raw.decode("utf-8", errors="replace").rstrip("\r\n")):
            if offset >= stop:
                return  # the next range's first line
            owned = True
        if not owned:
            continue
        if NUL in raw:
            raise _SkipFile("binary", f"NUL byte on {'line ' + str(line_no) if start == 0 else 'the line at byte ' + str(offset)}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = f"line {line_no}" if start == 0 else f"the line at byte {offset}"
            raise _SkipFile("not_utf8", f"{line}, byte {e.start}: {raw[e.start:e.start + 4]!r}") from None
        if offset == 0:
            text = text.lstrip("\ufeff")
        yield text.rstrip("\r\n")


def _discard_rest_of_line(f: BinaryIO) -> int:
    skipped = 0
    while True:
        chunk = f.readline(1 << 20)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


def _bert_documents(lines: list[str]) -> list[Document]:
    documents, current = [], []
    for line in lines:
        sentence = line.strip()
        if sentence:
            current.append(sentence)
        elif current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    return documents


def _wikitext_documents(lines: list[str]) -> list[Document]:
    documents, current = [], []
    for line in lines:
        if _WIKITEXT_TITLE.match(line):
            if current:
                documents.append(current)
            current = []
        elif line.strip() and not _WIKITEXT_SECTION.match(line):
            current.extend(split_sentences(line.strip()))
    if current:
        documents.append(current)
    return documents


# Where a file may be cut into byte ranges: the line that starts a document.
_BOUNDARY: dict[str, Callable[[str], bool]] = {
    "bert": lambda line: not line.strip(),
    "wikitext": lambda line: bool(_WIKITEXT_TITLE.match(line)),
}
SPLITTABLE = tuple(_BOUNDARY)
