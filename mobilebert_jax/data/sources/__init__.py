"""Corpus specs to work units, and work units to documents (lists of sentences).

A corpus spec is one or more of, joined by commas: a file, a directory, a
glob, `tfds:NAME[:split]`, or `builtin:python_docs`. It is cut into work units
(groups of files, byte ranges of a file larger than a unit, ranges of TFDS
examples, parts of the builtin corpus) in a fixed order, so that document numbering never depends on how many processes
read them; a unit is also the grain at which preparation restarts.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from mobilebert_jax import storage
from mobilebert_jax.data.sources import python_docs, text_files, tfds_source
from mobilebert_jax.data.sources.skips import SKIP_REASONS, SkipLog
from mobilebert_jax.errors import DataError

Document = list[str]

__all__ = ["Document", "SKIP_REASONS", "SkipLog", "WorkUnit", "plan_units", "read_unit"]


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    kind: str  # "files" | "tfds" | "builtin"
    paths: tuple[str, ...] = ()  # files
    corpus_format: str = "bert"  # files
    name: str = ""  # tfds dataset, or builtin part
    split: str = ""  # tfds
    data_dir: str = ""  # tfds
    text_field: str = "text"  # tfds
    start: int = 0  # tfds example range / builtin module range / byte range of one file (stop > 0)
    stop: int = 0

    def describe(self) -> str:
        if self.kind == "files" and self.stop:
            return f"{self.paths[0]}[{self.start}:{self.stop}]"
        if self.kind == "files":
            return self.paths[0] + (f" (+{len(self.paths) - 1} files)" if len(self.paths) > 1 else "")
        if self.kind == "tfds":
            return f"tfds:{self.name}:{self.split}[{self.start}:{self.stop}]"
        return f"builtin:{python_docs.NAME}/{self.name}[{self.start}:{self.stop}]"


def plan_units(spec: str, *, corpus_format: str, tfds_data_dir: str = "", tfds_text_field: str = "text",
               unit_bytes: int = 64 << 20, tfds_examples_per_unit: int = 20_000) -> list[WorkUnit]:
    """The work units of a corpus spec, in document order. Missing paths are refused here."""
    if corpus_format not in text_files.FORMATS:
        raise DataError(f"data.corpus_format must be one of {text_files.FORMATS}, not {corpus_format!r}")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise DataError("data.corpus is empty; give a path, a glob, tfds:NAME[:split] or builtin:python_docs")
    units: list[WorkUnit] = []
    for part in parts:
        if part.startswith("builtin:"):
            if part != f"builtin:{python_docs.NAME}":
                raise DataError(f"corpus spec {part!r}: the only builtin corpus is builtin:{python_docs.NAME}")
            units += [WorkUnit("builtin", name=n, start=a, stop=b) for n, a, b in python_docs.unit_parts()]
        elif part.startswith("tfds:"):
            name, split = tfds_source.parse_tfds_spec(part)
            count = len(tfds_source.open_source(name, split, tfds_data_dir))
            units += [WorkUnit("tfds", name=name, split=split, data_dir=tfds_data_dir, text_field=tfds_text_field,
                               start=a, stop=min(a + tfds_examples_per_unit, count))
                      for a in range(0, count, tfds_examples_per_unit)]
        else:
            units += _file_units(text_files.expand_paths(part), corpus_format, unit_bytes)
    return units


def _file_units(paths: Sequence[str], corpus_format: str, unit_bytes: int) -> list[WorkUnit]:
    """Consecutive files up to `unit_bytes` together; a larger file alone, cut into byte ranges of `unit_bytes`
    (at document boundaries, see text_files.read_documents) where its format allows."""
    if unit_bytes < 1:
        raise DataError(f"data.unit_bytes must be >= 1, got {unit_bytes}")
    units: list[WorkUnit] = []
    group: list[str] = []
    size = 0
    for path in paths:
        file_size = storage.size(path)
        if group and size + file_size > unit_bytes:
            units.append(WorkUnit("files", paths=tuple(group), corpus_format=corpus_format))
            group, size = [], 0
        if file_size > unit_bytes and corpus_format in text_files.SPLITTABLE:
            units += [WorkUnit("files", paths=(path,), corpus_format=corpus_format, start=a,
                               stop=min(a + unit_bytes, file_size))
                      for a in range(0, file_size, unit_bytes)]
            continue
        group.append(path)
        size += file_size
    if group:
        units.append(WorkUnit("files", paths=tuple(group), corpus_format=corpus_format))
    return units


def read_unit(unit: WorkUnit, skips: SkipLog, *, max_line_bytes: int) -> list[Document]:
    if unit.kind == "files":
        byte_range = (unit.start, unit.stop) if unit.stop else None
        return [d for p in unit.paths
                for d in text_files.read_documents(p, unit.corpus_format, skips, max_line_bytes=max_line_bytes,
                                                   byte_range=byte_range)]
    if unit.kind == "tfds":
        return tfds_source.read_documents(unit.name, unit.split, unit.data_dir, unit.text_field,
                                          unit.start, unit.stop, skips)
    if unit.kind == "builtin":
        return python_docs.read_documents(unit.name, unit.start, unit.stop, skips)
    raise DataError(f"unknown work unit kind {unit.kind!r}")
