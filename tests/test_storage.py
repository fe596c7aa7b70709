"""mobilebert_jax.storage on local paths and on an emulated gs:// bucket (tests/gcs_emulator.py)."""

from __future__ import annotations

import os

import pytest

from gcs_emulator import gcs  # noqa: F401  (the fixture)
from mobilebert_jax import storage
from mobilebert_jax.errors import ConfigError


def test_gs_never_goes_through_tensorflow():
    from etils.epath import backend, gpath
    assert os.environ["EPATH_USE_TF"] == "false"
    assert storage.path("gs://b/x")._backend is backend.fsspec_backend
    assert not gpath._is_tf_installed()


def test_urls_stay_urls():
    assert storage.is_remote("gs://b/x") and not storage.is_remote("runs/x")
    assert storage.absolute("gs://b/x") == "gs://b/x"
    assert storage.absolute("runs/x") == os.path.abspath("runs/x")


def test_local_atomic_and_staged_writes(tmp_path):
    storage.write_text_atomic(tmp_path / "a.json", "1\n")
    with storage.staged_write(tmp_path / "b.bin") as local:
        assert local == f"{tmp_path}/b.bin.tmp"
        with open(local, "wb") as f:
            f.write(b"xy")
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin"]
    assert storage.local_copy(tmp_path / "b.bin") == str(tmp_path / "b.bin")


def test_a_failed_staged_write_leaves_no_object(gcs, tmp_path, monkeypatch):
    monkeypatch.setenv(storage.SCRATCH_ENV, str(tmp_path))
    with pytest.raises(RuntimeError):
        with storage.staged_write(gcs.uri("staged", "failed.bin")) as local:
            open(local, "wb").write(b"half")
            raise RuntimeError("writer crashed")
    assert not storage.path(gcs.uri("staged", "failed.bin")).exists()
    with storage.staged_write(gcs.uri("staged", "ok.bin")) as local:
        open(local, "wb").write(b"whole")
    assert storage.path(gcs.uri("staged", "ok.bin")).read_bytes() == b"whole"
    assert os.listdir(tmp_path) == []  # the scratch file is gone


def test_local_copy_is_cached_by_url_and_object_version(gcs, tmp_path, monkeypatch):
    monkeypatch.setenv(storage.SCRATCH_ENV, str(tmp_path))
    uri = gcs.uri("copy", "shard.bin")
    storage.path(uri).write_bytes(b"12345")
    local = storage.local_copy(uri)
    assert local == f"{tmp_path}/cache/gs/{gcs.bucket}/copy/shard.bin" and open(local, "rb").read() == b"12345"
    storage.path(uri).write_bytes(b"1234567")  # replaced by another size: fetched again
    assert open(storage.local_copy(uri), "rb").read() == b"1234567"
    storage.path(uri).write_bytes(b"abcdefg")  # replaced by the same size (data prepared again): fetched again
    assert open(storage.local_copy(uri), "rb").read() == b"abcdefg"
    os.remove(local)  # the cached copy reappears when it goes missing
    assert open(storage.local_copy(uri), "rb").read() == b"abcdefg"


def test_remote_append_keeps_what_was_there_and_throttles_uploads(gcs):
    uri = gcs.uri("append", "metrics.jsonl")
    storage.path(uri).write_text("old\n")
    now = [0.0]
    f = storage.open_append(uri, upload_every_s=30, clock=lambda: now[0])
    f.write("a\n")
    f.flush()  # the first flush uploads
    assert storage.path(uri).read_text() == "old\na\n"
    f.write("b\n")
    now[0] = 10.0
    f.flush()  # within 30 s of the last upload: kept in memory
    assert storage.path(uri).read_text() == "old\na\n"
    now[0] = 40.0
    f.flush()
    assert storage.path(uri).read_text() == "old\na\nb\n"
    f.write("c\n")
    f.close()  # always uploads what is left
    assert storage.path(uri).read_text() == "old\na\nb\nc\n"


def test_several_processes_need_shared_storage():
    storage.require_shared("--workdir", "runs/x", 1)
    storage.require_shared("--workdir", "gs://b/x", 4)
    with pytest.raises(ConfigError, match=r"--workdir='runs/x' is a local path, but 4 processes .* Use shared "
                                          r"storage \(gs://"):
        storage.require_shared("--workdir", "runs/x", 4)
