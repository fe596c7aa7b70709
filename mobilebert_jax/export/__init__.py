"""On-device export: LiteRT (.tflite, `litert` extra) and ONNX (`export` extra), in float32 or real int8.

    from mobilebert_jax.export import export_model
    export_model(model, params, "model.tflite", seq_len=128)                          # LiteRT float32
    export_model(model, params, "model.tflite", quantization="dynamic_int8")          # int8 weights
    export_model(model, params, "model.tflite", quantization="full_int8", calibration=train_arrays)
    export_model(model, params, "model.onnx", quantization="full_int8", calibration=train_arrays)  # QDQ

Every graph has the inputs `input_ids`, `input_mask`, `segment_ids` (int32 [batch_size, seq_len]) and the
model's float32 outputs (`logits`; `start_logits`/`end_logits`; `mlm_logits`/`nsp_logits`; or, asked for by
`outputs=("embedding",)`, the pooled [CLS] vector `embedding` [batch_size, hidden]).
Command line: `python -m mobilebert_jax.export` (see its docstring).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from mobilebert_jax.errors import ConfigError

INPUTS = ("input_ids", "input_mask", "segment_ids")
OUTPUTS = ("logits", "start_logits", "end_logits", "mlm_logits", "nsp_logits")
EMBEDDING = ("embedding",)  # the model's pooled [CLS] vector, for a text embedder
FORMATS = {".tflite": "tflite", ".onnx": "onnx"}
QUANTIZATIONS = ("float32", "dynamic_int8", "full_int8")


def model_function(model, params, quantized=None, outputs=OUTPUTS):
    """`fn(input_ids, input_mask, segment_ids) -> {output: array}` of a model (the int8 simulation if given):
    its heads' outputs, or with `outputs=EMBEDDING` its pooled [CLS] vector."""
    from mobilebert_jax.quantization import apply_quantized

    qparams = quantized.dequantized_params() if quantized is not None else None

    def fn(input_ids, input_mask, segment_ids):
        kwargs = dict(attention_mask=input_mask, token_type_ids=segment_ids, deterministic=True)
        if quantized is not None:
            out = apply_quantized(model, quantized, input_ids, params=qparams, **kwargs)
        else:
            out = model.apply({"params": params}, input_ids, **kwargs)
        if outputs == EMBEDDING:
            if "pooled_output" not in out:
                raise ConfigError("the model has no pooler, so no pooled [CLS] vector to export as `embedding`")
            return {"embedding": out["pooled_output"]}
        return {k: out[k] for k in outputs if k in out}

    return fn


def representative_batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """Calibration batches of exactly `batch_size` rows (the graph's fixed shape) from feature arrays [N, T]."""
    n = len(arrays[INPUTS[0]])
    if n == 0:
        raise ValueError("no calibration examples")
    full = max(n - n % batch_size, batch_size)
    rows = np.arange(full) % n  # fewer rows than one batch: repeat them rather than calibrate on padding
    return [{k: np.asarray(arrays[k])[rows[i:i + batch_size]].astype(np.int32) for k in INPUTS}
            for i in range(0, full, batch_size)]


def export_model(model, params, path: Optional[str], *, batch_size: int = 1, seq_len: int = 128,
                 quantization: str = "float32", calibration: Optional[dict[str, np.ndarray]] = None,
                 quantized=None, fmt: Optional[str] = None, outputs=OUTPUTS):
    """Export `model` at a fixed [batch_size, seq_len]; returns the .tflite bytes or the ONNX ModelProto.

    The format comes from `fmt` ("tflite" or "onnx") or else the suffix of `path`. `calibration`: feature arrays
    (`input_ids`, `input_mask`, `segment_ids` [N, seq_len]) for full_int8. `quantized` (ONNX, float32 only):
    a `QuantizedModel` whose int8 *simulation* (fake-quant, computed in float) is exported, to check it
    against other runtimes; it is not an int8 graph. `outputs=EMBEDDING`: the graph's one output is the pooled
    [CLS] vector instead of the heads.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r}: choose one of {list(QUANTIZATIONS)}")
    if (quantization == "full_int8") != (calibration is not None):
        raise ValueError("full_int8 needs calibration arrays (and only full_int8 uses them)")
    if fmt is None:
        suffix = "" if path is None else "." + str(path).rsplit(".", 1)[-1]
        if suffix not in FORMATS:
            raise ConfigError(f"{path}: cannot tell the format from the suffix; use .tflite or .onnx, or pass fmt")
        fmt = FORMATS[suffix]
    if quantized is not None and (fmt != "onnx" or quantization != "float32"):
        raise ValueError("the int8 simulation (`quantized`) is exported to float32 ONNX only")
    shape = (batch_size, seq_len)
    example = {"input_ids": np.zeros(shape, np.int32), "input_mask": np.ones(shape, np.int32),
               "segment_ids": np.zeros(shape, np.int32)}
    batches = representative_batches(calibration, batch_size) if calibration is not None else None
    fn = model_function(model, params, quantized, outputs)
    if fmt == "tflite":
        from mobilebert_jax.export import tflite_export

        result = tflite_export.convert(fn, example, quantization=quantization, representative_batches=batches)
        if path is not None:
            from etils import epath

            epath.Path(path).write_bytes(result)
        return result
    if fmt != "onnx":
        raise ValueError(f"format {fmt!r}: choose one of {sorted(FORMATS.values())}")
    from mobilebert_jax.export import onnx_export

    result = onnx_export.export(fn, example, None)
    if quantization != "float32":
        from mobilebert_jax.export import onnx_quantize

        result = onnx_quantize.quantize(result, quantization, batches)
    if path is not None:
        from etils import epath

        epath.Path(path).write_bytes(result.SerializeToString())
    return result
