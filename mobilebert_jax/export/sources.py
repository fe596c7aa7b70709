"""What an export reads: a fine-tuning run's model and calibration examples, or a bare model directory."""

from __future__ import annotations

import numpy as np
from etils import epath

from mobilebert_jax.errors import ConfigError


def run_model(workdir: str, step):
    """(the run, its GLUE task or None for SQuAD): model, trained params, config and recorded tokenizer of a
    fine-tuning run, read from its workdir alone (finetune/evaluate.load_run)."""
    from mobilebert_jax.finetune import evaluate, glue

    run = evaluate.load_run(workdir, step)
    task = glue.get_task(run.config.task) if run.config.stage == "glue_finetuning" else None
    return run, task


def run_calibration(config, task, tokenizer: str, count: int, seq_len: int) -> dict[str, np.ndarray]:
    from mobilebert_jax.data.tokenizers import load_tokenizer
    from mobilebert_jax.quantization.compare import calibration_rows
    from mobilebert_jax.finetune import stage as finetune_stage, glue, squad_data

    tokenizer = load_tokenizer(tokenizer)
    if task is not None:
        train = finetune_stage.glue_examples(config, task, "train")
        rows = calibration_rows(len(train), count, seed=config.seed)
        return glue.glue_features(task, [train[i] for i in rows], tokenizer, seq_len)
    train = finetune_stage.squad_examples(config, "train")
    rows = calibration_rows(len(train), count, seed=config.seed)
    options = dict(finetune_stage.squad_feature_options(config), max_seq_length=seq_len)
    return squad_data.build_features([train[i] for i in rows], tokenizer, **options).arrays


def text_calibration(path: str, vocab: str, count: int, seq_len: int) -> dict[str, np.ndarray]:
    from mobilebert_jax.data.tokenizers import load_tokenizer
    from mobilebert_jax.finetune.features import encode_pairs

    lines = [line.strip() for line in epath.Path(path).read_text().splitlines() if line.strip()][:count]
    if not lines:
        raise ConfigError(f"--calibration_text={path}: no non-empty lines to calibrate on")
    return encode_pairs(load_tokenizer(vocab), lines, None, seq_len)


def bare_model(path: str):
    """(model, params, the tokenizer spec it records or None) of any model model_source reads."""
    from mobilebert_jax import model_source
    from mobilebert_jax.convert import hf

    source = model_source.open_source(path, "--params")
    params = model_source.read(source, stacked=False)  # export the unrolled graph, whatever the run scanned
    tokenizer = None
    if source.tokenizer is not None and source.tokenizer_dir is not None:
        tokenizer = str(epath.Path(source.tokenizer_dir) / source.tokenizer["file"])
    return hf.build_model(source.config.replace(scan_layers=False), hf.architecture_of(params)), params, tokenizer
