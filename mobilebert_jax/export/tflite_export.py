"""JAX function -> LiteRT (.tflite) flatbuffer, and running one with the LiteRT interpreter.

The route: `jax2tf.convert` (native serialization: the function's StableHLO is
embedded as one XlaCallModule op) -> `tf.function` with named int32 inputs ->
`tf.lite.TFLiteConverter`, which legalizes the StableHLO to TFLite builtin ops.
Only builtin ops are allowed (no Flex delegate: a phone app ships the
standard LiteRT runtime only). Three quantizations:

- `float32`: the graph as JAX computes it (matches to about 1e-7);
- `dynamic_int8`: int8 weights, activations quantized on the fly per call
  (`Optimize.DEFAULT`, no calibration data);
- `full_int8`: int8 weights and activations, activation ranges calibrated on
  representative batches (the run's own training data), every op restricted
  to the int8 builtin set; the int32 ids go in and float logits come out.

Needs the `litert` extra (tensorflow, ai-edge-litert).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np

from mobilebert_jax.errors import ConfigError

try:
    import tensorflow as tf
    from jax.experimental import jax2tf
except ImportError as e:  # the extra is optional
    raise ConfigError("LiteRT export needs the `litert` extra: pip install 'mobilebert-jax[litert]'") from e

QUANTIZATIONS = ("float32", "dynamic_int8", "full_int8")
SIGNATURE = "serving_default"


def convert(fn: Callable[..., dict], example_inputs: dict[str, np.ndarray], *, quantization: str = "float32",
            representative_batches: Optional[Iterable[dict[str, np.ndarray]]] = None) -> bytes:
    """The .tflite bytes of `fn(**inputs) -> dict of arrays` at the example inputs' (fixed) shapes and dtypes.

    Input and output tensors of the `serving_default` signature keep the dicts' keys as names.
    `representative_batches` (full_int8 only): batches shaped like `example_inputs`.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization {quantization!r}: choose one of {list(QUANTIZATIONS)}")
    if (quantization == "full_int8") != (representative_batches is not None):
        raise ValueError("full_int8 needs representative_batches (and only full_int8 takes them)")
    names = list(example_inputs)
    converted = jax2tf.convert(lambda *args: fn(**dict(zip(names, args))), with_gradient=False)
    module = tf.Module()  # the converter wants the trackable that owns the function
    module.serve = tf.function(converted, autograph=False, input_signature=[
        tf.TensorSpec(v.shape, tf.as_dtype(v.dtype), name=k) for k, v in example_inputs.items()])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "full_int8":
        batches = list(representative_batches)
        if not batches:
            raise ValueError("full_int8: no representative batches to calibrate on")
        for batch in batches:
            for k, v in example_inputs.items():
                if np.shape(batch[k]) != v.shape:
                    raise ValueError(f"representative batch {k!r} has shape {np.shape(batch[k])}, the graph {v.shape}")
        converter.representative_dataset = lambda: ({k: np.asarray(b[k], v.dtype) for k, v in example_inputs.items()}
                                                    for b in batches)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


class LiteRTModel:
    """A .tflite file's `serving_default` signature on the LiteRT interpreter: `model(**inputs) -> {name: array}`."""

    def __init__(self, model: str | bytes, num_threads: Optional[int] = None):
        from ai_edge_litert.interpreter import Interpreter

        kwargs = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        self.interpreter = Interpreter(**kwargs, num_threads=num_threads)
        self._runner = self.interpreter.get_signature_runner(SIGNATURE)
        self.inputs = {k: (tuple(d["shape"]), np.dtype(d["dtype"])) for k, d in self._runner.get_input_details().items()}
        self.outputs = {k: (tuple(d["shape"]), np.dtype(d["dtype"]))
                        for k, d in self._runner.get_output_details().items()}

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        return self._runner(**{k: np.asarray(inputs[k], dtype) for k, (_, dtype) in self.inputs.items()})

    def operators(self) -> set[str]:
        """The builtin op names the graph uses (e.g. to check which kernels are int8)."""
        return {op["op_name"] for op in self.interpreter._get_ops_details()}  # noqa: SLF001 (no public listing)
