"""What the corpus readers left out, and why: counted, named, and logged."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

# Each reason, and whether it drops a whole file, a line, or a document.
SKIP_REASONS = {
    "not_utf8": "file is not UTF-8 text",
    "binary": "file holds NUL bytes (binary)",
    "empty_file": "file has no text",
    "unreadable": "file could not be read",
    "line_too_long": "line longer than max_line_bytes",
    "empty_document": "document has no tokens",
    "empty_sentence": "sentence has no tokens",
    "not_utf8_example": "TFDS example text is not UTF-8",
}
EXAMPLES_PER_REASON = 20  # named in the manifest; every skip is counted


class SkipLog:
    """Counts skips by reason and keeps the first few places (file, file:line, example) per reason."""

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, where: str, detail: str = "", *, count: int = 1) -> None:
        if reason not in SKIP_REASONS:
            raise KeyError(f"unknown skip reason {reason!r}")
        self.counts[reason] += count
        named = self.examples.setdefault(reason, [])
        if len(named) < EXAMPLES_PER_REASON:
            named.append(f"{where}: {detail}" if detail else where)
            logging.warning("skipped %s (%s)%s", where, SKIP_REASONS[reason], f": {detail}" if detail else "")

    def merge(self, other: "SkipLog | dict[str, Any]") -> None:
        other = other if isinstance(other, SkipLog) else SkipLog.from_dict(other)
        self.counts.update(other.counts)
        for reason, named in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(named[:EXAMPLES_PER_REASON - len(mine)])

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())),
                "examples": {r: list(v) for r, v in sorted(self.examples.items())}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SkipLog":
        log = cls()
        log.counts.update(d.get("counts", {}))
        log.examples = {r: list(v) for r, v in d.get("examples", {}).items()}
        return log
