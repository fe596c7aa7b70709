"""SQuAD: reading (JSON and TFDS), windowed features, span decoding and map-back, end to end on dev-v1.1."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobilebert_jax.data.tokenizers import load_tokenizer
from mobilebert_jax.errors import DataError
from mobilebert_jax.finetune import squad_data, squad_metrics, squad_postprocess
from tests.data_fixtures import SHARED_DATA, VOCAB, require_shared_data

DEV_V11 = SHARED_DATA / "squad" / "dev-v1.1.json"
MAX_ANSWER_LENGTH = 30


@pytest.fixture(scope="module")
def tokenizer():
    require_shared_data()
    return load_tokenizer(str(VOCAB))


@pytest.fixture(scope="module")
def dev(tokenizer):
    examples = squad_data.read_squad_json(str(DEV_V11))
    return examples, squad_data.build_features(examples, tokenizer)


def _representable_span(example, features, feature_ids):
    """(feature, start, end) of a gold answer whose characters are exactly some tokens' characters, with
    the start where that window gives it most context; None when no gold answer is (an answer inside a
    word piece). Found independently of the feature builder's labels."""
    for answer in example.answers:
        begin, end = answer.start, answer.start + len(answer.text)
        for f in feature_ids:
            offsets = features.token_offsets_NxTx2[f]
            starts = np.flatnonzero((offsets[:, 0] == begin) & features.max_context_NxT[f])
            ends = np.flatnonzero(offsets[:, 1] == end)
            if len(starts) and len(ends) and 0 <= ends[0] - starts[0] < MAX_ANSWER_LENGTH:
                return f, starts[0], ends[0]
    return None


def test_gold_logits_give_full_marks_through_features_decoding_and_map_back(dev, tokenizer):
    examples, features = dev
    n, t = features.arrays["input_ids"].shape
    assert len(examples) == 10570 and n > len(examples) and t == 384
    by_example = {}
    for f, e in enumerate(features.example_index_N):
        by_example.setdefault(int(e), []).append(f)
    rng = np.random.default_rng(0)
    start_NxT = rng.normal(0, 1, (n, t)).astype(np.float32)
    end_NxT = rng.normal(0, 1, (n, t)).astype(np.float32)
    unrepresentable, later_window = [], 0
    for e, example in enumerate(examples):
        span = _representable_span(example, features, by_example[e])
        if span is None:
            unrepresentable.append(example)
            continue
        f, s, t_end = span
        start_NxT[f, s] = end_NxT[f, t_end] = 20.0
        later_window += f != by_example[e][0]
    predictions = squad_postprocess.decode_spans(examples, features, start_NxT, end_NxT, version_2=False)
    scored = [e for e in examples if e not in unrepresentable]
    assert squad_metrics.evaluate_v1(scored, predictions.predictions()) == {"exact_match": 100.0, "f1": 100.0}
    # Long contexts: answers that only a later window holds (or holds with most context) were decoded there.
    assert later_window > 50
    # No span decoding can give the two others full marks: one question's every gold answer ("four") is part of
    # a word piece ("fourth"), another's every gold answer is longer than max_answer_length tokens.
    assert len(unrepresentable) == 2
    assert [a.text for a in unrepresentable[0].answers] == ["four"] * 3
    assert all(len(tokenizer.encode(a.text)) > MAX_ANSWER_LENGTH for a in unrepresentable[1].answers)


def test_training_labels_point_at_the_answer_or_cls(dev):
    examples, features = dev
    starts, ends = features.arrays["start_positions"], features.arrays["end_positions"]
    in_window = starts > 0
    assert 0 < (~in_window).sum() < 0.05 * len(starts)  # windows without the answer point at [CLS]
    assert np.all(ends[~in_window] == 0) and np.all(ends[in_window] >= starts[in_window])
    exact = 0
    for f in np.flatnonzero(in_window):
        example = examples[features.example_index_N[f]]
        offsets = features.token_offsets_NxTx2[f]
        text = example.context[offsets[starts[f], 0]:offsets[ends[f], 1]]
        exact += text in [a.text for a in example.answers]
    assert exact / in_window.sum() > 0.999


def test_features_layout(tokenizer):
    context = " ".join(f"word{i}" for i in range(60)) + " The answer is here."
    example = squad_data.SquadExample("q1", "Where is the answer?", context,
                                      (squad_data.Answer("here", context.index("here")),), False, "test")
    features = squad_data.build_features([example], tokenizer, max_seq_length=48, doc_stride=16, max_query_length=4)
    query = tokenizer.encode("Where is the answer?")[:4]
    ids = features.arrays["input_ids"]
    assert ids.shape[1] == 48 and len(features) > 2 and set(features.example_index_N.tolist()) == {0}
    assert list(ids[0, :6]) == [tokenizer.cls_id, *query, tokenizer.sep_id]
    assert np.all(features.arrays["segment_ids"][0, :6] == 0) and features.arrays["segment_ids"][0, 6] == 1
    # Windows are doc_stride tokens apart: the second window starts 16 context tokens after the first.
    context_ids, offsets = tokenizer.encode_with_offsets(context)
    assert list(ids[1, 6:6 + 10]) == context_ids[16:26]
    np.testing.assert_array_equal(features.token_offsets_NxTx2[1, 6], offsets[16])
    assert np.all(features.token_offsets_NxTx2[:, :6] == -1)
    # Each context token is "max context" in exactly one window.
    counts = np.zeros(len(context_ids), int)
    for f in range(len(features)):
        for pos in np.flatnonzero(features.max_context_NxT[f]):
            counts[offsets.index(tuple(features.token_offsets_NxTx2[f, pos]))] += 1
    assert np.all(counts == 1)
    last = len(features) - 1
    s, e = features.arrays["start_positions"][last], features.arrays["end_positions"][last]
    assert s == e > 0 and context[slice(*features.token_offsets_NxTx2[last, s])] == "here"
    assert features.arrays["start_positions"][0] == 0


def _dataset(paragraphs, version="v2.0"):
    return {"version": version, "data": [{"title": "T", "paragraphs": paragraphs}]}


V2_PARAGRAPHS = [{"context": "Paris is the capital of France. It lies on the Seine.", "qas": [
    {"id": "a", "question": "What is the capital of France?", "is_impossible": False,
     "answers": [{"text": "Paris", "answer_start": 0}]},
    {"id": "b", "question": "What is the capital of Mars?", "is_impossible": True, "answers": [],
     "plausible_answers": [{"text": "Paris", "answer_start": 0}]},
    {"id": "c", "question": "Which river?", "is_impossible": False,
     "answers": [{"text": "the Seine", "answer_start": 43}, {"text": "Seine", "answer_start": 47}]}]}]


def test_v2_json_reading(tmp_path):
    path = tmp_path / "dev-v2.0.json"
    path.write_text(json.dumps(_dataset(V2_PARAGRAPHS)))
    examples = squad_data.read_squad_json(str(path))
    assert squad_data.squad_json_version(str(path)) == "2.0"
    assert [(e.qid, e.is_impossible, [a.text for a in e.answers]) for e in examples] == [
        ("a", False, ["Paris"]), ("b", True, []), ("c", False, ["the Seine", "Seine"])]


@pytest.mark.parametrize("change,message", [
    (lambda qa: qa[0]["answers"][0].update(answer_start=3), r"qas\[0\] \(id a\)\.answers\[0\]: text 'Paris' is not at"),
    (lambda qa: qa[1].update(answers=[{"text": "Paris", "answer_start": 0}]), r"id b\): an unanswerable question"),
    (lambda qa: qa[2].update(id="a"), r"qas\[2\]: question id 'a' repeats"),
    (lambda qa: qa[0].pop("question"), r"qas\[0\]: missing field 'question'"),
    (lambda qa: qa[0]["answers"][0].update(answer_start="0"), r"answers\[0\]\.answer_start: expected int"),
])
def test_bad_squad_json_names_the_question(tmp_path, change, message):
    paragraphs = json.loads(json.dumps(V2_PARAGRAPHS))
    change(paragraphs[0]["qas"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_dataset(paragraphs)))
    with pytest.raises(DataError, match=message):
        squad_data.read_squad_json(str(path))


def test_v1_file_refuses_unanswerable_questions_and_unknown_versions(tmp_path):
    paragraphs = json.loads(json.dumps(V2_PARAGRAPHS))
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(_dataset(paragraphs, version="1.1")))
    with pytest.raises(DataError, match=r"id b\): an answerable question has no answers \(v1.1 has no"):
        squad_data.read_squad_json(str(path))
    path.write_text(json.dumps(_dataset(paragraphs, version="3.0")))
    with pytest.raises(DataError, match="SQuAD version '3.0'"):
        squad_data.read_squad_json(str(path))
    (tmp_path / "broken.json").write_text('{"data": [')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON \(line 1"):
        squad_data.read_squad_json(str(tmp_path / "broken.json"))


def test_tfds_squad_mapping():
    records = {("squad/v2.0", "validation"): [
        {"id": b"a", "title": b"T", "context": b"Paris is nice.", "question": b"Where?",
         "answers": {"text": np.array([b"Paris", b"Paris"]), "answer_start": np.array([0, 0], np.int32)}},
        {"id": b"b", "title": b"T", "context": b"Paris is nice.", "question": b"Why?",
         "answers": {"text": np.array([], dtype=object), "answer_start": np.array([], np.int32)}}]}
    opened = []

    def open_source(name, split, data_dir):
        opened.append((name, split, data_dir))
        return records[name, split]

    examples = squad_data.read_squad_tfds("2.0", "validation", "/tfds", open_source=open_source)
    assert opened == [("squad/v2.0", "validation", "/tfds")]
    assert [(e.qid, e.question, e.is_impossible, e.answers) for e in examples] == [
        ("a", "Where?", False, (squad_data.Answer("Paris", 0),) * 2), ("b", "Why?", True, ())]
    with pytest.raises(DataError, match=r"tfds:squad/v1.1:validation\[1\] \(id b\): an answerable question"):
        squad_data.read_squad_tfds("1.1", "validation", open_source=lambda n, s, d: records["squad/v2.0", s])


def test_v2_decoding_null_odds_and_threshold(tokenizer):
    examples = [squad_data.SquadExample(qa["id"], qa["question"], V2_PARAGRAPHS[0]["context"],
                                        tuple(squad_data.Answer(a["text"], a["answer_start"]) for a in qa["answers"]),
                                        qa["is_impossible"], qa["id"]) for qa in V2_PARAGRAPHS[0]["qas"]]
    features = squad_data.build_features(examples, tokenizer, max_seq_length=40, doc_stride=8, max_query_length=10)
    n, t = features.arrays["input_ids"].shape
    start_NxT, end_NxT = np.zeros((n, t), np.float32), np.zeros((n, t), np.float32)
    wanted = {"a": ("Paris", 0.0), "b": ("Paris", 5.0), "c": ("Seine", -1.0)}  # span text, [CLS] logit
    for f, e in enumerate(features.example_index_N):
        text, null_logit = wanted[examples[e].qid]
        begin = examples[e].context.index(text)
        s = np.flatnonzero(features.token_offsets_NxTx2[f, :, 0] == begin)
        if len(s):
            start_NxT[f, s[0]] = end_NxT[f, s[0]] = 2.0
        start_NxT[f, 0] = end_NxT[f, 0] = null_logit
    decoded = squad_postprocess.decode_spans(examples, features, start_NxT, end_NxT, version_2=True)
    assert decoded.best_span == {"a": "Paris", "b": "Paris", "c": "Seine"}
    assert decoded.null_odds == pytest.approx({"a": -4.0, "b": 6.0, "c": -6.0})
    assert decoded.predictions(0.0) == {"a": "Paris", "b": "", "c": "Seine"}
    assert decoded.predictions(10.0) == decoded.best_span
    nbest = decoded.nbest["b"]
    assert nbest[0].text == "" and sum(c.probability for c in nbest) == pytest.approx(1.0)
    threshold = squad_metrics.choose_null_threshold(examples, decoded.best_span, decoded.null_odds)
    assert -4.0 <= threshold < 6.0
    report = squad_metrics.evaluate_v2(examples, decoded.predictions(threshold))
    assert report["exact"] == report["f1"] == 100.0


def test_written_prediction_files(tmp_path):
    paths = squad_metrics.write_predictions(str(tmp_path), {"a": "Paris", "b": ""}, {"a": -4.0, "b": 6.0})
    assert [p.split("/")[-1] for p in paths] == ["predictions.json", "null_odds.json"]
    assert json.loads((tmp_path / "predictions.json").read_text()) == {"a": "Paris", "b": ""}
    assert json.loads((tmp_path / "null_odds.json").read_text()) == {"a": -4.0, "b": 6.0}
