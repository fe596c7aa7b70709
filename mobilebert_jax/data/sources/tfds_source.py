"""TFDS text datasets through `tfds.data_source` (random access, no TensorFlow needed).

Each example is one document; its text field is read as `paragraphs` text
(paragraphs split on blank lines or newlines, then into sentences). The
dataset must already be prepared in `data_dir` (for example with `tfds build`).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

from mobilebert_jax.data.sources.sentences import split_sentences
from mobilebert_jax.data.sources.skips import SkipLog
from mobilebert_jax.errors import DataError

Document = list[str]


def parse_tfds_spec(spec: str) -> tuple[str, str]:
    """`tfds:NAME[:split]` (NAME may hold `/config:version`-free parts) -> (name, split)."""
    body = spec[len("tfds:"):]
    name, _, split = body.partition(":")
    if not name:
        raise DataError(f"corpus spec {spec!r}: expected tfds:NAME[:split]")
    return name, split or "train"


@functools.lru_cache(maxsize=8)
def open_source(name: str, split: str, data_dir: str) -> Sequence[Any]:
    import tensorflow_datasets as tfds  # heavy; only the TFDS path pays for it
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # TFDS raises several unrelated types for "not there"
        raise DataError(
            f"TFDS dataset {name!r} split {split!r} could not be opened from data_dir={data_dir or '(default)'!r}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Prepare it first "
            f"(`tfds build {name} --data_dir=... --file_format=array_record`).") from None


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
