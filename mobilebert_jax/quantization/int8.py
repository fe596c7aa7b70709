"""Int8 number formats: symmetric per-channel weights, affine (asymmetric) activations.

Weights: q = round(w / s) in [-127, 127], one scale per output channel
(s = max|w| / 127), as TFLite and most int8 kernels store them. Activations:
q = clamp(round(x / s) + z, -128, 127), x ~ s (q - z), with (s, z) from a
calibrated range that always contains 0, so that zero (padding, ReLU) is exact.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

WEIGHT_QMAX = 127
ACT_QMIN, ACT_QMAX = -128, 127


def quantize_weight(w_KxN: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float32 scales along `axis`): symmetric, one scale per slice along `axis`."""
    w = np.asarray(w_KxN, np.float32)
    reduce_axes = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    max_abs = np.max(np.abs(w), axis=reduce_axes, keepdims=True)
    # An all-zero channel keeps scale 1 so that it dequantizes to exact zeros.
    scale = np.where(max_abs > 0, max_abs / WEIGHT_QMAX, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8)
    return q, np.squeeze(scale, axis=reduce_axes)


def dequantize_weight(q: np.ndarray, scale: np.ndarray, axis: int = -1) -> np.ndarray:
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.astype(np.float32) * np.reshape(scale, shape)


def activation_qparams(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) per element of `lo`/`hi` (scalars: per tensor; vectors: per channel)."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    span = hi - lo
    scale = np.where(span > 0, span / (ACT_QMAX - ACT_QMIN), 1.0)
    zero_point = np.clip(np.round(ACT_QMIN - lo / scale), ACT_QMIN, ACT_QMAX)
    return scale.astype(np.float32), zero_point.astype(np.float32)


def fake_quant(x, scale, zero_point):
    """x rounded to the int8 grid (scale, zero point) and back, in float: what int8 inference computes with."""
    q = jnp.clip(jnp.round(x / scale) + zero_point, ACT_QMIN, ACT_QMAX)
    return ((q - zero_point) * scale).astype(x.dtype)
