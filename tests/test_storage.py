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


def test_a_vocabulary_and_a_sentencepiece_model_on_gcs(gcs, tmp_path, monkeypatch):
    from mobilebert_jax.data.tokenizers import SentencePieceTokenizer, WordPieceTokenizer
    from mobilebert_jax.data.tokenizers.base import SPECIAL_TOKENS
    from mobilebert_jax.data.tokenizers.sentence_piece import train_sentencepiece
    from mobilebert_jax.errors import DataError

    monkeypatch.setenv(storage.SCRATCH_ENV, str(tmp_path / "scratch"))
    vocab = "".join(f"{t}\n" for t in [*SPECIAL_TOKENS, "the", "cat", "##s", "sat"])
    (tmp_path / "vocab.txt").write_text(vocab)
    storage.path(gcs.uri("tok", "vocab.txt")).write_text(vocab)
    remote, local = WordPieceTokenizer(gcs.uri("tok", "vocab.txt")), WordPieceTokenizer(str(tmp_path / "vocab.txt"))
    assert remote.encode("the cats sat") == local.encode("the cats sat") != []
    assert remote.content_hash == local.content_hash
    with pytest.raises(DataError, match=r"gs://.*/tok/missing.txt: vocabulary file not found"):
        WordPieceTokenizer(gcs.uri("tok", "missing.txt"))

    sentences = [f"the cat number {i} sat on mat {i % 7} while dog {i % 5} ran" for i in range(300)]
    model = train_sentencepiece(iter(sentences), gcs.uri("tok", "sp"), vocab_size=40)  # written to gs://
    assert model == gcs.uri("tok", "sp.model") and storage.path(gcs.uri("tok", "sp.vocab")).is_file()
    local_model = train_sentencepiece(iter(sentences), str(tmp_path / "sp"), vocab_size=40)
    sp, sp_local = SentencePieceTokenizer(model), SentencePieceTokenizer(local_model)
    assert sp.encode("the cat sat") == sp_local.encode("the cat sat") and sp.content_hash == sp_local.content_hash
    assert os.listdir(tmp_path / "scratch") == []  # the trainer's scratch files are gone


def test_a_corpus_folder_and_glob_on_gcs(gcs):
    from mobilebert_jax.data.sources import SkipLog, plan_units, read_unit
    from mobilebert_jax.data.sources.text_files import expand_paths
    from mobilebert_jax.errors import DataError

    texts = {"corpus/a.txt": "One sentence.\nTwo sentence.\n\nThird doc.\n", "corpus/sub/b.txt": "Fourth one.\n",
             "corpus/sub/c.md": "Not a txt.\n"}
    for name, text in texts.items():
        storage.path(gcs.uri(name)).write_text(text)
    folder = expand_paths(gcs.uri("corpus"))
    assert folder == [gcs.uri("corpus/a.txt"), gcs.uri("corpus/sub/b.txt"), gcs.uri("corpus/sub/c.md")]
    assert expand_paths(gcs.uri("corpus/**/*.txt")) == [gcs.uri("corpus/a.txt"), gcs.uri("corpus/sub/b.txt")]
    assert expand_paths(gcs.uri("corpus/a.txt")) == [gcs.uri("corpus/a.txt")]
    with pytest.raises(DataError, match="matches no file"):
        expand_paths(gcs.uri("corpus/*.json"))
    with pytest.raises(DataError, match="does not exist"):
        expand_paths(gcs.uri("nothing-here"))
    skips = SkipLog()
    documents = [d for unit in plan_units(gcs.uri("corpus/**/*.txt"), corpus_format="bert") for d in read_unit(unit, skips,
                                                                                       max_line_bytes=1000)]
    assert documents == [["One sentence.", "Two sentence."], ["Third doc."], ["Fourth one."]]


def test_a_gcs_workdir_keeps_its_library_log(gcs, tmp_path, monkeypatch):
    import logging
    from mobilebert_jax import cli

    monkeypatch.setenv(storage.SCRATCH_ENV, str(tmp_path))
    uri = gcs.uri("logrun", cli.LOG_FILE)
    storage.path(uri).write_text("an earlier start\n")
    log = cli._RemoteLog(uri, every_s=3600)  # no periodic upload within the test: each is called here
    handler = logging.StreamHandler(log)
    logger = logging.getLogger("test_remote_log")
    logger.addHandler(handler)
    try:
        logger.warning("first")  # through a logging handler, as absl's: the upload must not wait on its lock
        assert storage.path(uri).read_text() == "an earlier start\n"
        assert [open(tmp_path / n).read() for n in os.listdir(tmp_path)] == ["first\n"]  # kept at once
        log.upload()
        assert storage.path(uri).read_text() == "an earlier start\nfirst\n"
        logger.warning("last")
    finally:
        logger.removeHandler(handler)
    log.close()  # what logging.shutdown calls, holding the handler's lock: nothing leaves this host yet
    assert storage.path(uri).read_text() == "an earlier start\nfirst\n"
    log.finish()  # at exit: what is left is uploaded, the scratch file removed
    assert storage.path(uri).read_text() == "an earlier start\nfirst\nlast\n"
    assert os.listdir(tmp_path) == []


def test_a_local_copy_without_room_names_the_folder_and_the_bytes(gcs, tmp_path, monkeypatch):
    import collections
    import shutil
    from mobilebert_jax.errors import DataError

    monkeypatch.setenv(storage.SCRATCH_ENV, str(tmp_path))
    uri = gcs.uri("room", "shard.bin")
    storage.path(uri).write_bytes(b"x" * 1000)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 999, 999))
    with pytest.raises(DataError, match=rf"shard.bin: a local copy needs 1,000 bytes in {tmp_path}/cache/gs/"
                                        rf"{gcs.bucket}/room, which has 999 free"):
        storage.local_copy(uri)
    assert not list(tmp_path.rglob("shard.bin*"))  # nothing half-written
