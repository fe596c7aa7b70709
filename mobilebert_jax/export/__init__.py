"""On-device export: ONNX graphs translated from the jaxpr (optional `export` extra: onnx, onnxruntime).

    from mobilebert_jax.export import export_model
    export_model(model, params, "model.onnx", seq_len=128)   # inputs input_ids / input_mask / segment_ids

Command line: `python -m mobilebert_jax.export --workdir=runs/sst2 --output=sst2.onnx [--int8]`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

OUTPUTS = ("logits", "start_logits", "end_logits")


def model_function(model, params, quantized=None):
    """`fn(input_ids, input_mask, segment_ids) -> {output: array}` of a task model (int8 simulation if given)."""
    from mobilebert_jax.quantization import apply_quantized

    qparams = quantized.dequantized_params() if quantized is not None else None

    def fn(input_ids, input_mask, segment_ids):
        kwargs = dict(attention_mask=input_mask, token_type_ids=segment_ids, deterministic=True)
        if quantized is not None:
            out = apply_quantized(model, quantized, input_ids, params=qparams, **kwargs)
        else:
            out = model.apply({"params": params}, input_ids, **kwargs)
        return {k: out[k] for k in OUTPUTS if k in out}

    return fn


def export_model(model, params, path: Optional[str], *, batch_size: int = 1, seq_len: int = 128, quantized=None):
    """The ONNX model of a fine-tuned task model at a fixed [batch_size, seq_len]; saved to `path` if given."""
    from mobilebert_jax.export.onnx_export import export

    shape = (batch_size, seq_len)
    example = {"input_ids": np.zeros(shape, np.int32), "input_mask": np.ones(shape, np.int32),
               "segment_ids": np.zeros(shape, np.int32)}
    return export(model_function(model, params, quantized), example, path)
