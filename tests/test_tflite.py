"""LiteRT export: float graphs equal JAX, int8 graphs are int8 and agree with float, the CLI ships what an app needs.

Skipped without the `litert` extra (tensorflow, ai-edge-litert).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from limits import HANG_S

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from mobilebert_jax import convert, experiment_config, get_preset  # noqa: E402
from mobilebert_jax.export import export_model, model_function, representative_batches  # noqa: E402
from mobilebert_jax.export.tflite_export import LiteRTModel  # noqa: E402
from mobilebert_jax.modeling import (MobileBertForPreTraining, MobileBertForQuestionAnswering,  # noqa: E402
                                     MobileBertForSequenceClassification)
from tests.data_fixtures import require_shared_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _inputs(config, batch=2, seq=16, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, config.vocab_size, (batch, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, seq - 5:] = 0  # a padded row: the mask convention and the trigram's pad handling must survive
    ids[1, seq - 5:] = 0
    segments = (np.arange(seq)[None] >= seq // 2).astype(np.int32).repeat(batch, 0)
    return {"input_ids": ids, "input_mask": mask, "segment_ids": segments}


def _model(preset, head, **overrides):
    config = get_preset(preset, **overrides)
    return {"classifier": lambda: MobileBertForSequenceClassification(config, num_labels=3),
            "qa": lambda: MobileBertForQuestionAnswering(config),
            "pretraining": lambda: MobileBertForPreTraining(config)}[head]()


@pytest.mark.parametrize("preset,head,mask_mode", [
    ("mobilebert_test", "classifier", "replace"), ("mobilebert_test", "classifier", "additive"),
    ("mobilebert_test", "qa", "replace"), ("mobilebert_test", "pretraining", "additive"),
    ("ib_bert_test", "qa", "additive"), ("mobilebert_tiny_test", "classifier", "replace")])
def test_float_tflite_equals_jax_on_padded_batches(preset, head, mask_mode):
    model = _model(preset, head, attention_mask_mode=mask_mode)
    inputs = _inputs(model.config)
    params = nn.unbox(model.init(jax.random.key(0), inputs["input_ids"])["params"])
    litert = LiteRTModel(export_model(model, params, None, batch_size=2, seq_len=16, fmt="tflite"))
    assert litert.inputs == {k: ((2, 16), np.dtype(np.int32)) for k in inputs}
    expected = jax.jit(model_function(model, params))(**inputs)
    got = litert(**inputs)
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], np.asarray(value), rtol=0, atol=1e-5, err_msg=key)
    assert "FLEX" not in " ".join(litert.operators()).upper()  # builtin ops only


def _int8_tensors(litert) -> int:
    return sum(t["dtype"] == np.int8 for t in litert.interpreter.get_tensor_details())


@pytest.mark.parametrize("head", ["classifier", "qa"])
def test_int8_tflite_is_int8_smaller_and_close_to_float(head):
    model = _model("mobilebert_test", head, initializer_range=0.05)  # logits well above int8 rounding
    inputs = _inputs(model.config, seed=1)
    params = nn.unbox(model.init(jax.random.key(1), inputs["input_ids"])["params"])
    calibration = _inputs(model.config, batch=8, seed=2)
    float_bytes = export_model(model, params, None, batch_size=2, seq_len=16, fmt="tflite")
    expected = LiteRTModel(float_bytes)(**inputs)
    for quantization in ("dynamic_int8", "full_int8"):
        graph = export_model(model, params, None, batch_size=2, seq_len=16, fmt="tflite", quantization=quantization,
                             calibration=calibration if quantization == "full_int8" else None)
        assert len(graph) < 0.6 * len(float_bytes), quantization
        litert = LiteRTModel(graph)
        assert _int8_tensors(litert) > 0, quantization
        if quantization == "full_int8":  # activations too: the matmuls take int8 inputs
            assert "QUANTIZE" in litert.operators()
        got = litert(**inputs)
        for key, value in expected.items():
            assert np.corrcoef(got[key].ravel(), value.ravel())[0, 1] > 0.9, (quantization, key)


def test_calibration_batches_have_the_graph_shape():
    arrays = {k: np.arange(5 * 4).reshape(5, 4) for k in ("input_ids", "input_mask", "segment_ids")}
    batches = representative_batches(arrays, 2)
    assert [b["input_ids"].shape for b in batches] == [(2, 4), (2, 4)]  # the remainder row is dropped
    assert [b["input_ids"].shape for b in representative_batches(arrays, 8)] == [(8, 4)]  # too few: repeated
    model = _model("mobilebert_test", "classifier")
    params = nn.unbox(model.init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"])
    with pytest.raises(ValueError, match="full_int8 needs calibration"):
        export_model(model, params, None, seq_len=4, fmt="tflite", quantization="full_int8")


def test_int8_agrees_with_float_on_the_sst2_dev_set(tmp_path):
    """Every int8 form next to float on real dev sentences (the first 64 of SST-2 dev)."""
    shared = require_shared_data()
    from mobilebert_jax.data.tokenizers import load_tokenizer
    from mobilebert_jax.export.compare import compare_forms
    from mobilebert_jax.finetune import glue
    from mobilebert_jax.finetune.evaluate import glue_scored

    task = glue.get_task("sst2")
    tokenizer = load_tokenizer(str(shared / "vocab" / "bert-uncased-vocab.txt"))
    dev = glue.glue_features(task, glue.read_split(task, str(shared / "glue"), "dev")[:64], tokenizer, 32)
    calibration = glue.glue_features(task, glue.read_split(task, str(shared / "glue"), "train")[:32], tokenizer, 32)
    config = get_preset("mobilebert_test", vocab_size=30522, max_position_embeddings=32, initializer_range=0.2)
    model = MobileBertForSequenceClassification(config, num_labels=2)
    params = nn.unbox(model.init(jax.random.key(3), dev["input_ids"][:1])["params"])
    held_out = glue_scored(task, dev, "SST-2 dev")
    rows = {r["form"]: r for r in compare_forms(model, params, held_out, calibration, tmp_path, batch_size=8,
                                                log=lambda *a, **k: None)}
    assert rows["jax_float"]["agreement"] == 1.0
    assert rows["litert_float32"]["agreement"] == 1.0 and rows["onnx_float32"]["agreement"] == 1.0
    assert rows["litert_float32"]["accuracy"] == rows["jax_float"]["accuracy"]
    for form in ("jax_int8_simulation", "litert_dynamic_int8", "litert_full_int8", "onnx_dynamic_int8",
                 "onnx_full_int8"):
        assert rows[form]["agreement"] >= 0.85, (form, rows[form])
        # Dynamic-range int8 leaves the word-embedding table (a GATHER operand, most of this tiny model) float.
        limit = 0.97 if form == "litert_dynamic_int8" else 0.6
        assert rows[form]["bytes"] < limit * rows["jax_float"]["bytes"], (form, rows[form])


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "mobilebert_jax.export", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _docs_example() -> str:
    text = (ROOT / "docs" / "finetuning.md").read_text()
    match = re.search(r"<!-- litert-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/finetuning.md lost its LiteRT interpreter example"
    return match.group(1)


def test_cli_exports_a_finetuned_run_with_vocab_metadata_and_the_docs_example_runs(tmp_path):
    require_shared_data()
    from mobilebert_jax.finetune import stage as finetune_stage
    from mobilebert_jax.train.trainer import train

    args = [f"--config.{k}={v}" for k, v in {"total_steps": 2, "batch_size": 8, "log_every": 1,
                                              "eval.enabled": False, "checkpoint.every_steps": 2,
                                              "data.max_seq_length": 32}.items()]
    config = experiment_config.load_experiment("experiments/finetune_glue.py:task=sst2,smoke", args)
    config.unlock()
    config.model.num_hidden_layers = 1
    config.optimizer.schedule.total_steps = config.total_steps
    train(config, str(tmp_path / "run"), finetune_stage.GLUE)

    out = _cli(f"--workdir={tmp_path / 'run'}", f"--output={tmp_path / 'app' / 'sst2.tflite'}",
               "--quantization=full_int8", "--calibration_examples=8")
    assert "calibrating on 8 examples" in out
    app_dir = tmp_path / "app"
    meta = json.loads((app_dir / "sst2.json").read_text())
    assert meta["inputs"] == {k: {"dtype": "int32", "shape": [1, 32]}
                              for k in ("input_ids", "input_mask", "segment_ids")}
    assert meta["outputs"] == {"logits": {"dtype": "float32", "shape": [1, 2]}}
    assert meta["tokenizer"]["file"] == "sst2.vocab.txt" and meta["tokenizer"]["cls_id"] == 101
    assert (app_dir / "sst2.vocab.txt").read_bytes() == Path(config.data.tokenizer).read_bytes()
    assert meta["quantization"] == "full_int8" and meta["labels"] == ["0", "1"]

    # The docs' interpreter example, run as written next to the exported files.
    result = subprocess.run([sys.executable, "-c", _docs_example()], cwd=app_dir, capture_output=True, text=True,
                            timeout=HANG_S, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"label \d, probabilities \[", result.stdout), result.stdout


def test_cli_exports_a_bare_pretraining_model(tmp_path):
    shared = require_shared_data()
    config = get_preset("mobilebert_test", vocab_size=30522, max_position_embeddings=32, num_hidden_layers=1)
    params = nn.unbox(MobileBertForPreTraining(config).init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    convert.save_params(str(tmp_path / "pretrained"), config, params)
    vocab = shared / "vocab" / "bert-uncased-vocab.txt"
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat .\n\nan apple a day .\n")
    _cli(f"--params={tmp_path / 'pretrained'}", f"--vocab={vocab}", f"--output={tmp_path / 'mlm.tflite'}",
         "--seq_len=16", "--quantization=full_int8", f"--calibration_text={tmp_path / 'corpus.txt'}")
    meta = json.loads((tmp_path / "mlm.json").read_text())
    assert meta["outputs"] == {"mlm_logits": {"dtype": "float32", "shape": [1, 16, 30522]},
                               "nsp_logits": {"dtype": "float32", "shape": [1, 2]}}
    litert = LiteRTModel(str(tmp_path / "mlm.tflite"))
    assert litert.outputs["mlm_logits"][0] == (1, 16, 30522) and _int8_tensors(litert) > 0
