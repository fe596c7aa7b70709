"""Opening a prepared TFDS dataset for random access (`tfds.data_source`, no TensorFlow needed): the one opener of
the pretraining corpus source (data/sources/tfds_source.py) and of GLUE and SQuAD (finetune/glue_tfds.py,
finetune/squad_data.py)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

from mobilebert_jax.errors import DataError

# (TFDS name such as "glue/cola", split, data_dir) -> a sequence of feature dicts.
SourceOpener = Callable[[str, str, Optional[str]], Sequence[Mapping[str, Any]]]


def open_tfds_source(name: str, split: str, data_dir: Optional[str]) -> Sequence[Mapping[str, Any]]:
    import tensorflow_datasets as tfds  # heavy; only the TFDS path pays for it
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # TFDS raises several unrelated types for "not prepared"
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"TFDS dataset {name!r} split {split!r} could not be opened from "
                        f"data_dir={data_dir or '(default)'!r}: {type(e).__name__}: {first_line}. Prepare it first "
                        f"(`tfds build {name} --data_dir=... --file_format=array_record`).") from None


def as_text(value: Any, where: str) -> str:
    """TFDS hands strings back as bytes."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
    if isinstance(value, str):
        return value
    raise DataError(f"{where}: expected text, got {type(value).__name__}")


def field(example: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in example:
        raise DataError(f"{where}: no field {key!r} (fields: {sorted(example)})")
    return example[key]
