"""What an export reads: a fine-tuning run's model and calibration examples, or a bare model directory."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
from etils import epath

from mobilebert_jax.config import ConfigError


def run_model(workdir: str, step):
    """(model, params, run config, task-or-None) of a fine-tuning run."""
    from mobilebert_jax.modeling import MobileBertForQuestionAnswering, MobileBertForSequenceClassification
    from mobilebert_jax.tasks import evaluate, finetuning, glue

    config_file = epath.Path(workdir) / "config.json"
    if not config_file.exists():
        raise ConfigError(f"{config_file}: not found; --workdir must be a fine-tuning run")
    config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    model_cfg = finetuning.model_config(config)[0]
    if config.stage == "glue_finetuning":
        task = glue.get_task(config.task)
        model = MobileBertForSequenceClassification(model_cfg, num_labels=task.num_labels)
    elif config.stage == "squad_finetuning":
        task, model = None, MobileBertForQuestionAnswering(model_cfg)
    else:
        raise ConfigError(f"{config_file}: stage {config.stage!r} is not a fine-tuning run; export a pretrained "
                          "model with --params")
    return model, evaluate.restore_params(config, workdir, model, step), config, task


def run_calibration(config, task, count: int, seq_len: int) -> dict[str, np.ndarray]:
    from mobilebert_jax.data.tokenizers import load_tokenizer
    from mobilebert_jax.quantization.compare import calibration_rows
    from mobilebert_jax.tasks import finetuning, glue, squad_data

    tokenizer = load_tokenizer(config.data.vocab)
    if task is not None:
        train = finetuning.glue_examples(config, task, "train")
        rows = calibration_rows(len(train), count, seed=config.seed)
        return glue.glue_features(task, [train[i] for i in rows], tokenizer, seq_len)
    train = finetuning.squad_examples(config, "train")
    rows = calibration_rows(len(train), count, seed=config.seed)
    options = dict(finetuning.squad_feature_options(config), max_seq_length=seq_len)
    return squad_data.build_features([train[i] for i in rows], tokenizer, **options).arrays


def text_calibration(path: str, vocab: str, count: int, seq_len: int) -> dict[str, np.ndarray]:
    from mobilebert_jax.data.tokenizers import load_tokenizer
    from mobilebert_jax.tasks.features import encode_pairs

    lines = [line.strip() for line in epath.Path(path).read_text().splitlines() if line.strip()][:count]
    if not lines:
        raise ConfigError(f"--calibration_text={path}: no non-empty lines to calibrate on")
    return encode_pairs(load_tokenizer(vocab), lines, None, seq_len)


def bare_model(path: str):
    from mobilebert_jax.convert import hf, native

    if (epath.Path(path) / native.PARAMS_FILE).exists():
        config, params = native.load_params(path)
    else:
        config, params = hf.from_hf(path)
    return hf.build_model(config, hf.architecture_of(params)), params
