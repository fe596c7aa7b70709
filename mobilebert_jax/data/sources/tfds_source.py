"""TFDS text datasets through `tfds.data_source` (random access, no TensorFlow needed).

Each example is one document; its text field is read as `paragraphs` text
(paragraphs split on blank lines or newlines, then into sentences). The
dataset must already be prepared in `data_dir` (for example with `tfds build`).
"""

from __future__ import annotations

import functools

from mobilebert_jax.data.sources.sentences import split_sentences
from mobilebert_jax.data.sources.skips import SkipLog
from mobilebert_jax.data.tfds_reader import open_tfds_source
from mobilebert_jax.errors import DataError

Document = list[str]


def parse_tfds_spec(spec: str) -> tuple[str, str]:
    """`tfds:NAME[:split]` (NAME may hold `/config:version`-free parts) -> (name, split)."""
    body = spec[len("tfds:"):]
    name, _, split = body.partition(":")
    if not name:
        raise DataError(f"corpus spec {spec!r}: expected tfds:NAME[:split]")
    return name, split or "train"


# Planning counts a dataset's examples and every unit reads from it: one open data source per (name, split, data_dir).
open_source = functools.lru_cache(maxsize=8)(open_tfds_source)


def read_documents(name: str, split: str, data_dir: str, text_field: str, start: int, stop: int,
                   skips: SkipLog) -> list[Document]:
    source = open_source(name, split, data_dir)
    documents = []
    for index in range(start, stop):
        example = source[index]
        if text_field not in example:
            raise DataError(f"TFDS {name}:{split} example {index} has no field {text_field!r} "
                            f"(fields: {sorted(example)}); set data.tfds_text_field")
        text = example[text_field]
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as e:
                skips.add("not_utf8_example", f"tfds:{name}:{split}[{index}]", f"byte {e.start}")
                continue
        if not isinstance(text, str):
            raise DataError(f"TFDS {name}:{split} example {index} field {text_field!r} is "
                            f"{type(text).__name__}, not text")
        sentences = [s for line in text.split("\n") if line.strip() for s in split_sentences(line.strip())]
        if sentences:
            documents.append(sentences)
        else:
            skips.add("empty_document", f"tfds:{name}:{split}[{index}]", "no text")
    return documents
