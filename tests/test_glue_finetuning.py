"""GLUE fine-tuning through the generic trainer: a few steps on the shared RTE files, then the official metrics."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from mobilebert_jax import convert, experiment_config, get_preset
from mobilebert_jax.errors import ConfigError
from mobilebert_jax.modeling import MobileBertForPreTraining
from mobilebert_jax.finetune import evaluate, stage as finetune_stage
from mobilebert_jax.train import lineage
from mobilebert_jax.train.trainer import train
from tests.data_fixtures import require_shared_data


def _smoke_config(task="rte", **overrides):
    require_shared_data()
    args = [f"--config.{k}={v}" for k, v in {"total_steps": 4, "batch_size": 8, "log_every": 2,
                                              "eval.every_steps": 4, "eval.batch_size": 64,
                                              "checkpoint.every_steps": 4, **overrides}.items()]
    config = experiment_config.load_experiment(f"experiments/finetune_glue.py:task={task},smoke", args)
    config.unlock()
    config.model.num_hidden_layers = 1
    config.optimizer.schedule.total_steps = config.total_steps
    return config


def test_rte_trains_and_scores(tmp_path):
    config = _smoke_config()
    metrics = train(config, str(tmp_path), finetune_stage.GLUE)
    assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["eval/accuracy"] <= 1.0
    report = evaluate.evaluate_run(str(tmp_path))
    assert set(report["dev"]) == {"accuracy"} and 0.0 <= report["dev"]["accuracy"] <= 1.0
    assert "test.tsv" in report["test_skipped"]  # the shared data has no RTE test file
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == report
    # The run's own eval accuracy (sums over padded batches) equals the official metric on the same params.
    assert report["dev"]["accuracy"] == pytest.approx(metrics["eval/accuracy"], abs=1e-6)


def test_backbone_comes_from_the_checkpoint_and_the_head_is_new(tmp_path):
    config = _smoke_config()
    model_cfg = get_preset("mobilebert_test", vocab_size=30522, max_position_embeddings=128, num_hidden_layers=1)
    pretrained = nn.unbox(MobileBertForPreTraining(model_cfg).init(jax.random.key(7), np.zeros((1, 8), np.int32))
                          ["params"])
    convert.save_params(str(tmp_path / "pretrained"), model_cfg, pretrained)
    config.init_checkpoint = str(tmp_path / "pretrained")
    config.data.vocab = config.data.scratch_vocab  # the params directory records no tokenizer
    lineage.resolve(config)  # what train() does first: config.model becomes the checkpoint's
    task = finetune_stage.GLUE.read(config, str(tmp_path), finetune_stage.GLUE.spec(config))
    fresh = nn.unbox(task.spec.init_params(jax.random.key(0)))
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params = traverse_util.flatten_dict(task.start_from(fresh, None, jax.tree.map(lambda _: one, fresh)), sep="/")
    saved = traverse_util.flatten_dict(pretrained, sep="/")
    backbone = [k for k in params if k.startswith("mobilebert/")]
    assert backbone and all(np.array_equal(params[k], saved[k]) for k in backbone)
    assert {k for k in params if not k.startswith("mobilebert/")} == {"classifier/kernel", "classifier/bias"}

    config.model_overrides.num_hidden_layers = 2  # the checkpoint has one layer
    with pytest.raises(ConfigError, match="lacks .* backbone parameters"):
        finetune_stage.GLUE.read(config, str(tmp_path), finetune_stage.GLUE.spec(config))


def test_the_spec_example_is_what_the_batches_hold(tmp_path):
    """tools/aot_compile builds the batch from the stage's spec alone; the real batches must hold exactly that."""
    config = _smoke_config()
    lineage.resolve(config)  # what train() does first: the tokenizer spec
    task = finetune_stage.GLUE.read(config, str(tmp_path), finetune_stage.GLUE.spec(config))
    batch = next(task.train_iterator)
    assert {k: (v.shape[1:], v.dtype) for k, v in batch.items()} == \
        {k: (v.shape, v.dtype) for k, v in task.spec.example.items()}
