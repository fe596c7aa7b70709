"""Peak FLOP/s per device, for model FLOPs utilization (MFU).

Peaks are dense (no structured sparsity) matmul rates per JAX device, from
the vendors' data sheets. Two columns:
  bf16  bfloat16 inputs, float32 accumulation;
  fp32  float32 inputs at JAX's DEFAULT matmul precision, which is what the
        model's float32 runs execute: one bfloat16 pass on TPUs (so the bf16
        peak) and TensorFloat-32 on NVIDIA Ampere and later.
On TPU v2 and v3 a JAX device is one TensorCore, half a chip; from v4 on it
is a whole chip.

CPUs have no entry: their peak depends on the SKU, core count, vector width
and clock, none of which JAX reports, and nobody trains this model on them.
`peak_flops` returns None there and `mfu` returns None, rather than a number
that looks meaningful and is not.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import jax

# (device_kind pattern, name, bf16 FLOP/s, fp32 FLOP/s), first match wins.
PEAKS: tuple[tuple[str, str, float, float], ...] = (
    (r"^TPU v2", "TPU v2 (per core)", 22.5e12, 22.5e12),
    (r"^TPU v3", "TPU v3 (per core)", 61.5e12, 61.5e12),
    (r"^TPU v4$", "TPU v4", 275e12, 275e12),
    (r"^TPU v5 ?(lite|e)", "TPU v5e", 197e12, 197e12),
    (r"^TPU v5p?$", "TPU v5p", 459e12, 459e12),
    (r"^TPU v6 ?(lite|e)", "TPU v6e", 918e12, 918e12),
    (r"A100", "NVIDIA A100", 312e12, 156e12),
    (r"H100.*PCIe", "NVIDIA H100 PCIe", 756e12, 378e12),
    (r"H100", "NVIDIA H100 SXM", 989e12, 494.7e12),
    (r"H200", "NVIDIA H200", 989e12, 494.7e12),
)
DTYPES = ("bfloat16", "float32")


def peak_flops(device_kind: str, dtype: str = "bfloat16") -> Optional[float]:
    """Peak matmul FLOP/s of one device of this `device_kind` (as `jax.Device.device_kind` spells it)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {list(DTYPES)}")
    for pattern, _, bf16, fp32 in PEAKS:
        if re.search(pattern, device_kind):
            return bf16 if dtype == "bfloat16" else fp32
    return None


def mfu(model_flops_per_step: float, step_time_s: float, devices: Optional[Sequence[jax.Device]] = None,
        dtype: str = "bfloat16") -> Optional[float]:
    """Model FLOPs utilization: achieved model FLOP/s over the devices' combined peak.

    `model_flops_per_step` counts the model's own arithmetic for one global
    step (forward and backward, all devices together), not recomputation.
    None when the device kind has no known peak (CPUs, unlisted GPUs).
    """
    devices = list(jax.devices() if devices is None else devices)
    if step_time_s <= 0:
        raise ValueError(f"step_time_s={step_time_s!r} must be positive")
    kinds = sorted({d.device_kind for d in devices})
    if len(kinds) != 1:
        raise ValueError(f"MFU over mixed device kinds {kinds} is not defined")
    peak = peak_flops(kinds[0], dtype)
    if peak is None:
        return None
    return model_flops_per_step / step_time_s / (peak * len(devices))
