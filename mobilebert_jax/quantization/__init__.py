"""Post-training int8 quantization in JAX: calibrate, quantize, run the int8 simulation, compare.

    ranges = calibrate(model, params, calibration_batches)            # a few hundred training examples
    qmodel = quantize(model, params, ranges)                           # int8 kernels + activation scales
    out = apply_quantized(model, qmodel, ids, attention_mask=..., token_type_ids=..., deterministic=True)
"""

from mobilebert_jax.quantization.calibration import InputRange, calibrate
from mobilebert_jax.quantization.ptq import (PTQConfig, QuantizedModel, apply_quantized, float_size_bytes,
                                             quantize)

__all__ = ["InputRange", "PTQConfig", "QuantizedModel", "apply_quantized", "calibrate", "float_size_bytes",
           "quantize"]
