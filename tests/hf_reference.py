"""Helpers shared by the tests that compare against HF transformers (PyTorch, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from mobilebert_jax.config import MobileBertConfig

torch = pytest.importorskip("torch", reason="parity tests need the `test` extra (torch)")
transformers = pytest.importorskip("transformers", reason="parity tests need the `test` extra (transformers)")


def hf_config(config: MobileBertConfig, **extra):
    d = {k: v for k, v in config.to_hf_dict().items() if k not in ("architectures", "mobilebert_jax")}
    d.update(extra)
    return transformers.MobileBertConfig(**d, attn_implementation="eager")


def randomize_(model, seed: int = 0) -> None:
    """Every parameter random: kernels, biases, norm scales, the pad row too.

    Large enough that attention is far from uniform (query/key weights 3x the
    rest), so a wrong mask convention or a misplaced bias moves the outputs by
    far more than the 1e-5 tolerance; small enough that float32 error stays
    a few 1e-6 through the layers.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))  # NoNorm and LayerNorm scales
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif ".query." in name or ".key." in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model.eval()


def batch(config: MobileBertConfig, batch_size: int = 3, seq_len: int = 12, seed: int = 0):
    """Token ids that include the pad id, two segments, and padded rows."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, config.vocab_size, size=(batch_size, seq_len)).astype(np.int64)
    mask = np.ones_like(ids)
    for row in range(1, batch_size):  # rows 1.. padded at the end by different amounts
        pad = 2 * row + 1
        mask[row, -pad:] = 0
        ids[row, -pad:] = config.pad_token_id
    types = np.zeros_like(ids)
    types[:, seq_len // 2:] = 1
    return ids, mask, types


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
