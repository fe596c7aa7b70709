"""The Apache Beam preparation (data/beam_prepare.py) writes the in-process path's bytes.

Needs apache_beam (the `beam` extra); skipped with the reason where it is not importable. Slow (a Beam job with
worker processes):

    python -m pytest -q -m slow tests/test_data_prepare_beam.py
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys

import pytest

from mobilebert_jax.data.sources import python_docs, SkipLog
from limits import HANG_S

TEACHER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                       "teacher_ib_bert_large.py")


def _bert_corpus(path):
    """The embedded corpus's documents in BERT's layout: one file of about 1 MB, cut into byte-range units."""
    with open(path, "w", encoding="utf-8") as f:
        for part, start, stop in python_docs.unit_parts():
            for document in python_docs.read_documents(part, start, stop, SkipLog()):
                f.write("\n".join(document) + "\n\n")


def _prepare(out, corpus, *extra):
    result = subprocess.run(
        [sys.executable, "-m", "mobilebert_jax.data.prepare", *extra, f"--config={TEACHER}:smoke",
         f"--config.data.corpus={corpus}", "--config.data.corpus_format=bert", "--config.data.unit_bytes=200000",
         "--config.data.max_seq_length=64", "--config.data.num_shards=3", "--config.data.held_out_fraction=0.05",
         f"--config.data.prepared_dir={out}"],
        capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


@pytest.mark.slow
def test_direct_runner_with_worker_processes_writes_the_in_process_bytes(tmp_path):
    pytest.importorskip("apache_beam", reason="apache_beam is not installed (pip install 'mobilebert-jax[beam]')")
    corpus = tmp_path / "corpus.txt"
    _bert_corpus(corpus)
    inline = _prepare(tmp_path / "inline", corpus, "--config.data.prepare_workers=2")
    beam = _prepare(tmp_path / "beam", corpus, "--runner=DirectRunner", "--direct_num_workers=2",
                    "--direct_running_mode=multi_processing")
    assert beam == {**inline, "prepared_dir": str(tmp_path / "beam")}
    assert inline["corpus"]["units"] == -(-corpus.stat().st_size // 200_000) > 1  # the one file, in byte ranges
    files = sorted(os.path.relpath(os.path.join(d, n), tmp_path / "inline")
                   for d, _, names in os.walk(tmp_path / "inline") for n in names)
    assert "manifest.json" in files and "train-00002-of-00003.array_record" in files
    assert files == sorted(os.path.relpath(os.path.join(d, n), tmp_path / "beam")
                           for d, _, names in os.walk(tmp_path / "beam") for n in names)
    for name in files:
        assert filecmp.cmp(tmp_path / "inline" / name, tmp_path / "beam" / name, shallow=False), name
    # A rerun on Beam finds the directory finished and reuses it.
    assert _prepare(tmp_path / "beam", corpus, "--runner=DirectRunner") == beam
