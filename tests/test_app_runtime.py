"""An exported classifier loads in an app runtime: MediaPipe Tasks' TextClassifier, tokenizing raw text itself from
the metadata `python -m mobilebert_jax.export` embeds, gives the JAX model's labels and scores."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from limits import HANG_S

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("mediapipe")

from mobilebert_jax import experiment_config  # noqa: E402
from tests.data_fixtures import require_shared_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEQ_LEN = 64


def _export(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mobilebert_jax.export", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=HANG_S, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory):
    shared = require_shared_data()
    from mobilebert_jax.finetune import stage as finetune_stage
    from mobilebert_jax.train.trainer import train

    workdir = tmp_path_factory.mktemp("sst2") / "run"
    args = [f"--config.{k}={v}" for k, v in {"total_steps": 3, "batch_size": 8, "log_every": 1,
                                              "eval.enabled": False, "checkpoint.every_steps": 3,
                                              "data.max_seq_length": SEQ_LEN}.items()]
    config = experiment_config.load_experiment("experiments/finetune_glue.py:task=sst2,smoke", args)
    config.unlock()
    config.model.num_hidden_layers = 1
    config.optimizer.schedule.total_steps = config.total_steps
    train(config, str(workdir), finetune_stage.GLUE)
    with open(shared / "glue" / "SST-2" / "dev.tsv", newline="") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][:40]
    return workdir, sentences


def _jax_logits(workdir: Path, sentences: list[str]) -> np.ndarray:
    from mobilebert_jax import finished_run
    from mobilebert_jax.data.tokenizers import load_tokenizer
    from mobilebert_jax.finetune.features import encode_pairs

    run = finished_run.load(str(workdir))
    arrays = encode_pairs(load_tokenizer(run.tokenizer), sentences, None, SEQ_LEN)
    out = run.model.apply({"params": run.params}, arrays["input_ids"], attention_mask=arrays["input_mask"],
                          token_type_ids=arrays["segment_ids"], deterministic=True)
    return np.asarray(out["logits"])


def _mediapipe_scores(model_path: Path, sentences: list[str]) -> tuple[np.ndarray, list[str]]:
    from mediapipe.tasks.python.core import base_options
    from mediapipe.tasks.python.text import text_classifier

    options = text_classifier.TextClassifierOptions(base_options=base_options.BaseOptions(
        model_asset_path=str(model_path)))
    scores, names = [], None
    with text_classifier.TextClassifier.create_from_options(options) as classifier:
        for sentence in sentences:
            categories = classifier.classify(sentence).classifications[0].categories
            by_index = sorted(categories, key=lambda c: c.index)
            scores.append([c.score for c in by_index])
            names = [c.category_name for c in by_index]
    return np.asarray(scores), names


def test_mediapipe_text_classifier_loads_the_export_and_matches_jax(sst2_run, tmp_path):
    workdir, sentences = sst2_run
    model = tmp_path / "app" / "sst2.tflite"
    out = _export(f"--workdir={workdir}", f"--output={model}")
    assert "with TextClassifier metadata" in out
    scores, names = _mediapipe_scores(model, sentences)
    logits = _jax_logits(workdir, sentences)
    assert names == ["0", "1"]  # the GLUE task's label names, from the file's labels
    # The runtime tokenized the raw text itself: equal scores mean equal ids, mask and segments.
    np.testing.assert_allclose(scores, logits, atol=1e-4)
    assert (scores.argmax(-1) == logits.argmax(-1)).all()

    # The file is still a plain LiteRT model, and the metadata parser version is the one MediaPipe computes.
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    from mobilebert_jax.export import app_metadata

    assert app_metadata._minimum_parser_version(_metadata_buffer(model.read_bytes())) == "1.1.0"  # BERT tokenizer
    empty = _built_metadata(fb)
    assert app_metadata._minimum_parser_version(empty) == "1.0.0"


def test_int8_export_keeps_the_labels(sst2_run, tmp_path):
    workdir, sentences = sst2_run
    model = tmp_path / "app" / "sst2_int8.tflite"
    _export(f"--workdir={workdir}", f"--output={model}", "--quantization=dynamic_int8")
    scores, _ = _mediapipe_scores(model, sentences)
    logits = _jax_logits(workdir, sentences)
    margin = np.abs(logits[:, 1] - logits[:, 0])
    clear = margin > 0.05  # int8 rounding may flip only a near tie
    assert clear.sum() >= len(sentences) // 2
    assert (scores.argmax(-1)[clear] == logits.argmax(-1)[clear]).all()


def test_no_metadata_when_asked_or_batched(sst2_run, tmp_path):
    workdir, _ = sst2_run
    for flag in ("--noapp_metadata", "--batch_size=2"):
        model = tmp_path / flag.strip("-").replace("=", "_") / "m.tflite"
        out = _export(f"--workdir={workdir}", f"--output={model}", flag)
        assert "with TextClassifier metadata" not in out
        assert _metadata_buffer(model.read_bytes()) is None


def _metadata_buffer(tflite: bytes):
    from mediapipe.tasks.metadata import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(tflite, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == b"TFLITE_METADATA":
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def _built_metadata(fb) -> bytes:
    import flatbuffers

    metadata = fb.ModelMetadataT()
    metadata.name = "empty"
    builder = flatbuffers.Builder(0)
    builder.Finish(metadata.Pack(builder), b"M001")
    return bytes(builder.Output())


def test_mediapipe_text_embedder_loads_a_bare_model_export(tmp_path):
    """A bare pretraining model exported with --embedding: MediaPipe's TextEmbedder gives its pooled [CLS] vector."""
    import flax.linen as nn
    import jax

    from mobilebert_jax import convert, get_preset
    from mobilebert_jax.data.tokenizers import load_tokenizer
    from mobilebert_jax.finetune.features import encode_pairs
    from mobilebert_jax.modeling import MobileBertForPreTraining
    from mediapipe.tasks.python.core import base_options
    from mediapipe.tasks.python.text import text_embedder

    shared = require_shared_data()
    vocab = str(shared / "vocab" / "bert-uncased-vocab.txt")
    config = get_preset("mobilebert_test", vocab_size=30522, max_position_embeddings=SEQ_LEN, num_hidden_layers=1)
    model = MobileBertForPreTraining(config)
    params = nn.unbox(model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"])
    convert.save_params(str(tmp_path / "pretrained"), config, params)
    path = tmp_path / "embedder.tflite"
    out = _export(f"--params={tmp_path / 'pretrained'}", f"--vocab={vocab}", "--embedding", f"--output={path}",
                  f"--seq_len={SEQ_LEN}")
    assert "with TextEmbedder metadata" in out and "outputs embedding" in out

    sentences = ["the cat sat on the mat .", "a gripping , beautifully acted film", "it 's a mess ."]
    arrays = encode_pairs(load_tokenizer(vocab), sentences, None, SEQ_LEN)
    pooled = np.asarray(model.apply({"params": params}, arrays["input_ids"], attention_mask=arrays["input_mask"],
                                    token_type_ids=arrays["segment_ids"], deterministic=True)["pooled_output"])
    options = text_embedder.TextEmbedderOptions(base_options=base_options.BaseOptions(model_asset_path=str(path)))
    with text_embedder.TextEmbedder.create_from_options(options) as embedder:
        vectors = np.asarray([embedder.embed(s).embeddings[0].embedding for s in sentences])
    np.testing.assert_allclose(vectors, pooled, atol=1e-4)
