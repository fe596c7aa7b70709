"""SQuAD v2.0 fine-tuning through the generic trainer on a small file written here, then EM/F1 and the files."""

from __future__ import annotations

import json

import numpy as np

from mobilebert_jax import experiment_config
from mobilebert_jax import evaluate
from mobilebert_jax.finetune import stage as finetune_stage
from mobilebert_jax.train.trainer import train
from tests.data_fixtures import require_shared_data

CONTEXT = ("The Amazon river flows through Brazil, Peru and Colombia. It carries more water than any other river, "
           "and its basin covers about seven million square kilometres. ") * 3


def _squad_v2(path):
    qas = []
    for i in range(24):
        if i % 3 == 2:
            qas.append({"id": f"q{i}", "question": f"What is the capital of planet {i}?", "is_impossible": True,
                        "answers": []})
        else:
            text = ["Brazil", "seven million"][i % 2]
            qas.append({"id": f"q{i}", "question": ["Where does it flow?", "How large is the basin?"][i % 2],
                        "is_impossible": False, "answers": [{"text": text, "answer_start": CONTEXT.index(text)}]})
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "Amazon", "paragraphs": [
        {"context": CONTEXT, "qas": qas}]}]}))
    return str(path)


def test_squad_v2_trains_and_writes_predictions(tmp_path):
    require_shared_data()
    data = _squad_v2(tmp_path / "squad.json")
    overrides = {"total_steps": 3, "batch_size": 8, "log_every": 1, "checkpoint.every_steps": 3,
                 "data.train_file": data, "data.dev_file": data, "data.max_seq_length": 64, "data.doc_stride": 16,
                 "data.max_query_length": 16, "eval.enabled": True, "eval.every_steps": 3, "eval.batch_size": 16}
    config = experiment_config.load_experiment("experiments/finetune_squad.py:version=2.0,smoke",
                                               [f"--config.{k}={v}" for k, v in overrides.items()])
    config.unlock()
    config.model.num_hidden_layers = 1
    config.optimizer.schedule.total_steps = config.total_steps
    workdir = tmp_path / "run"
    metrics = train(config, str(workdir), finetune_stage.SQUAD)
    assert np.isfinite(metrics["loss"]) and "eval/start_accuracy" in metrics
    report = evaluate.evaluate_run(str(workdir))
    assert report["total"] == 24.0 and report["NoAns_total"] == 8.0
    assert 0.0 <= report["exact"] <= report["f1"] <= 100.0 and "null_score_diff_threshold" in report
    predictions = json.loads((workdir / "eval" / "predictions.json").read_text())
    null_odds = json.loads((workdir / "eval" / "null_odds.json").read_text())
    assert set(predictions) == set(null_odds) == {f"q{i}" for i in range(24)}
    assert all(p == "" or p in CONTEXT for p in predictions.values())
