"""Corpus sources: the three text layouts, TFDS, the builtin corpus, and every kind of bad input."""

from __future__ import annotations

import re

import pytest

from mobilebert_jax.data.sources import SkipLog, plan_units, python_docs, read_unit
from mobilebert_jax.data.sources.text_files import read_documents
from mobilebert_jax.errors import DataError
from tests.data_fixtures import CORPUS, require_shared_data


def _read(path, fmt, max_line_bytes=100_000):
    skips = SkipLog()
    return read_documents(str(path), fmt, skips, max_line_bytes=max_line_bytes), skips


def test_bert_layout_blank_lines_separate_documents(tmp_path):
    path = tmp_path / "bert.txt"
    path.write_bytes("\ufeffFirst sentence.\r\nSecond one.\r\n\r\n\r\nOther doc.\n  \nThird doc, last line".encode())
    docs, skips = _read(path, "bert")
    assert docs == [["First sentence.", "Second one."], ["Other doc."], ["Third doc, last line"]]
    assert not skips.counts


def test_paragraphs_layout_joins_wrapped_lines_and_splits_sentences(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("It was a dark night. The rain\nfell hard.\n\nMr. Smith said hello! Then he left.\n", "utf-8")
    docs, _ = _read(path, "paragraphs")
    assert docs == [["It was a dark night.", "The rain fell hard.", "Mr. Smith said hello!", "Then he left."]]


def test_wikitext_layout_on_the_real_file():
    require_shared_data()
    path = CORPUS / "wikitext-2-raw-test.txt"
    titles = [l for l in path.read_text("utf-8").splitlines() if re.match(r"^ = [^=].* = $", l)]
    docs, skips = _read(path, "wikitext")
    assert len(docs) == len(titles) > 50
    assert docs[0][0].startswith("Robert Boulter is an English film")
    assert not any(s.startswith("= =") for d in docs for s in d)
    assert not skips.counts


def test_real_latin1_files_are_skipped_counted_and_named():
    require_shared_data()
    units = plan_units(str(CORPUS / "state_union"), corpus_format="paragraphs")
    skips = SkipLog()
    docs = [d for u in units for d in read_unit(u, skips, max_line_bytes=100_000)]
    files = sorted((CORPUS / "state_union").glob("*.txt"))
    latin1 = [f for f in files if not _is_utf8(f.read_bytes())]
    assert latin1, "the shared corpus is expected to hold ISO-8859 files"
    assert skips.counts["not_utf8"] == len(latin1)
    assert len(docs) == len(files) - len(latin1)
    named = " ".join(skips.examples["not_utf8"])
    assert all(f.name in named for f in latin1)
    assert re.search(r"line \d+, byte \d+", named)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_binary_empty_and_overlong_lines(tmp_path):
    (tmp_path / "a_binary.bin").write_bytes(b"\x7fELF\x00\x00\x01 some text")
    (tmp_path / "b_empty.txt").write_text("  \n\n", "utf-8")
    (tmp_path / "c_long.txt").write_text("Short one.\n" + "x" * 3_000_000 + "\nAfter the long line.\n\nNext doc.\n")
    (tmp_path / "d_late_nul.txt").write_bytes(b"fine\n" * 5000 + b"bad\x00line\n")
    units = plan_units(str(tmp_path), corpus_format="bert")
    skips = SkipLog()
    docs = [d for u in units for d in read_unit(u, skips, max_line_bytes=1000)]
    assert docs == [["Short one.", "After the long line."], ["Next doc."]]
    assert skips.counts == {"binary": 2, "empty_file": 1, "line_too_long": 1}
    assert any("c_long.txt:2: 3000001 bytes" in e for e in skips.examples["line_too_long"])
    assert any("d_late_nul.txt: NUL byte on line 5001" in e for e in skips.examples["binary"])
    assert any("a_binary.bin" in e for e in skips.examples["binary"])


def test_missing_paths_and_bad_specs_are_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        plan_units(str(tmp_path / "nope.txt"), corpus_format="bert")
    with pytest.raises(DataError, match="matches no file"):
        plan_units(str(tmp_path / "*.txt"), corpus_format="bert")
    with pytest.raises(DataError, match="holds no file"):
        plan_units(str(tmp_path), corpus_format="bert")
    with pytest.raises(DataError, match="corpus_format must be one of"):
        plan_units(str(tmp_path), corpus_format="markdown")
    with pytest.raises(DataError, match="only builtin corpus"):
        plan_units("builtin:wikipedia", corpus_format="bert")
    with pytest.raises(DataError, match="data.corpus is empty"):
        plan_units(" , ", corpus_format="bert")


def test_files_are_grouped_into_units_in_sorted_order(tmp_path):
    for i in range(5):
        (tmp_path / f"f{i}.txt").write_text(f"Doc {i}.\n" * 100, "utf-8")
    units = plan_units(f"{tmp_path}/*.txt", corpus_format="bert", unit_bytes=1500)
    assert [len(u.paths) for u in units] == [2, 2, 1]
    assert [p for u in units for p in u.paths] == sorted(str(p) for p in tmp_path.glob("*.txt"))


def test_builtin_python_docs_corpus_is_real_prose():
    units = plan_units("builtin:python_docs", corpus_format="bert")
    skips = SkipLog()
    docs = [d for u in units for d in read_unit(u, skips, max_line_bytes=100_000)]
    chars = sum(len(s) for d in docs for s in d)
    assert len(docs) > 150 and chars > 500_000
    assert not skips.counts
    topics = python_docs.read_documents("topics", 0, 0, SkipLog())
    assert any(s.startswith("Assert statements are a convenient way") for d in topics for s in d)
    assert not any(s.startswith(">>>") for d in docs for s in d)


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")

    class DataTestTinyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"title": tfds.features.Text(), "text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(7), "test": self._generate_examples(2)}

        def _generate_examples(self, n):
            for i in range(n):
                text = "" if i == 3 else f"Document {i} starts here. It has two sentences.\n\nA second paragraph {i}."
                yield i, {"title": f"Doc {i}", "text": text}

    data_dir = tmp_path_factory.mktemp("tfds")
    DataTestTinyText(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir)


def test_tfds_source_reads_a_locally_built_dataset(tiny_tfds):
    units = plan_units("tfds:data_test_tiny_text", corpus_format="bert", tfds_data_dir=tiny_tfds,
                       tfds_examples_per_unit=4)
    assert [(u.start, u.stop) for u in units] == [(0, 4), (4, 7)]
    skips = SkipLog()
    docs = [d for u in units for d in read_unit(u, skips, max_line_bytes=100_000)]
    assert len(docs) == 6 and skips.counts == {"empty_document": 1}
    assert all(len(d) == 3 and d[1] == "It has two sentences." for d in docs)
    test_units = plan_units("tfds:data_test_tiny_text:test", corpus_format="bert", tfds_data_dir=tiny_tfds)
    assert sum(u.stop - u.start for u in test_units) == 2


def test_tfds_missing_dataset_or_field_is_a_clear_error(tiny_tfds):
    with pytest.raises(DataError, match="could not be opened.*Prepare it first"):
        plan_units("tfds:data_test_absent_text", corpus_format="bert", tfds_data_dir=tiny_tfds)
    unit = plan_units("tfds:data_test_tiny_text", corpus_format="bert", tfds_data_dir=tiny_tfds,
                      tfds_text_field="body")[0]
    with pytest.raises(DataError, match=r"example 0 has no field 'body' \(fields: \['text', 'title'\]\)"):
        read_unit(unit, SkipLog(), max_line_bytes=100_000)


@pytest.mark.parametrize("fmt", ["bert", "wikitext"])
def test_a_large_file_is_cut_into_byte_ranges_that_hold_its_documents_once(tmp_path, fmt):
    """Cut anywhere (blank-line runs, whitespace-only lines, CRLF, a BOM, titles and sections), the ranges' documents
    are the whole file's, in order; each range is its own work unit."""
    import random
    rnd = random.Random(fmt)
    for trial in range(40):
        lines = []
        for i in range(rnd.randint(1, 50)):
            r = rnd.random()
            if r < 0.2:
                lines.append(rnd.choice(["", "  ", "\t", " \r"]))
            elif r < 0.3 and fmt == "wikitext":
                lines.append(f" = Title {i} = ")
            elif r < 0.35 and fmt == "wikitext":
                lines.append(f" = = Section {i} = = ")
            else:
                lines.append(" ".join(rnd.choice(["alpha", "beta.", "Gamma", "delta!", "é"])
                                      for _ in range(rnd.randint(1, 12))))
        path = tmp_path / f"{trial}.txt"
        path.write_text(("\ufeff" if trial % 5 == 0 else "") + "First line.\n" + "\n".join(lines), "utf-8")
        unit_bytes = rnd.randint(1, 200)
        units = plan_units(str(path), corpus_format=fmt, unit_bytes=unit_bytes)
        assert len(units) == -(-path.stat().st_size // unit_bytes)
        assert [d for u in units for d in read_unit(u, SkipLog(), max_line_bytes=100_000)] == _read(path, fmt)[0]


def test_a_bad_line_skips_only_the_range_that_holds_it(tmp_path):
    path = tmp_path / "bert.txt"
    path.write_bytes(b"One.\n\nTwo \xe9.\n\nThree.\n")
    units = plan_units(str(path), corpus_format="bert", unit_bytes=5)
    skips = SkipLog()
    assert [d for u in units for d in read_unit(u, skips, max_line_bytes=100_000)] == [["One."], ["Three."]]
    assert skips.counts == {"not_utf8": 1}
    assert skips.to_dict()["examples"]["not_utf8"][0].startswith(f"{path}[5:10]: the line at byte 6, byte 4")
    assert len(plan_units(str(path), corpus_format="paragraphs", unit_bytes=6)) == 1  # one document: never cut
