"""Post-training int8 quantization of a fine-tuned model, simulated in the Flax forward pass.

What is int8 (REFERENCE section 7 explains the care taken):
- every Dense kernel: symmetric per output channel;
- every Dense input: affine int8 from calibrated ranges. Inputs that come
  straight out of a norm (logical axes `hidden` and `bottleneck`: the
  inter-block and intra-block residual streams) get one scale per input
  channel. MobileBERT's NoNorm does not normalize, so a few channels of
  these streams are orders of magnitude larger than the rest (about 2.5e7
  in the released checkpoint); one scale for the whole tensor would round
  every ordinary channel to zero. A per-input-channel scale s_k is still
  integer arithmetic: it is folded into the kernel's rows before the
  kernel is quantized, y = sum_k (q_k - z_k) Q(s_k W_kj), so the simulated
  kernel is Q(diag(s) W) / s. Other inputs (attention context, FFN
  activations, the trigram embedding) use one scale per tensor;
- the word-embedding table: symmetric per row (a lookup needs no matmul).

What stays float: the norms and residual additions (they carry the huge
values; in int8 kernels they are requantization steps, not matmuls), the
attention score and context products, softmax, biases (int32 in a real
kernel, exact here), position and token-type tables, heads' softmax.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mobilebert_jax.quantization import int8
from mobilebert_jax.quantization.calibration import InputRange

# Logical input axes of kernels whose input is a norm's output: the residual streams.
NORM_OUTPUT_AXES = ("hidden", "bottleneck")
WORD_EMBEDDINGS = "mobilebert/embeddings/word_embeddings/embedding"


@dataclasses.dataclass(frozen=True)
class PTQConfig:
    activations: bool = True  # False: weight-only int8
    per_channel_input_axes: tuple[str, ...] = NORM_OUTPUT_AXES  # () = one scale per tensor everywhere (naive)
    quantize_embeddings: bool = True


@dataclasses.dataclass
class QuantizedDense:
    kernel_q: np.ndarray  # int8 [in, out]: Q(diag(input_scale) W)
    kernel_scale: np.ndarray  # float32 [out]
    input_scale: np.ndarray  # float32 [] or [in]; ones for weight-only
    input_zero_point: np.ndarray  # float32, same shape
    per_channel_input: bool

    def effective_kernel(self) -> np.ndarray:
        """The float kernel that, applied to the fake-quantized input, computes the int8 product exactly."""
        rows = np.reshape(self.input_scale, (-1, 1))
        return int8.dequantize_weight(self.kernel_q, self.kernel_scale) / rows


@dataclasses.dataclass
class QuantizedModel:
    dense: dict[str, QuantizedDense]  # by the Dense layer's path, "mobilebert/.../query"
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]]  # leaf path -> (int8 [V, E], float32 scales [V])
    float_params: dict[str, np.ndarray]  # every other leaf, by "/"-joined path
    config: PTQConfig

    def dequantized_params(self) -> dict:
        """The float parameter tree the fake-quant forward pass runs with."""
        flat = dict(self.float_params)
        for path, layer in self.dense.items():
            flat[f"{path}/kernel"] = layer.effective_kernel()
        for path, (q, scale) in self.embeddings.items():
            flat[path] = int8.dequantize_weight(q, scale, axis=0)
        return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")

    def size_bytes(self) -> int:
        """Bytes an int8 deployment stores: int8 values, float32 scales and zero points, float32 rest."""
        total = sum(v.size * 4 for v in self.float_params.values())
        for layer in self.dense.values():
            total += layer.kernel_q.size + 4 * layer.kernel_scale.size
            if self.config.activations:
                total += 4 * (layer.input_scale.size + layer.input_zero_point.size)
        for q, scale in self.embeddings.values():
            total += q.size + 4 * scale.size
        return total

    def kernel_bytes(self) -> tuple[int, int]:
        """(float32 bytes, int8 bytes incl. scales) of the quantized kernels alone."""
        return (sum(l.kernel_q.size * 4 for l in self.dense.values()),
                sum(l.kernel_q.size + 4 * l.kernel_scale.size for l in self.dense.values()))


def float_size_bytes(params) -> int:
    return sum(np.asarray(x).size * np.asarray(x).dtype.itemsize for x in jax.tree.leaves(nn.unbox(params)))


def kernel_input_axes(model: nn.Module, example_input_ids) -> dict[str, str]:
    """Dense path -> the logical name of its kernel's input axis ("" if unnamed), from an abstract init."""
    boxed = jax.eval_shape(model.init, jax.random.key(0), example_input_ids)["params"]
    axes = {}
    for path, leaf in traverse_util.flatten_dict(boxed, sep="/").items():  # boxes are leaves: not dicts
        if path.endswith("/kernel"):
            names = getattr(leaf, "names", ())
            axes[path.removesuffix("/kernel")] = names[0] if len(names) == 2 else ""
    return axes


def quantize(model: nn.Module, params, ranges: Optional[dict[str, InputRange]], config: PTQConfig = PTQConfig(),
             example_input_ids=None) -> QuantizedModel:
    """Int8 weights (and activation parameters from `ranges`) for every Dense layer of `model`."""
    if config.activations and ranges is None:
        raise ValueError("activation quantization needs calibrated ranges (calibration.calibrate), "
                         "or PTQConfig(activations=False) for weight-only")
    ids = np.zeros((1, 8), np.int32) if example_input_ids is None else example_input_ids
    input_axes = kernel_input_axes(model, ids)
    flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(nn.unbox(params), sep="/").items()}
    dense, embeddings = {}, {}
    for path, axis in sorted(input_axes.items()):
        kernel = flat.pop(f"{path}/kernel")
        per_channel = axis in config.per_channel_input_axes
        if config.activations:
            if path not in ranges:
                raise ValueError(f"no calibrated range for the input of Dense layer {path!r}; calibrate this model "
                                 f"(ranges cover {len(ranges)} layers)")
            r = ranges[path]
            lo, hi = (r.channel_lo, r.channel_hi) if per_channel else (r.tensor_lo, r.tensor_hi)
            scale, zero_point = int8.activation_qparams(lo, hi)
        else:
            scale, zero_point = np.ones((), np.float32), np.zeros((), np.float32)
        q, kernel_scale = int8.quantize_weight(np.reshape(scale, (-1, 1)) * kernel, axis=-1)
        dense[path] = QuantizedDense(q, kernel_scale, scale, zero_point, per_channel)
    if config.quantize_embeddings and WORD_EMBEDDINGS in flat:
        embeddings[WORD_EMBEDDINGS] = int8.quantize_weight(flat.pop(WORD_EMBEDDINGS), axis=0)
    return QuantizedModel(dense, embeddings, flat, config)


def _fake_quant_interceptor(qmodel: QuantizedModel):
    qparams = {path: (jnp.asarray(l.input_scale), jnp.asarray(l.input_zero_point))
               for path, l in qmodel.dense.items()}

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            path = "/".join(context.module.scope.path)
            scale, zero_point = qparams[path]
            args = (int8.fake_quant(args[0], scale, zero_point), *args[1:])
        return next_fun(*args, **kwargs)

    return interceptor


def apply_quantized(model: nn.Module, qmodel: QuantizedModel, input_ids, *, params: Any = None, **kwargs) -> dict:
    """`model.apply` as int8 inference computes it; `params` = `qmodel.dequantized_params()` (pass it to reuse)."""
    params = qmodel.dequantized_params() if params is None else params
    if not qmodel.config.activations:
        return model.apply({"params": params}, input_ids, **kwargs)
    with nn.intercept_methods(_fake_quant_interceptor(qmodel)):
        return model.apply({"params": params}, input_ids, **kwargs)
