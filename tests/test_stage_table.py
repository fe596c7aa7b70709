"""The stage table owns every stage: a new fine-tuning task (token tagging, tests/token_tagging_stage.py) is one
module plus one table line, and goes through fine-tuning, evaluation, quantization and export untouched."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import token_tagging_stage
from mobilebert_jax import evaluate, finished_run, stages
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def test_no_stage_name_is_tested_outside_the_stage_table():
    """Stage names appear only in stages.py and the stage modules (and what their runs' configs record)."""
    names = [n for n in stages.STAGES if n != "pretraining"]
    pattern = re.compile("|".join(rf"""["']{n}["']""" for n in names))
    allowed = {"stages.py"}
    hits = []
    for path in (ROOT / "mobilebert_jax").rglob("*.py"):
        if path.name in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "stage names outside the stage table:\n" + "\n".join(hits)


def test_an_unknown_stage_is_one_config_error():
    with pytest.raises(ConfigError, match=r"config.stage='tagging': choose one of \["):
        stages.lookup("tagging")


def test_a_new_task_goes_through_finetune_evaluate_quantize_and_export(tmp_path, monkeypatch):
    token_tagging_stage.register(monkeypatch)
    workdir = str(tmp_path / "run")
    config = token_tagging_stage.config()
    train(config, workdir, stages.lookup(config.stage))

    report = evaluate.evaluate_run(workdir, batch_size=8)
    assert 0.0 <= report["dev"]["accuracy"] <= 1.0
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text()) == report

    run = finished_run.load(workdir)
    scoring = finished_run.scoring(run.config, workdir)
    from mobilebert_jax.quantization.compare import compare

    quantized = compare(run.model, run.params, scoring.held_out(run), scoring.calibration(run, 16, 16), batch_size=8)
    assert quantized["held_out"] == "tagging dev" and 0.0 <= quantized["prediction_agreement"] <= 1.0
    assert quantized["size_ratio"] > 2

    from mobilebert_jax.export import export_model, model_function

    export = tmp_path / "tagger.onnx"
    export_model(run.model, run.params, str(export), batch_size=1, seq_len=16, fmt="onnx")
    import onnxruntime as ort

    held_out = scoring.held_out(run)
    batch = {k: held_out.arrays[k][:1] for k in ("input_ids", "input_mask", "segment_ids")}
    session = ort.InferenceSession(str(export), providers=["CPUExecutionProvider"])
    onnx_logits = dict(zip([o.name for o in session.get_outputs()], session.run(None, batch)))["logits"]
    jax_logits = np.asarray(model_function(run.model, run.params)(*batch.values())["logits"])
    np.testing.assert_allclose(onnx_logits, jax_logits, atol=1e-4, rtol=1e-4)
    assert scoring.labels(run.config) == ["odd", "even"]


def test_a_pretraining_run_is_not_scored_as_a_task(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"stage": "teacher_pretraining"}))
    with pytest.raises(ConfigError, match="stage 'teacher_pretraining' is not a fine-tuning run"):
        finished_run.load(str(tmp_path))
