"""The optax pieces optax itself lacks, and the LAMB / AdamW cores built from optax pieces.

LAMB here is TF1's (REFERENCE section 5), not `optax.lamb`: the trust ratio
is skipped for norms and biases too (optax.lamb's mask covers weight decay
only), and Adam's moments may be left without bias correction.
"""

from __future__ import annotations

from typing import Callable, Hashable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mobilebert_jax.modeling import stacking
from mobilebert_jax.optim import paths
from mobilebert_jax.optim.multipliers import Multiplier


class ScaleByAdamNoBiasCorrectionState(NamedTuple):
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam_no_bias_correction(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    mu_dtype: Optional[jnp.dtype] = None,
) -> optax.GradientTransformation:
    """m / (sqrt(v) + eps) with m, v exponential averages that are never debiased (TF1 BERT/LAMB).

    `optax.scale_by_adam` has no switch for this: it always divides by
    1 - b^t. Without that, the first steps take small updates, which is how
    the TF1 optimizers (and so the released checkpoints) were trained.
    """

    def init_fn(params):
        return ScaleByAdamNoBiasCorrectionState(
            mu=optax.tree.zeros_like(params, dtype=mu_dtype), nu=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return updates, ScaleByAdamNoBiasCorrectionState(mu=optax.tree.cast(mu, mu_dtype), nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def adam_moments(b1: float, b2: float, eps: float, bias_correction: bool,
                 mu_dtype: Optional[jnp.dtype] = None) -> optax.GradientTransformation:
    if bias_correction:
        return optax.scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype)
    return scale_by_adam_no_bias_correction(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype)


def lamb_direction(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    bias_correction: bool = False,
    exempt: paths.PathFn = paths.is_norm_or_bias,
    mu_dtype: Optional[jnp.dtype] = None,
) -> optax.GradientTransformation:
    """r * (m / (sqrt(v) + eps) + wd * w), with wd and r skipped where `exempt(path)`; no lr, no clip."""
    applies = paths.mask(lambda keys: not exempt(keys))
    return optax.chain(
        adam_moments(b1, b2, eps, bias_correction, mu_dtype),
        optax.add_decayed_weights(weight_decay, mask=applies),
        optax.masked(scale_by_trust_ratio_per_layer(), applies),
    )


def scale_by_trust_ratio_per_layer() -> optax.GradientTransformation:
    """`optax.scale_by_trust_ratio` (||w|| / ||u||, 1 when either is 0, as TF1), with the norms of a scanned
    encoder's stacked leaf (`encoder/layers/...`, modeling/stacking.py) taken per layer along its first axis, so
    that each layer gets the ratio it gets unrolled. Other leaves: optax's computation, unchanged."""

    def update_fn(updates, state, params):
        if params is None:
            raise ValueError("scale_by_trust_ratio_per_layer needs `params` in update()")

        def scale(key_path, update, param):
            per_layer = stacking.is_stacked_path(paths.path_of(key_path))
            axis = tuple(range(1, update.ndim)) if per_layer else None
            param_norm = optax.safe_norm(param, 0.0, axis=axis, keepdims=per_layer)
            update_norm = optax.safe_norm(update, 0.0, axis=axis, keepdims=per_layer)
            zero_norm = jnp.logical_or(param_norm == 0.0, update_norm == 0.0)
            return update * jnp.where(zero_norm, jnp.array(1.0, dtype=param.dtype), param_norm / update_norm)

        return jax.tree_util.tree_map_with_path(scale, updates, params), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def adamw_direction(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    bias_correction: bool = False,
    exempt: paths.PathFn = paths.is_norm_or_bias,
    mu_dtype: Optional[jnp.dtype] = None,
) -> optax.GradientTransformation:
    """m / (sqrt(v) + eps) + wd * w with wd skipped where `exempt(path)`; no lr, no clip."""
    return optax.chain(
        adam_moments(b1, b2, eps, bias_correction, mu_dtype),
        optax.add_decayed_weights(weight_decay, mask=paths.mask(lambda keys: not exempt(keys))),
    )


class GatedState(NamedTuple):
    count: jax.Array
    inner: optax.OptState


def gated_by_multiplier(inner: optax.GradientTransformation, multiplier: Multiplier) -> optax.GradientTransformation:
    """Scales `inner`'s updates by multiplier(step) and holds its state at init while that is 0.

    This is TF1's `layer_wise_gate` in progressive distillation: a layer whose
    rate is 0 keeps zero Adam moments, so it starts afresh when it is switched
    on instead of carrying moments from gradients it was never trained on.
    """

    def init_fn(params):
        return GatedState(count=jnp.zeros([], jnp.int32), inner=inner.init(params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("gated_by_multiplier needs `params` in update() to re-initialize the gated state")
        m = jnp.asarray(multiplier(state.count))
        updates, inner_state = inner.update(updates, state.inner, params)
        updates = jax.tree.map(lambda u: u * m.astype(u.dtype), updates)
        fresh = inner.init(params)
        inner_state = jax.tree.map(lambda new, init: jnp.where(m != 0, new, init), inner_state, fresh)
        return updates, GatedState(count=optax.safe_increment(state.count), inner=inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


def per_layer_view(inner: optax.GradientTransformation,
                   label: Callable[[str], Hashable]) -> optax.GradientTransformation:
    """Runs `inner` on a scanned encoder's stacked parameters (modeling/stacking.py) as it runs unrolled.

    `label(path)` is what `inner` decides by path (the exclusion and the group of an unrolled path). A stacked
    leaf whose layers all get the same label stays stacked: `inner` matches its labels on layer 0's path, and
    its only per-tensor statistic, LAMB's trust ratio, is taken per layer (`scale_by_trust_ratio_per_layer`).
    A stacked leaf whose layers differ (progressive transfer: a group, a multiplier and a state gate per layer)
    is split into per-layer leaves under `layer_{i}` for `inner`, and its updates stacked back. Either way each
    layer is optimized as unrolled; the optimizer state is stacked where the parameters stay stacked. A tree
    without stacked leaves passes through unchanged.
    """

    def split(path: str, layers: int) -> bool:
        return len({label(stacking.unrolled_path(path, i)) for i in range(layers)}) > 1

    def init_fn(params):
        return inner.init(stacking.unstack(params, only=split))

    def update_fn(updates, state, params=None):
        if not stacking.is_stacked(updates):
            return inner.update(updates, state, params)
        params = None if params is None else stacking.unstack(params, only=split)
        updates, state = inner.update(stacking.unstack(updates, only=split), state, params)
        return stacking.stack(updates), state

    return optax.GradientTransformation(init_fn, update_fn)
