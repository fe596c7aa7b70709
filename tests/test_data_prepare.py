"""The preparation command: manifest, skips, idempotence, restart after a crash, refusals, parallel == inline."""

from __future__ import annotations

import filecmp
import glob
import json
import re
import os
import subprocess
import sys
import time

import pytest

from mobilebert_jax.data.loader import make_pretraining_loader
from mobilebert_jax.data.prepare import prepare
from mobilebert_jax.errors import DataError
from tests.data_fixtures import CORPUS, VOCAB, bert_config, data_config, require_shared_data
from limits import HANG_S

TEACHER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                       "teacher_ib_bert_large.py")


def _state_union_config(**overrides):
    return bert_config(**{"corpus": str(CORPUS / "state_union"), "corpus_format": "paragraphs",
                          "unit_bytes": 300_000, "num_shards": 4, "max_seq_length": 64, **overrides})


def _outputs(out):
    return sorted(p for p in glob.glob(f"{out}/**/*", recursive=True) if p.endswith((".array_record", ".json")))


def test_manifest_counts_skips_and_names_files(tmp_path):
    manifest = prepare(_state_union_config(), str(tmp_path))
    corpus = manifest["corpus"]
    assert corpus["skipped"]["counts"] == {"not_utf8": 6}
    named = corpus["skipped"]["examples"]["not_utf8"]
    assert len(named) == 6 and all("state_union/" in e and ".txt: line " in e for e in named)
    assert corpus["documents"] == 65 - 6
    assert corpus["units"] > 3
    assert manifest["settings"]["tokenizer_hash"] == manifest["tokenizer"]["content_hash"]
    assert manifest["settings"]["max_seq_length"] == 64 and manifest["settings"]["token_dtype"] == "uint16"
    assert set(manifest["splits"]) == {"train", "eval"}
    with open(tmp_path / "manifest.json") as f:
        assert json.load(f) == manifest


def test_rerun_reuses_and_restart_redoes_only_unfinished_work(tmp_path):
    config = _state_union_config()
    first = prepare(config, str(tmp_path))
    files = _outputs(tmp_path)
    snapshot = tmp_path.parent / (tmp_path.name + "_copy")
    os.makedirs(snapshot)
    for p in files:
        dest = snapshot / os.path.relpath(p, tmp_path)
        os.makedirs(dest.parent, exist_ok=True)
        dest.write_bytes(open(p, "rb").read())
    mtimes = {p: os.stat(p).st_mtime_ns for p in files}

    assert prepare(config, str(tmp_path)) == first  # finished: nothing is touched
    assert {p: os.stat(p).st_mtime_ns for p in files} == mtimes

    # A crash after unit 1 was written but before its .json, and before shard 2 and the manifest.
    os.remove(tmp_path / "manifest.json")
    os.remove(tmp_path / "documents" / "unit-00001.json")
    os.remove(tmp_path / "train-00002-of-00004.json")
    (tmp_path / "train-00002-of-00004.array_record.tmp").write_bytes(b"half-written")
    time.sleep(0.01)
    again = prepare(config, str(tmp_path))
    assert again == first
    redone = {p for p in files if os.stat(p).st_mtime_ns != mtimes[p]}
    assert {os.path.basename(p) for p in redone} == {
        "manifest.json", "unit-00001.json", "unit-00001.array_record",
        "train-00002-of-00004.json", "train-00002-of-00004.array_record"}
    for p in files:
        assert filecmp.cmp(p, snapshot / os.path.relpath(p, tmp_path), shallow=False) or p.endswith("manifest.json")


def test_other_settings_or_tokenizer_are_refused(tmp_path):
    prepare(_state_union_config(), str(tmp_path))
    with pytest.raises(DataError, match=r"prepared with other settings \(max_seq_length: on disk 64, now 128\)"):
        prepare(_state_union_config(max_seq_length=128), str(tmp_path))
    with pytest.raises(DataError, match=r"tokenizer_hash: on disk '[0-9a-f]{16}', now '[0-9a-f]{16}'"):
        prepare(_state_union_config(tokenizer="builtin:python_docs_sentencepiece"), str(tmp_path))
    os.remove(tmp_path / "manifest.json")  # an unfinished preparation is protected the same way
    with pytest.raises(DataError, match=r"settings.json was prepared with other settings \(seed"):
        prepare(_state_union_config(seed=1), str(tmp_path))


def test_loader_refuses_another_tokenizer_or_length(tmp_path):
    config = _state_union_config(prepared_dir=str(tmp_path))
    prepare(config, str(tmp_path))
    other = config.copy_and_resolve_references()
    other.tokenizer = "builtin:python_docs_sentencepiece"
    kw = dict(split="train", global_batch_size=8, process_index=0, process_count=1, seed=0)
    with pytest.raises(DataError, match=r"prepared with tokenizer .*bert-uncased-vocab.txt.*prepare the data again"):
        make_pretraining_loader(other, **kw)
    longer = config.copy_and_resolve_references()
    longer.max_seq_length = 128
    with pytest.raises(DataError, match="holds instances for max_seq_length 64"):
        make_pretraining_loader(longer, **kw)
    missing = config.copy_and_resolve_references()
    missing.prepared_dir = str(tmp_path / "nothing")
    with pytest.raises(DataError, match="preparation of .* never ran"):
        make_pretraining_loader(missing, **kw)


@pytest.mark.parametrize("damage", ["deleted", "half-truncated", "one byte changed"])
def test_a_damaged_shard_is_named_by_the_loader_and_prepared_again(tmp_path, caplog, damage):
    config = _state_union_config(prepared_dir=str(tmp_path))
    first = prepare(config, str(tmp_path))
    shard = tmp_path / "train-00001-of-00004.array_record"
    assert first["splits"]["train"]["files"][shard.name]["bytes"] == shard.stat().st_size
    good = shard.read_bytes()
    if damage == "deleted":
        shard.unlink()
    elif damage == "half-truncated":
        shard.write_bytes(good[:len(good) // 2])
    else:
        shard.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    kw = dict(split="train", global_batch_size=8, process_index=0, process_count=1, seed=0)
    if damage == "one byte changed":  # the same size: only the checksum tells
        make_pretraining_loader(config, **kw)
        config.verify_checksums = True
    with pytest.raises(DataError, match=f"prepared data damaged: {shard}: .*prepare the damaged shards again"):
        make_pretraining_loader(config, **kw)
    config.verify_checksums = False
    again = prepare(config, str(tmp_path), checksums=True)  # as the prepare command does
    assert f"preparing those shards again: {shard}" in caplog.text
    assert shard.read_bytes() == good
    assert again == first
    make_pretraining_loader(config, **kw)


def test_parallel_preparation_writes_the_same_bytes(tmp_path):
    inline = prepare(_state_union_config(), str(tmp_path / "inline"))
    parallel = prepare(_state_union_config(prepare_workers=2), str(tmp_path / "parallel"))
    assert inline["splits"] == parallel["splits"]
    a, b = _outputs(tmp_path / "inline"), _outputs(tmp_path / "parallel")
    assert [os.path.relpath(p, tmp_path / "inline") for p in a] == [os.path.relpath(p, tmp_path / "parallel") for p in b]
    for p, q in zip(a, b):
        if not p.endswith("manifest.json"):
            assert filecmp.cmp(p, q, shallow=False), p


def test_empty_corpus_is_refused_with_what_was_skipped(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.bin").write_bytes(b"\x00\x01\x02")
    (corpus / "b.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"yielded no documents \(skipped: \{'binary': 1, 'not_utf8': 1\}\)"):
        prepare(bert_config(corpus=str(corpus)), str(tmp_path / "out"))


def test_builtin_corpus_at_smoke_scale_is_reused(tmp_path):
    config = data_config(max_seq_length=128)
    manifest = prepare(config, str(tmp_path))
    assert manifest["corpus"]["documents"] > 150 and manifest["splits"]["train"]["instances"] > 1000
    assert manifest["settings"]["builtin_corpus_version"].startswith("python-")
    # Reused, not redone: a second call rewrites no file (judged by content and modification time, not speed).
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()}
    assert prepare(config, str(tmp_path))["splits"] == manifest["splits"]
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()} == before


def test_command_line(tmp_path):
    require_shared_data()
    result = subprocess.run(
        [sys.executable, "-m", "mobilebert_jax.data.prepare", f"--config={TEACHER}",
         f"--config.data.corpus={CORPUS / 'botchan.txt'}", "--config.data.corpus_format=paragraphs",
         f"--config.data.tokenizer={VOCAB}", f"--config.data.prepared_dir={tmp_path}",
         "--config.data.max_seq_length=64", "--config.data.held_out_fraction=0", "--config.data.num_shards=2"],
        capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["corpus"]["documents"] == 1 and summary["splits"]["train"]["instances"] > 500
    assert list(summary["splits"]) == ["train"]
    assert "tokenizing" in result.stderr and "unit/s" in result.stderr  # the progress bar


def test_data_section_is_checked_against_its_schema():
    """data/config.py holds the fields, the experiments the values: a missing required field or an unknown one is
    named; the optional ones are filled in with their neutral meaning."""
    from mobilebert_jax.data import config as data_config_lib
    from mobilebert_jax.errors import ConfigError

    full = data_config()
    assert set(full) == set(data_config_lib.SCHEMA.fields)
    partial = full.to_dict()
    for field in data_config_lib.SCHEMA.optional:
        del partial[field]
    assert data_config_lib.read(partial).to_dict() == {**partial, **data_config_lib.SCHEMA.optional}
    del partial["masked_lm_prob"]
    with pytest.raises(ConfigError, match=r"config.data is missing required field\(s\) \['masked_lm_prob'\]"):
        data_config_lib.read(partial)
    with pytest.raises(ConfigError, match=r"config.data has unknown field\(s\) \['mask_rate'\]"):
        data_config_lib.read({**full.to_dict(), "mask_rate": 0.15})
    with pytest.raises(ConfigError, match="missing required field"):  # prepare reads it too
        prepare(partial, "unused")


def _count(n):
    return {"instances": n}


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_is_lines_in_the_log_and_a_bar_only_on_a_terminal(tmp_path, monkeypatch, caplog, terminal):
    import io
    import logging

    from mobilebert_jax.data import prepare as prepare_lib

    stderr = io.StringIO()
    monkeypatch.setattr(prepare_lib.sys, "stderr", stderr)
    monkeypatch.setattr(prepare_lib, "_is_terminal", lambda stream: terminal)
    jobs = [(_count, (i,), str(tmp_path / f"done-{i}.json")) for i in range(25)]
    with caplog.at_level(logging.INFO):
        results = prepare_lib._run_pass("instances (train)", jobs, workers=1, unit="shard", count_key="instances")
    assert [r["instances"] for r in results] == list(range(25))
    lines = [r.getMessage() for r in caplog.records if "shards done" in r.getMessage()]
    # One line per tenth (3 of 25 jobs), and the last.
    # Each line gives the rate and, before the last, the time left.
    assert re.fullmatch(r"instances \(train\): 3 of 25 shards done \(instances 3 in this run\), [\d.]+ shard/s, ETA \d+ s",
                        lines[0]), lines[0]
    assert len(lines) == 9 and re.fullmatch(
        r"instances \(train\): 25 of 25 shards done \(instances 300 in this run\), [\d.]+ shard/s", lines[-1]), lines[-1]
    # The bar only on a terminal, where the lines are the log file's alone.
    assert ("\r" in stderr.getvalue()) == terminal
    assert all(getattr(r, "file_only", False) == terminal for r in caplog.records if "shards done" in r.getMessage())
