"""What an export reads besides a finished run (finished_run.py): a bare model directory and its calibration text."""

from __future__ import annotations

import numpy as np
from etils import epath

from mobilebert_jax.errors import ConfigError


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
