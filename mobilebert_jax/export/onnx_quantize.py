"""A float ONNX export -> a real int8 ONNX graph, with onnxruntime's quantization tool.

- `dynamic_int8`: int8 weights (per output channel); each MatMul's input is
  quantized on the fly per call (DynamicQuantizeLinear -> MatMulInteger), so
  no calibration data is needed.
- `full_int8`: a QDQ graph (QuantizeLinear/DequantizeLinear pairs around
  int8 weights and activations) with MinMax activation ranges calibrated on
  representative batches (the run's own training data); onnxruntime fuses
  the pairs into int8 kernels.

Only MatMul and Gather (the embedding lookup) are quantized: they hold
almost every weight, and the norms, residual additions and softmax stay float
as in `mobilebert_jax.quantization` (REFERENCE section 7).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import onnx

from mobilebert_jax.errors import ConfigError

try:
    from onnxruntime import quantization as ortq
except ImportError as e:  # the extra is optional
    raise ConfigError("int8 ONNX export needs onnxruntime: pip install 'mobilebert-jax[export]'") from e

QUANTIZATIONS = ("dynamic_int8", "full_int8")
OP_TYPES = ["MatMul", "Gather"]


class _Batches(ortq.CalibrationDataReader):
    def __init__(self, batches: list[dict[str, np.ndarray]]):
        self._batches = iter(batches)

    def get_next(self):
        return next(self._batches, None)


def quantize(model: onnx.ModelProto, quantization: str,
             representative_batches: Optional[Iterable[dict[str, np.ndarray]]] = None) -> onnx.ModelProto:
    """The int8 version of the float `model`; `representative_batches` (full_int8 only) match its inputs."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"ONNX quantization {quantization!r}: choose one of {list(QUANTIZATIONS)}")
    if (quantization == "full_int8") != (representative_batches is not None):
        raise ValueError("full_int8 needs representative_batches (and only full_int8 takes them)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        if quantization == "dynamic_int8":
            ortq.quantize_dynamic(model, out, op_types_to_quantize=OP_TYPES, per_channel=True,
                                  weight_type=ortq.QuantType.QInt8)
        else:
            inputs = [i.name for i in model.graph.input]
            batches = [{k: np.asarray(b[k]) for k in inputs} for b in representative_batches]
            if not batches:
                raise ValueError("full_int8: no representative batches to calibrate on")
            ortq.quantize_static(model, out, _Batches(batches), quant_format=ortq.QuantFormat.QDQ,
                                 op_types_to_quantize=OP_TYPES, per_channel=True,
                                 activation_type=ortq.QuantType.QInt8, weight_type=ortq.QuantType.QInt8,
                                 calibrate_method=ortq.CalibrationMethod.MinMax)
        return onnx.load_model(out)
