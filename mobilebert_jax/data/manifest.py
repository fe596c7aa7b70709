"""The manifest of prepared data: what made it (settings, tokenizer hash) and what it holds."""

from __future__ import annotations

import json
import os
from typing import Any

from mobilebert_jax import storage
from mobilebert_jax.errors import DataError

# 2: instance records without their source document indices (records.py); 1 still loads.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SETTINGS = "settings.json"  # written first, so a restarted run can tell whether it may continue


def write_json_atomic(path: str, obj: Any) -> None:
    storage.write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
    try:
        return json.loads(storage.path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); delete the prepared directory and "
                        "prepare again") from None


def check_same_settings(path: str, found: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Refuses to mix data made with other settings or another tokenizer into one directory."""
    differing = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    if differing:
        lines = "; ".join(f"{k}: on disk {found.get(k)!r}, now {wanted.get(k)!r}" for k in differing)
        raise DataError(f"{path} was prepared with other settings ({lines}). Use another output "
                        "directory, or delete this one to prepare again.")


def load_manifest(prepared_dir: str) -> dict[str, Any]:
    if not prepared_dir:
        raise DataError("data.prepared_dir is not set; run `python -m mobilebert_jax.data.prepare` and set it")
    path = os.path.join(prepared_dir, MANIFEST)
    if not storage.path(path).is_file():
        partial = storage.path(os.path.join(prepared_dir, SETTINGS)).is_file()
        raise DataError(f"{path} not found: the preparation of {prepared_dir} "
                        f"{'did not finish; run it again to complete it' if partial else 'never ran'}")
    manifest = read_json(path)
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise DataError(f"{path}: format_version {manifest.get('format_version')!r}, this code reads "
                        f"{list(READABLE_VERSIONS)}; prepare the data again")
    return manifest
