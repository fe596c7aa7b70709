"""The embedded default corpus: English prose that ships with Python itself.

Two parts, about 1.3 MB together on CPython 3.11: the language reference
topics behind `help()` (`pydoc_data.topics`, one document per topic) and the
docstrings of the standard library's top-level modules (one document per
module: its module, class and function docstrings in source order, read with
`ast` so that nothing is imported). Code samples (indented blocks and doctest
sessions) and reST underlines are left out. The text depends on the Python version, so the
manifest records it.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import sysconfig
from typing import Iterator

from mobilebert_jax.data.sources.sentences import paragraph_blocks, split_sentences
from mobilebert_jax.data.sources.skips import SkipLog

NAME = "python_docs"
MODULES_PER_UNIT = 40
_UNDERLINE = re.compile(r"^\s*([*=\-~^\"'`#+])\1{2,}\s*$")

Document = list[str]


def corpus_version() -> str:
    return f"python-{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def module_files() -> list[str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    names = os.listdir(stdlib)  # not a user path: this Python's standard library
    return sorted(os.path.join(stdlib, n) for n in names if n.endswith(".py"))


def unit_parts() -> list[tuple[str, int, int]]:
    """("topics", 0, 0) and ("modules", start, stop) slices of `module_files()`."""
    count = len(module_files())
    return [("topics", 0, 0)] + [("modules", i, min(i + MODULES_PER_UNIT, count))
                                 for i in range(0, count, MODULES_PER_UNIT)]


def read_documents(part: str, start: int, stop: int, skips: SkipLog) -> list[Document]:
    if part == "topics":
        from pydoc_data.topics import topics
        texts = [topics[name] for name in sorted(topics)]
    else:
        texts = [_module_docstrings(path, skips) for path in module_files()[start:stop]]
    documents = [_prose_sentences(t) for t in texts]
    return [d for d in documents if d]


def _module_docstrings(path: str, skips: SkipLog) -> str:
    try:
        with open(path, encoding="utf-8") as f:  # not a user path: a standard-library module
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as e:
        skips.add("unreadable", path, f"{type(e).__name__}: {e}")
        return ""
    nodes = (n for n in ast.walk(tree)
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))
    docstrings = [d for d in (ast.get_docstring(n) for n in sorted(nodes, key=_line)) if d]
    return "\n\n".join(docstrings)


def _line(node: ast.AST) -> int:
    return getattr(node, "lineno", 0)


def _prose_sentences(text: str) -> Document:
    lines: Iterator[str] = (l for l in text.splitlines() if not _UNDERLINE.match(l))
    return [s for p in paragraph_blocks(lines, drop=_is_code) for s in split_sentences(p)]


def _is_code(block: list[str]) -> bool:
    return all(l[:1].isspace() for l in block) or any(l.lstrip().startswith(">>>") for l in block)
