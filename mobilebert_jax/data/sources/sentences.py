"""Plain paragraphs to sentences (Wikimedia's `sentencex` finds the boundaries)."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

import sentencex


def split_sentences(paragraph: str) -> list[str]:
    """The sentences of one paragraph, whitespace-trimmed, empty ones dropped."""
    return [s for s in (s.strip() for s in sentencex.segment("en", paragraph)) if s]


def paragraph_blocks(lines: Iterable[str], *,
                     drop: Optional[Callable[[list[str]], bool]] = None) -> Iterator[str]:
    """Joins each run of non-blank lines into one paragraph, undoing hard wrapping.

    `drop(block_lines)` may leave out runs that are not prose (code samples).
    """
    block: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            block.append(line)
            continue
        if block and not (drop and drop(block)):
            yield " ".join(l.strip() for l in block)
        block = []
