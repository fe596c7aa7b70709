"""Int8 next to float on the same dev set: the task's metrics, their difference, agreement and model sizes."""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np

from mobilebert_jax.quantization.calibration import calibrate
from mobilebert_jax.quantization.ptq import PTQConfig, apply_quantized, float_size_bytes, quantize
from mobilebert_jax.finetune import glue, glue_metrics
from mobilebert_jax.finetune.batching import padded_batches
from mobilebert_jax.finetune.prediction import MODEL_INPUTS, predict


def calibration_rows(num_train: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` training rows drawn without replacement, the same for a given seed."""
    return np.sort(np.random.default_rng(seed).permutation(num_train)[:min(count, num_train)])


def compare_glue(model, params, task: glue.GlueDataset, calibration_arrays: dict[str, np.ndarray],
                 dev_arrays: dict[str, np.ndarray], *, config: PTQConfig = PTQConfig(), method: str = "minmax",
                 percentile: float = 99.99, batch_size: int = 32,
                 calibration_batch_size: Optional[int] = None) -> dict:
    inputs = {k: calibration_arrays[k] for k in MODEL_INPUTS}
    batches = [{k: b[k] for k in MODEL_INPUTS}
               for b in padded_batches(inputs, calibration_batch_size or batch_size)]
    ranges = calibrate(model, params, batches, method=method, percentile=percentile) if config.activations else None
    qmodel = quantize(model, params, ranges, config)
    qparams = qmodel.dequantized_params()

    def run(quantized: bool):
        @jax.jit
        def fn(batch):
            kwargs = dict(attention_mask=batch["input_mask"], token_type_ids=batch["segment_ids"], deterministic=True)
            if quantized:
                out = apply_quantized(model, qmodel, batch["input_ids"], params=qparams, **kwargs)
            else:
                out = model.apply({"params": params}, batch["input_ids"], **kwargs)
            return {"logits": out["logits"]}

        return glue_metrics.predictions_from_logits(task, predict(fn, dev_arrays, batch_size)["logits"])

    float_preds, int8_preds = run(False), run(True)
    float_scores = glue_metrics.compute_metrics(task, float_preds, dev_arrays["label"])
    int8_scores = glue_metrics.compute_metrics(task, int8_preds, dev_arrays["label"])
    float_bytes, int8_bytes = float_size_bytes(params), qmodel.size_bytes()
    report = {
        "task": task.name, "dev_examples": int(len(dev_arrays["label"])),
        "calibration_examples": int(len(calibration_arrays["input_ids"])), "calibration": method,
        "float": float_scores, "int8": int8_scores,
        "difference": {k: int8_scores[k] - float_scores[k] for k in float_scores},
        "float_bytes": float_bytes, "int8_bytes": int8_bytes, "size_ratio": float_bytes / int8_bytes,
    }
    if task.is_regression:
        report["max_abs_prediction_change"] = float(np.max(np.abs(int8_preds - float_preds)))
    else:
        report["prediction_agreement"] = float(np.mean(int8_preds == float_preds))
    return report
