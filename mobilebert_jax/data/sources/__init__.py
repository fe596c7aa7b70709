"""Corpus specs to work units, and work units to documents (lists of sentences).

A corpus spec is one or more of, joined by commas: a file, a directory, a
glob, `tfds:NAME[:split]`, or `builtin:python_docs`. It is cut into work units
(groups of files, ranges of TFDS examples, parts of the builtin corpus) in a
fixed order, so that document numbering never depends on how many processes
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
    start: int = 0  # tfds example range / builtin module range
    stop: int = 0

    def describe(self) -> str:
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
            units += [WorkUnit("files", paths=tuple(g), corpus_format=corpus_format)
                      for g in _group_by_size(text_files.expand_paths(part), unit_bytes)]
    return units


def _group_by_size(paths: Sequence[str], unit_bytes: int) -> list[list[str]]:
    groups: list[list[str]] = []
    size = unit_bytes
    for path in paths:
        file_size = storage.size(path)
        if size + file_size > unit_bytes or not groups:
            groups.append([])
            size = 0
        groups[-1].append(path)
        size += file_size
    return groups


def read_unit(unit: WorkUnit, skips: SkipLog, *, max_line_bytes: int) -> list[Document]:
    if unit.kind == "files":
        return [d for p in unit.paths
                for d in text_files.read_documents(p, unit.corpus_format, skips, max_line_bytes=max_line_bytes)]
    if unit.kind == "tfds":
        return tfds_source.read_documents(unit.name, unit.split, unit.data_dir, unit.text_field,
                                          unit.start, unit.stop, skips)
    if unit.kind == "builtin":
        return python_docs.read_documents(unit.name, unit.start, unit.stop, skips)
    raise DataError(f"unknown work unit kind {unit.kind!r}")
