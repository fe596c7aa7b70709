"""The manifest of prepared data: what made it (settings, tokenizer hash), what it holds, each shard's size and sha256.

A shard deleted, cut short or changed after preparation is found by its size (a stat, on every load) or its sha256
(when preparing, and when loading with config.data.verify_checksums) and named; it is never read as it is.
"""

from __future__ import annotations

import hashlib
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


def shard_facts(path: str, checksum: bool = True) -> dict[str, Any]:
    """{"bytes": size, "sha256": hex digest} of a prepared file (the digest only with `checksum`)."""
    p = storage.path(path)
    facts: dict[str, Any] = {"bytes": p.stat().length}
    if checksum:
        digest = hashlib.sha256()
        with p.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        facts["sha256"] = digest.hexdigest()
    return facts


def damaged_shards(prepared_dir: str, manifest: dict[str, Any], *, checksums: bool) -> dict[str, str]:
    """{shard name: what is wrong} for the shards whose size (and with `checksums`, digest) differ from the manifest.

    Cheap without `checksums` (one stat per shard). A manifest without file facts (written before they were
    recorded) checks nothing.
    """
    damaged = {}
    for split in manifest.get("splits", {}).values():
        for name, wanted in split.get("files", {}).items():
            path = os.path.join(prepared_dir, name)
            if not storage.path(path).is_file():
                damaged[name] = "missing"
                continue
            found = shard_facts(path, checksum=checksums)
            if found["bytes"] != wanted["bytes"]:
                damaged[name] = f"{found['bytes']} bytes, the manifest records {wanted['bytes']} (cut short or changed)"
            elif checksums and found["sha256"] != wanted["sha256"]:
                damaged[name] = "its sha256 differs from the manifest's (the content changed)"
    return damaged


def describe_damage(prepared_dir: str, damaged: dict[str, str]) -> str:
    return "; ".join(f"{os.path.join(prepared_dir, name)}: {why}" for name, why in sorted(damaged.items()))
