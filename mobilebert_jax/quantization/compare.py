"""Int8 next to float on the same held-out set: the stage's metrics, their difference, agreement and model sizes."""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from mobilebert_jax.quantization.calibration import calibrate
from mobilebert_jax.quantization.ptq import PTQConfig, apply_quantized, float_size_bytes, quantize
from mobilebert_jax.finetune.batching import padded_batches
from mobilebert_jax.finetune.prediction import MODEL_INPUTS, predict
from mobilebert_jax.train.stage import HeldOut

OUTPUTS = ("logits", "start_logits", "end_logits")  # the task outputs a fine-tuned model may have


def compare(model, params, held_out: HeldOut, calibration_arrays: dict[str, np.ndarray], *,
            config: PTQConfig = PTQConfig(), method: str = "minmax", percentile: float = 99.99, batch_size: int = 32,
            calibration_batch_size: Optional[int] = None) -> dict:
    inputs = {k: calibration_arrays[k] for k in MODEL_INPUTS}
    batches = [{k: b[k] for k in MODEL_INPUTS}
               for b in padded_batches(inputs, calibration_batch_size or batch_size)]
    ranges = calibrate(model, params, batches, method=method, percentile=percentile) if config.activations else None
    qmodel = quantize(model, params, ranges, config)
    qparams = qmodel.dequantized_params()

    def run(quantized: bool) -> dict[str, np.ndarray]:
        @jax.jit
        def fn(batch):
            kwargs = dict(attention_mask=batch["input_mask"], token_type_ids=batch["segment_ids"], deterministic=True)
            if quantized:
                out = apply_quantized(model, qmodel, batch["input_ids"], params=qparams, **kwargs)
            else:
                out = model.apply({"params": params}, batch["input_ids"], **kwargs)
            return {k: out[k] for k in OUTPUTS if k in out}

        return predict(fn, held_out.arrays, batch_size)

    float_outputs, int8_outputs = run(False), run(True)
    float_scores, int8_scores = held_out.score(float_outputs), held_out.score(int8_outputs)
    float_preds, int8_preds = held_out.predictions(float_outputs), held_out.predictions(int8_outputs)
    float_bytes, int8_bytes = float_size_bytes(params), qmodel.size_bytes()
    report = {
        "held_out": held_out.name, "held_out_examples": int(len(held_out.arrays["input_ids"])),
        "calibration_examples": int(len(calibration_arrays["input_ids"])), "calibration": method,
        "float": float_scores, "int8": int8_scores,
        "difference": {k: int8_scores[k] - float_scores[k] for k in float_scores},
        "float_bytes": float_bytes, "int8_bytes": int8_bytes, "size_ratio": float_bytes / int8_bytes,
    }
    if np.issubdtype(float_preds.dtype, np.floating):  # regression: how far the predictions moved
        report["max_abs_prediction_change"] = float(np.max(np.abs(int8_preds - float_preds)))
    else:
        report["prediction_agreement"] = float(np.mean(int8_preds == float_preds))
    return report
