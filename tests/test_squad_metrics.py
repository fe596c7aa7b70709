"""SQuAD EM/F1 against hand-worked cases read off the official v1.1 and v2.0 evaluation scripts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mobilebert_jax.finetune import squad_metrics
from mobilebert_jax.finetune.squad_data import Answer, SquadExample


@pytest.mark.parametrize("text,normalized", [
    ("The Cat's  hat!", "cats hat"),  # lower, punctuation gone (not split), article gone, spaces collapsed
    ("an apple a day", "apple day"),
    ("theater and another", "theater and another"),  # articles only as whole words
    ("A-B", "ab"),
    ("Denver Broncos\u2014champions", "denver broncos\u2014champions"),  # an em dash is not ASCII punctuation
    ("  ", ""),
    ("(the) 1,000", "1000"),
])
def test_normalization(text, normalized):
    assert squad_metrics.normalize_answer(text) == normalized


def test_exact_match_and_f1():
    assert squad_metrics.exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert squad_metrics.exact_match("Broncos", "Denver Broncos") == 0.0
    # pred {cat, sat, on, mat} vs gold {cat, on, mat}: P = 3/4, R = 1.
    assert squad_metrics.f1_v1("the cat sat on the mat", "cat on mat") == pytest.approx(6 / 7)
    # Counts are a multiset intersection: x x y vs x y y share one x and one y.
    assert squad_metrics.f1_v1("x x y", "x y y") == pytest.approx(2 / 3)
    assert squad_metrics.f1_v1("", "cat") == 0.0 and squad_metrics.f1_v1("", "") == 0.0
    assert squad_metrics.f1_v2("", "") == 1.0 and squad_metrics.f1_v2("the", "") == 1.0
    assert squad_metrics.f1_v2("", "cat") == 0.0 and squad_metrics.f1_v2("cat", "") == 0.0


def _example(qid, *answers):
    return SquadExample(qid, "q?", "context", tuple(Answer(a, 0) for a in answers), not answers, qid)


def test_v1_takes_the_best_gold_and_scores_missing_predictions_zero():
    examples = [_example("1", "Denver Broncos", "Broncos"), _example("2", "four"), _example("3", "x")]
    scores = squad_metrics.evaluate_v1(examples, {"1": "broncos", "2": "four days"})
    # 1: EM 1, F1 1 (second gold); 2: EM 0, F1 2/3; 3: missing, 0.
    assert scores == pytest.approx({"exact_match": 100 / 3, "f1": 100 * (1 + 2 / 3) / 3})


def test_v2_report_and_threshold_search():
    examples = [_example("1", "Paris"), _example("2"), _example("3", "Seine", "the Seine")]
    predictions = {"1": "Paris", "2": "Paris", "3": "Rhine"}
    null_odds = {"1": -1.0, "2": 2.0, "3": 0.5}
    report = squad_metrics.evaluate_v2(examples, predictions, null_odds)
    # na-prob-thresh 1.0: question 2 (odds 2 > 1) counts as answered "no answer", which is right.
    assert report["exact"] == pytest.approx(200 / 3) and report["f1"] == pytest.approx(200 / 3)
    assert (report["HasAns_total"], report["NoAns_total"]) == (2.0, 1.0)
    assert report["HasAns_exact"] == 50.0 and report["NoAns_exact"] == 100.0
    # Start from "all null" (1 of 3 right), walk up the odds: q1 +1 -> 2 at -1.0; q3 +0; q2 -1.
    assert report["best_exact"] == pytest.approx(200 / 3) and report["best_exact_thresh"] == -1.0
    assert squad_metrics.choose_null_threshold(examples, predictions, null_odds) == -1.0
    without_odds = squad_metrics.evaluate_v2(examples, predictions)
    assert without_odds["exact"] == pytest.approx(100 / 3) and "best_f1" not in without_odds
    # A gold answer that normalizes to nothing is dropped; with none left the gold is "".
    assert squad_metrics.evaluate_v2([_example("4", "the")], {"4": ""})["exact"] == 100.0
    with pytest.raises(Exception, match="1 questions have no prediction"):
        squad_metrics.evaluate_v2(examples, {"1": "Paris", "2": ""})


def test_command_line(tmp_path):
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "Paris is nice.", "qas": [
        {"id": "a", "question": "Where?", "answers": [{"text": "Paris", "answer_start": 0}]}]}]}]}
    (tmp_path / "dev.json").write_text(json.dumps(data))
    (tmp_path / "predictions.json").write_text(json.dumps({"a": "paris"}))
    out = subprocess.run([sys.executable, "-m", "mobilebert_jax.finetune.squad_metrics", str(tmp_path / "dev.json"),
                          str(tmp_path / "predictions.json")], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"exact_match": 100.0, "f1": 100.0}
