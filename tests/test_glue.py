"""GLUE readers, features, TFDS mapping and submission files, on the shared GLUE files and on files written here."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.errors import DataError
from mobilebert_jax.finetune import glue, glue_submission, glue_tfds
from mobilebert_jax.finetune.features import encode_pair, truncate_pair
from tests.data_fixtures import SHARED_DATA, VOCAB, require_shared_data

GLUE_DIR = SHARED_DATA / "glue"

# Rows in the shared copies (shared/data/README.md).
SHARED_COUNTS = {("cola", "train"): 8551, ("cola", "dev"): 1043, ("sst2", "train"): 67349, ("sst2", "dev"): 872,
                 ("mrpc", "train"): 3668, ("mrpc", "dev"): 408, ("stsb", "train"): 5749, ("stsb", "dev"): 1500,
                 ("rte", "train"): 2490, ("rte", "dev"): 277, ("qnli", "dev"): 5463}


@pytest.fixture(scope="module")
def tokenizer():
    require_shared_data()
    return load_tokenizer(str(VOCAB))


@pytest.mark.parametrize("task_name,split", sorted(SHARED_COUNTS))
def test_shared_glue_files_read_completely(task_name, split):
    require_shared_data()
    task = glue.get_task(task_name)
    examples = glue.read_split(task, str(GLUE_DIR), split)
    assert len(examples) == SHARED_COUNTS[task_name, split]
    labels = glue.label_array(task, examples)
    if task.is_regression:
        assert labels.dtype == np.float32 and 0.0 <= labels.min() and labels.max() <= 5.0 and labels.std() > 1.0
    else:
        # Every class occurs: a wrong column would give one constant label or an error.
        assert set(np.unique(labels)) == set(range(task.num_labels))
    assert all(e.text_a for e in examples)
    assert all((e.text_b is not None) == (task.text_b is not None) for e in examples)


def test_shared_files_pick_the_right_columns():
    require_shared_data()
    mrpc = glue.read_split(glue.get_task("mrpc"), str(GLUE_DIR), "dev")[0]
    assert mrpc.text_a.startswith("He said the foodservice pie business") and mrpc.label == 1
    assert mrpc.text_b.startswith('"The foodservice pie business does not fit')  # quotes are text, not quoting
    stsb = glue.read_split(glue.get_task("stsb"), str(GLUE_DIR), "dev")[0]
    assert (stsb.guid, stsb.text_a, stsb.text_b, stsb.label) == (
        "0", "A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)
    cola = glue.read_split(glue.get_task("cola"), str(GLUE_DIR), "dev")[0]
    assert (cola.text_a, cola.label) == ("The sailors rode the breeze clear of the rocks.", 1)
    rte = glue.read_split(glue.get_task("rte"), str(GLUE_DIR / "RTE"), "dev")[0]  # the task's own folder works too
    assert rte.label == glue.get_task("rte").labels.index("not_entailment")


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(fields) + "\n" for fields in lines), encoding="utf-8")


MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]


def test_files_not_in_shared_data_are_read_in_their_glue_layouts(tmp_path):
    _write(tmp_path / "QQP" / "train.tsv", [
        ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        ["7", "15", "16", "How do I read?", "How can I learn to read?", "1"],
        ["8", "17", "18", "Why is the sky blue?", "What is 2+2?", "0"]])
    _write(tmp_path / "QQP" / "test.tsv", [["id", "question1", "question2"], ["0", "Is it?", "Is it not?"]])
    _write(tmp_path / "MNLI" / "train.tsv", [
        MNLI_TRAIN_HEADER, ["0", "1", "1n", "gov", "(a)", "(b)", "(A)", "(B)", "A man.", "A person.", "entailment",
                            "entailment"]])
    _write(tmp_path / "MNLI" / "dev_mismatched.tsv", [
        MNLI_DEV_HEADER, ["3", "1", "1c", "fiction", "(a)", "(b)", "(A)", "(B)", "It rains.", "It is dry.",
                          "contradiction", "contradiction", "neutral", "contradiction", "contradiction",
                          "contradiction"]])
    _write(tmp_path / "MNLI" / "test_matched.tsv", [
        MNLI_TRAIN_HEADER[:10], ["9", "1", "1x", "gov", "(a)", "(b)", "(A)", "(B)", "P.", "H."]])
    _write(tmp_path / "WNLI" / "train.tsv", [["index", "sentence1", "sentence2", "label"],
                                             ["0", "I stuck a pin.", "The pin stuck.", "1"]])
    _write(tmp_path / "QNLI" / "train.tsv", [["index", "question", "sentence", "label"],
                                             ["0", "Who?", "Nobody.", "not_entailment"]])
    _write(tmp_path / "CoLA" / "test.tsv", [["index", "sentence"], ["0", "Bill whistled past the house."]])
    _write(tmp_path / "STS-B" / "test.tsv", [
        ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"],
        ["0", "main-captions", "MSRvid", "2012test", "0024", "none", "none", "A girl sings.", "A girl is singing."]])

    d = str(tmp_path)
    qqp = glue.get_task("qqp")
    train = glue.read_split(qqp, d, "train")
    assert [(e.guid, e.text_a, e.text_b, e.label) for e in train] == [
        ("7", "How do I read?", "How can I learn to read?", 1), ("8", "Why is the sky blue?", "What is 2+2?", 0)]
    assert [(e.guid, e.label) for e in glue.read_split(qqp, d, "test")] == [("0", None)]
    mnli = glue.get_task("mnli")
    assert [(e.text_a, e.text_b, mnli.labels[e.label]) for e in glue.read_split(mnli, d, "train")] == [
        ("A man.", "A person.", "entailment")]
    # The gold label, not one annotator's label1.
    assert [mnli.labels[e.label] for e in glue.read_split(mnli, d, "dev_mismatched")] == ["contradiction"]
    assert [(e.guid, e.text_a, e.label) for e in glue.read_split(mnli, d, "test_matched")] == [("9", "P.", None)]
    assert glue.read_split(glue.get_task("wnli"), d, "train")[0].label == 1
    assert glue.read_split(glue.get_task("qnli"), d, "train")[0].label == 1
    assert [(e.guid, e.text_a) for e in glue.read_split(glue.get_task("cola"), d, "test")] == [
        ("0", "Bill whistled past the house.")]
    assert glue.read_split(glue.get_task("stsb"), d, "test")[0].text_b == "A girl is singing."


RTE_HEADER = ["index", "sentence1", "sentence2", "label"]


@pytest.mark.parametrize("rows,message", [
    ([RTE_HEADER, ["0", "a", "b", "maybe"]], r"rte\.tsv:2: column 'label': label 'maybe'"),
    ([RTE_HEADER, ["0", "a", "b"]], r"rte\.tsv:2: 3 tab-separated fields, expected 4"),
    ([["index", "premise", "sentence2", "label"], ["0", "a", "b", "entailment"]], r"rte\.tsv:1: header .* 'sentence1'"),
])
def test_bad_rows_name_file_line_and_column(tmp_path, rows, message):
    _write(tmp_path / "rte.tsv", rows)
    with pytest.raises(DataError, match=message):
        glue.read_tsv(glue.get_task("rte"), str(tmp_path / "rte.tsv"))


def test_bad_scores_and_missing_files(tmp_path):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"]
    _write(tmp_path / "stsb.tsv", [header, ["0", "g", "f", "y", "o", "s", "s", "a", "b", "5.5"]])
    with pytest.raises(DataError, match=r"stsb\.tsv:2: column 'score': score 5.5 outside"):
        glue.read_tsv(glue.get_task("stsb"), str(tmp_path / "stsb.tsv"))
    with pytest.raises(DataError, match="GLUE mnli has no split 'dev'"):
        glue.read_split(glue.get_task("mnli"), str(tmp_path), "dev")
    with pytest.raises(DataError, match=r"QNLI/train\.tsv: GLUE qnli file not found"):
        glue.read_split(glue.get_task("qnli"), str(tmp_path), "train")
    with pytest.raises(DataError, match="unknown GLUE task 'squad'"):
        glue.get_task("squad")


def test_malformed_rows_can_be_skipped(tmp_path, capsys):
    _write(tmp_path / "q.tsv", [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                                ["1", "1", "2", "a?", "b?", "0"], ["2", "3", "a question split by a newline"],
                                ["3", "5", "6", "c?", "d?", "1"]])
    examples = glue.read_tsv(glue.get_task("qqp"), str(tmp_path / "q.tsv"), skip_malformed=True)
    assert [e.guid for e in examples] == ["1", "3"]
    assert "skipped 1 rows" in capsys.readouterr().err


def test_truncation_is_longest_first_with_ties_from_the_second():
    assert truncate_pair([1, 2, 3, 4, 5], [6, 7], 5) == ([1, 2, 3], [6, 7])
    assert truncate_pair([1, 2, 3], [4, 5, 6], 4) == ([1, 2], [4, 5])
    assert truncate_pair([1, 2], [3, 4, 5], 4) == ([1, 2], [3, 4])
    ids, segments = encode_pair([10, 11], [12], cls_id=2, sep_id=3, max_seq_length=8)
    assert (ids, segments) == ([2, 10, 11, 3, 12, 3], [0, 0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="max_seq_length=3 leaves no room"):
        encode_pair([1], [2], cls_id=2, sep_id=3, max_seq_length=3)


# HF's longest-first splits a pair's excess differently from TF1 BERT's one-token-at-a-time popping (tested
# above), so pairs are compared untruncated and single sentences truncated.
@pytest.mark.parametrize("task_name,max_seq_length", [("mrpc", 160), ("sst2", 16), ("stsb", 128)])
def test_features_match_hf_bert_tokenizer(tokenizer, tmp_path, task_name, max_seq_length):
    transformers = pytest.importorskip("transformers")
    shutil.copy(VOCAB, tmp_path / "vocab.txt")
    hf = transformers.BertTokenizerFast.from_pretrained(str(tmp_path), do_lower_case=True)
    task = glue.get_task(task_name)
    examples = glue.read_split(task, str(GLUE_DIR), "dev")[:200]
    ours = glue.glue_features(task, examples, tokenizer, max_seq_length)
    theirs = hf([e.text_a for e in examples], [e.text_b for e in examples] if task.text_b else None,
                max_length=max_seq_length, truncation="longest_first", padding="max_length", return_tensors="np")
    np.testing.assert_array_equal(ours["input_ids"], theirs["input_ids"])
    np.testing.assert_array_equal(ours["segment_ids"], theirs["token_type_ids"])
    np.testing.assert_array_equal(ours["input_mask"], theirs["attention_mask"])
    assert ours["input_ids"].dtype == np.int32 and ours["input_ids"].shape == (200, max_seq_length)
    np.testing.assert_array_equal(ours["label"], glue.label_array(task, examples))
    truncated = ours["input_mask"][:, -1].sum()
    assert truncated == 0 if task.text_b else truncated > 0


class FakeSource(list):
    """What `tfds.data_source` returns: random access to feature dicts, strings as bytes."""


def _fake_opener(records: dict):
    opened = []

    def open_source(name, split, data_dir):
        opened.append((name, split, data_dir))
        return FakeSource(records[name, split])

    return open_source, opened


def test_tfds_layouts_agree_with_the_tfds_builders():
    tfds_glue = pytest.importorskip("tensorflow_datasets.text.glue")
    configs = {c.name: c for c in tfds_glue.Glue.BUILDER_CONFIGS}
    for name, layout in glue_tfds.LAYOUTS.items():
        config = configs[layout.config]
        assert (None if config.label_classes is None else tuple(config.label_classes)) == layout.label_names, name
        assert {layout.text_a, layout.text_b} - {None} == set(config.text_features), name
        if layout.to_task_label is not None:
            assert sorted(layout.to_task_label.values()) == sorted(glue.TASKS[name].labels), name


def test_tfds_examples_map_labels_by_name():
    records = {
        ("glue/mnli", "validation_mismatched"): [
            {"idx": np.int32(4), "premise": b"It rains.", "hypothesis": b"It is dry.", "label": np.int64(2)},
            {"idx": np.int32(5), "premise": b"A dog.", "hypothesis": b"An animal.", "label": np.int64(0)}],
        ("glue/mnli", "test_matched"): [{"idx": 0, "premise": b"P.", "hypothesis": b"H.", "label": -1}],
        ("glue/wnli", "train"): [{"idx": 0, "sentence1": b"a", "sentence2": b"b", "label": 1}],
        ("glue/stsb", "validation"): [{"idx": 1, "sentence1": b"a", "sentence2": "b", "label": np.float32(3.8)}],
        ("glue/cola", "train"): [{"idx": 0, "sentence": "Caf\u00e9s open.".encode(), "label": 0}],
        ("glue/rte", "train"): [{"idx": 0, "sentence1": b"a", "label": 0}],
    }
    open_source, opened = _fake_opener(records)
    mnli = glue.get_task("mnli")
    dev = glue_tfds.read_tfds(mnli, "dev_mismatched", "/data/tfds", open_source=open_source)
    assert opened == [("glue/mnli", "validation_mismatched", "/data/tfds")]
    assert [(e.guid, e.text_a, e.text_b, mnli.labels[e.label]) for e in dev] == [
        ("4", "It rains.", "It is dry.", "contradiction"), ("5", "A dog.", "An animal.", "entailment")]
    assert glue_tfds.read_tfds(mnli, "test_matched", open_source=open_source)[0].label is None
    assert glue_tfds.read_tfds(glue.get_task("wnli"), "train", open_source=open_source)[0].label == 1
    assert glue_tfds.read_tfds(glue.get_task("stsb"), "dev", open_source=open_source)[0].label == pytest.approx(3.8)
    assert glue_tfds.read_tfds(glue.get_task("cola"), "train", open_source=open_source)[0].text_a == "Caf\u00e9s open."
    with pytest.raises(DataError, match=r"tfds:glue/rte:train\[0\]: no field 'sentence2'"):
        glue_tfds.read_tfds(glue.get_task("rte"), "train", open_source=open_source)


def test_default_tfds_opener_asks_for_a_prepared_data_source(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []

    def fake_data_source(name, split, data_dir, download):
        calls.append((name, split, data_dir, download))
        return FakeSource([{"idx": 3, "sentence": b"fine.", "label": 1}])

    monkeypatch.setattr(tfds, "data_source", fake_data_source)
    examples = glue_tfds.read_tfds(glue.get_task("sst2"), "dev", "/tfds")
    assert calls == [("glue/sst2", "validation", "/tfds", False)]
    assert [(e.guid, e.text_a, e.label) for e in examples] == [("3", "fine.", 1)]

    def missing(*args, **kwargs):
        raise FileNotFoundError("no dataset info")

    monkeypatch.setattr(tfds, "data_source", missing)
    with pytest.raises(DataError, match=r"TFDS dataset 'glue/sst2' split 'train'.*tfds build glue/sst2"):
        glue_tfds.read_tfds(glue.get_task("sst2"), "train", "/tfds")


def test_submission_files_use_glue_names_and_label_spellings(tmp_path):
    examples = [glue.GlueExample(str(i), "a", "b", None, f"t:{i}") for i in (0, 1, 2)]
    mnli = glue.get_task("mnli")
    path = glue_submission.write_submission(mnli, "test_mismatched", examples, np.array([0, 1, 2]), str(tmp_path))
    assert path.endswith("MNLI-mm.tsv")
    assert (tmp_path / "MNLI-mm.tsv").read_text() == \
        "index\tprediction\n0\tcontradiction\n1\tentailment\n2\tneutral\n"
    glue_submission.write_submission(glue.get_task("stsb"), "test", examples, np.array([-0.2, 2.34567, 7.0]),
                                     str(tmp_path))
    assert (tmp_path / "STS-B.tsv").read_text() == "index\tprediction\n0\t0.000\n1\t2.346\n2\t5.000\n"
    glue_submission.write_submission(glue.get_task("cola"), "test", examples, np.array([1, 0, 1]), str(tmp_path))
    assert (tmp_path / "CoLA.tsv").read_text().splitlines()[1:] == ["0\t1", "1\t0", "2\t1"]
    with pytest.raises(DataError, match="'dev' is not a test split"):
        glue_submission.write_submission(mnli, "dev", examples, np.zeros(3), str(tmp_path))
    with pytest.raises(ValueError, match="class index 3 outside"):
        glue_submission.write_submission(mnli, "test_matched", examples, np.array([0, 1, 3]), str(tmp_path))


def test_task_heads():
    assert {n: (t.num_labels, t.is_regression) for n, t in glue.TASKS.items()} == {
        "cola": (2, False), "sst2": (2, False), "mrpc": (2, False), "stsb": (1, True), "qqp": (2, False),
        "mnli": (3, False), "qnli": (2, False), "rte": (2, False), "wnli": (2, False)}
    assert glue.get_task("SST-2") is glue.TASKS["sst2"]
