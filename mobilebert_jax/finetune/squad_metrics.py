"""SQuAD exact match and F1 exactly as the official evaluation scripts compute them.

v1.1 (`evaluate-v1.1.py`): the best score over the gold answers; a question
without a prediction scores 0. v2.0 (`evaluate-v2.0.py`): gold answers that
normalize to "" are dropped, an unanswerable question's only gold answer is
"", F1 with an empty side is 1 only when both are empty; with `null_odds`
the no-answer threshold search of that script (`find_all_best_thresh`).

    python -m mobilebert_jax.finetune.squad_metrics dev-v2.0.json predictions.json [null_odds.json]
"""

from __future__ import annotations

import collections
import json
import os
import re
import string
from typing import Optional, Sequence

from mobilebert_jax import storage
from mobilebert_jax.errors import DataError
from mobilebert_jax.finetune.squad_data import SquadExample, read_squad_json, squad_json_version

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (in the scripts' order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_v1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_v2(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    return f1_v1(prediction, gold)


def evaluate_v1(examples: Sequence[SquadExample], predictions: dict[str, str]) -> dict[str, float]:
    """{"exact_match", "f1"} in percent over every question of `examples`."""
    if not examples:
        raise ValueError("no SQuAD questions to score")
    exact = f1 = 0.0
    for example in examples:
        if example.qid not in predictions:
            continue  # the official script scores a missing prediction 0
        golds = [a.text for a in example.answers]
        exact += max(exact_match(predictions[example.qid], g) for g in golds)
        f1 += max(f1_v1(predictions[example.qid], g) for g in golds)
    return {"exact_match": 100.0 * exact / len(examples), "f1": 100.0 * f1 / len(examples)}


def _v2_raw_scores(examples: Sequence[SquadExample], predictions: dict[str, str]):
    missing = [e.qid for e in examples if e.qid not in predictions]
    if missing:
        raise DataError(f"{len(missing)} questions have no prediction (first: {missing[0]!r}); "
                        "SQuAD v2.0 scores every question")
    exact, f1, has_answer = {}, {}, {}
    for example in examples:
        golds = [a.text for a in example.answers if normalize_answer(a.text)] or [""]
        prediction = predictions[example.qid]
        exact[example.qid] = max(exact_match(prediction, g) for g in golds)
        f1[example.qid] = max(f1_v2(prediction, g) for g in golds)
        has_answer[example.qid] = bool(example.answers)
    return exact, f1, has_answer


def _mean_percent(scores: dict[str, float], qids: Sequence[str]) -> float:
    return 100.0 * sum(scores[q] for q in qids) / len(qids)


def _best_threshold(predictions: dict[str, str], scores: dict[str, float], null_odds: dict[str, float],
                    has_answer: dict[str, bool]) -> tuple[float, float]:
    """(best score in percent, the null_odds threshold reaching it), as `find_best_thresh` in the script."""
    score = best = float(sum(1 for q in has_answer if not has_answer[q]))
    threshold = 0.0
    for qid in sorted(null_odds, key=lambda q: null_odds[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            score += scores[qid]
        elif predictions[qid]:
            score -= 1
        if score > best:
            best, threshold = score, null_odds[qid]
    return 100.0 * best / len(scores), threshold


def evaluate_v2(examples: Sequence[SquadExample], predictions: dict[str, str],
                null_odds: Optional[dict[str, float]] = None, null_threshold: float = 1.0) -> dict[str, float]:
    """The official v2.0 report: exact, f1, total, HasAns_* / NoAns_*, and best_* thresholds with `null_odds`.

    As in the script, `null_odds` above `null_threshold` (its `--na-prob-thresh`, default 1.0) count as
    predicting no answer.
    """
    if not examples:
        raise ValueError("no SQuAD questions to score")
    exact, f1, has_answer = _v2_raw_scores(examples, predictions)
    if null_odds is not None:
        missing = [q for q in exact if q not in null_odds]
        if missing:
            raise DataError(f"{len(missing)} questions have no null odds (first: {missing[0]!r})")
        exact_t = {q: float(not has_answer[q]) if null_odds[q] > null_threshold else s for q, s in exact.items()}
        f1_t = {q: float(not has_answer[q]) if null_odds[q] > null_threshold else s for q, s in f1.items()}
    else:
        exact_t, f1_t = exact, f1
    qids = list(exact)
    report = {"exact": _mean_percent(exact_t, qids), "f1": _mean_percent(f1_t, qids), "total": float(len(qids))}
    for name, subset in (("HasAns", [q for q in qids if has_answer[q]]), ("NoAns", [q for q in qids
                                                                                  if not has_answer[q]])):
        if subset:
            report[f"{name}_exact"] = _mean_percent(exact_t, subset)
            report[f"{name}_f1"] = _mean_percent(f1_t, subset)
            report[f"{name}_total"] = float(len(subset))
    if null_odds is not None:
        report["best_exact"], report["best_exact_thresh"] = _best_threshold(predictions, exact, null_odds, has_answer)
        report["best_f1"], report["best_f1_thresh"] = _best_threshold(predictions, f1, null_odds, has_answer)
    return report


def choose_null_threshold(examples: Sequence[SquadExample], best_span: dict[str, str],
                          null_odds: dict[str, float]) -> float:
    """The null_odds threshold that maximizes dev F1, searched over the best non-empty spans."""
    return evaluate_v2(examples, best_span, null_odds)["best_f1_thresh"]


def write_predictions(output_dir: str, predictions: dict[str, str],
                      null_odds: Optional[dict[str, float]] = None) -> list[str]:
    """`predictions.json` (and `null_odds.json`), the files the official scripts read; returns their paths."""
    storage.path(output_dir).mkdir(parents=True, exist_ok=True)
    paths = [os.path.join(output_dir, "predictions.json")]
    storage.path(paths[0]).write_text(json.dumps(predictions, indent=2, ensure_ascii=False), encoding="utf-8")
    if null_odds is not None:
        paths.append(os.path.join(output_dir, "null_odds.json"))
        storage.path(paths[1]).write_text(json.dumps({q: float(v) for q, v in null_odds.items()}, indent=2))
    return paths


def main(argv: list[str]) -> None:
    from mobilebert_jax import cli

    if len(argv) not in (3, 4):
        cli.fatal("usage", f"expected 2 or 3 files, got {len(argv) - 1}: " + __doc__.strip().splitlines()[-1].strip())
    version = squad_json_version(argv[1])
    examples = read_squad_json(argv[1])
    with storage.open(argv[2]) as f:
        predictions = json.load(f)
    if version == "1.1":
        print(json.dumps(evaluate_v1(examples, predictions)))
        return
    null_odds = None
    if len(argv) == 4:
        with storage.open(argv[3]) as f:
            null_odds = json.load(f)
    print(json.dumps(evaluate_v2(examples, predictions, null_odds), indent=2))


if __name__ == "__main__":
    from mobilebert_jax import cli

    cli.run_absl(main)
