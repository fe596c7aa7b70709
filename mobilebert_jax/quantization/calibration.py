"""Activation ranges of every Dense layer's input, from a forward pass over calibration batches.

An interceptor (`nn.intercept_methods`) sees each `nn.Dense` call and sows
statistics of its input into a `quant_stats` collection, so the model code
is untouched. Per batch it records, for every input channel and for the
tensor as a whole, either the min/max or the (100 - p, p) percentiles; over
batches, min/max take the extremes and percentiles the row-weighted mean.
The result is deterministic for given batches.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mobilebert_jax.errors import ConfigError

METHODS = ("minmax", "percentile")
STATS = "quant_stats"


@dataclasses.dataclass(frozen=True)
class InputRange:
    """Calibrated range of one Dense layer's input: per channel [C] and for the whole tensor."""

    channel_lo: np.ndarray
    channel_hi: np.ndarray
    tensor_lo: float
    tensor_hi: float


def _stats(x_MxC: jax.Array, method: str, percentile: float) -> dict[str, jax.Array]:
    x = x_MxC.astype(jnp.float32)
    if method == "minmax":
        lo_C, hi_C = jnp.min(x, axis=0), jnp.max(x, axis=0)
        return {"channel_lo": lo_C, "channel_hi": hi_C, "tensor_lo": jnp.min(lo_C), "tensor_hi": jnp.max(hi_C),
                "rows": jnp.asarray(x.shape[0], jnp.float32)}
    q = jnp.asarray([100.0 - percentile, percentile])
    channel_2xC = jnp.percentile(x, q, axis=0)
    tensor_2 = jnp.percentile(x.reshape(-1), q)
    return {"channel_lo": channel_2xC[0], "channel_hi": channel_2xC[1], "tensor_lo": tensor_2[0],
            "tensor_hi": tensor_2[1], "rows": jnp.asarray(x.shape[0], jnp.float32)}


def _recording_interceptor(method: str, percentile: float):
    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            x = args[0]
            context.module.sow(STATS, "input", _stats(x.reshape(-1, x.shape[-1]), method, percentile))
        return next_fun(*args, **kwargs)

    return interceptor


def calibrate(model: nn.Module, params, batches: Iterable[dict], *, method: str = "minmax",
              percentile: float = 99.99) -> dict[str, InputRange]:
    """Input ranges keyed by the Dense layer's parameter path ("mobilebert/encoder/layer_0/.../query")."""
    if method not in METHODS:
        raise ConfigError(f"calibration method {method!r}: choose one of {list(METHODS)}")
    if not 50.0 < percentile <= 100.0:
        raise ConfigError(f"percentile={percentile}: must be in (50, 100]")

    @jax.jit
    def batch_stats(params, batch):
        with nn.intercept_methods(_recording_interceptor(method, percentile)):
            _, state = model.apply({"params": params}, batch["input_ids"], attention_mask=batch["input_mask"],
                                   token_type_ids=batch["segment_ids"], deterministic=True, mutable=[STATS])
        return state[STATS]

    totals: dict[str, dict[str, np.ndarray]] = {}
    for batch in batches:
        flat = traverse_util.flatten_dict(jax.device_get(batch_stats(params, batch)), sep="/")
        for key, calls in flat.items():
            path = key.removesuffix("/input")
            for call in calls:
                totals[path] = _merge(totals.get(path), call, method)
    if not totals:
        raise ValueError("no calibration batches (or the model has no Dense layer)")
    return {path: InputRange(
        channel_lo=np.asarray(t["channel_lo"] / (t["rows"] if method == "percentile" else 1.0), np.float32),
        channel_hi=np.asarray(t["channel_hi"] / (t["rows"] if method == "percentile" else 1.0), np.float32),
        tensor_lo=float(t["tensor_lo"] / (t["rows"] if method == "percentile" else 1.0)),
        tensor_hi=float(t["tensor_hi"] / (t["rows"] if method == "percentile" else 1.0)))
        for path, t in sorted(totals.items())}


def _merge(total, call: dict, method: str) -> dict:
    call = {k: np.asarray(v, np.float64) for k, v in call.items()}
    if method == "percentile":  # accumulate row-weighted sums; divided by the rows at the end
        weighted = {k: v * call["rows"] for k, v in call.items() if k != "rows"}
        weighted["rows"] = call["rows"]
        return weighted if total is None else {k: total[k] + weighted[k] for k in total}
    if total is None:
        return call
    return {"channel_lo": np.minimum(total["channel_lo"], call["channel_lo"]),
            "channel_hi": np.maximum(total["channel_hi"], call["channel_hi"]),
            "tensor_lo": np.minimum(total["tensor_lo"], call["tensor_lo"]),
            "tensor_hi": np.maximum(total["tensor_hi"], call["tensor_hi"]), "rows": total["rows"] + call["rows"]}
