"""The small pieces every block is built from: dense, norms, activations.

Every parameter carries logical axis names (`nn.with_logical_partitioning`) so
the trainer can shard it by rules; `mobilebert_jax.partitioning` maps them to
mesh axes. Logical names used here: vocab, embed, trigram, hidden, bottleneck,
qkv, mlp, position, token_type, transform, extra_embed, classes, norm.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.config import MobileBertConfig

Dtype = jnp.dtype


@jax.custom_vjp
def _matmul_explicit_weight_gradient(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., in] @ w [in, out], whose kernel gradient is transpose(x) @ dy with the transpose materialized.

    Left to itself, XLA:CPU computes dW = x^T dy as a dot that contracts the leading axis of x against a
    transposed dy, and its kernel for that form runs at 56-67 GFLOP/s where a plain [in, rows] x [rows, out]
    matmul of the same size runs at 110-140 (`benchmarks/step_bound.py` prints the per-shape figures). Copying
    x^T first costs one pass over x; the optimization barrier keeps XLA from folding the copy back into the dot.
    """
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _matmul_forward(x, w):
    return _matmul_explicit_weight_gradient(x, w), (x, w)


def _matmul_backward(residuals, dy):
    x, w = residuals
    dx = jax.lax.dot_general(dy, w, (((dy.ndim - 1,), (1,)), ((), ())))
    x_transposed = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)  # [in, rows]
    dw = x_transposed @ dy.reshape(-1, dy.shape[-1])  # [in, out]
    return dx, dw.astype(w.dtype)


_matmul_explicit_weight_gradient.defvjp(_matmul_forward, _matmul_backward)


def _explicit_weight_gradient_dot_general(x, w, dimension_numbers, precision=None, preferred_element_type=None):
    """The `dot_general` nn.Dense calls (last axis of x against axis 0 of the kernel), with that backward."""
    if (dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())) or precision is not None
            or preferred_element_type is not None):
        raise ValueError("explicit weight gradients cover nn.Dense's default contraction only, got "
                         f"{dimension_numbers}, precision={precision}, preferred_element_type={preferred_element_type}")
    return _matmul_explicit_weight_gradient(x, w)


def compute_dtype(config: MobileBertConfig) -> Dtype:
    return jnp.dtype(config.dtype)


def kernel_init(config: MobileBertConfig, axes: tuple[str, str]):
    # TF1 BERT's truncated normal: cut at two standard deviations.
    return nn.with_logical_partitioning(nn.initializers.truncated_normal(config.initializer_range), axes)


def dense(config: MobileBertConfig, features: int, axes: tuple[str, str], name: str, use_bias: bool = True) -> nn.Dense:
    """A Dense layer whose kernel [in, out] is named by the logical `axes`."""
    extra = {"dot_general": _explicit_weight_gradient_dot_general} if config.explicit_weight_gradients else {}
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=compute_dtype(config),
        param_dtype=jnp.float32,
        kernel_init=kernel_init(config, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
        name=name,
        **extra,
    )


class NoNorm(nn.Module):
    """MobileBERT's normalization replacement: an elementwise affine map, no statistics."""

    axis_name: str
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
                           (features,), jnp.float32)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,)),
                          (features,), jnp.float32)
        return (x * scale.astype(self.dtype) + bias.astype(self.dtype)).astype(self.dtype)


def layer_norm(config: MobileBertConfig, axis_name: str, epsilon: float, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=compute_dtype(config),
        param_dtype=jnp.float32,
        # Two-pass variance: E[x^2] - E[x]^2 loses precision on the large,
        # unnormalized activations MobileBERT produces.
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis_name,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axis_name,)),
        name=name,
    )


def norm(config: MobileBertConfig, axis_name: str, epsilon: float, name: str = "LayerNorm") -> nn.Module:
    """The block norm the config asks for; HF names it `LayerNorm` either way."""
    if config.normalization_type == "no_norm":
        return NoNorm(axis_name=axis_name, dtype=compute_dtype(config), name=name)
    return layer_norm(config, axis_name, epsilon, name)


def _gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)


def _gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def _relu6(x):
    return jnp.clip(x, 0, 6)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "relu6": _relu6,  # the quantization-aware variant
    "gelu": _gelu_exact,  # HF's "gelu" is the erf form
    "gelu_new": _gelu_tanh,  # TF1 BERT's gelu is the tanh approximation
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    return _ACTIVATIONS[name]
