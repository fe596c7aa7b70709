"""Throughput of a logging window: padded and useful (non-padding) tokens, model FLOPs and MFU.

The padded figures count every position of every row, as the step computes them: tokens/s is steps/s x batch x
sequence length, FLOPs come from `flops.py` at the full length. The useful figures count only the tokens the
batches' `input_mask` marks as real (the train step's `real_tokens`, summed over the global batch on device):

  padding_fraction                  1 - real tokens / padded tokens, over the window's steps
  real_tokens_per_second            tokens_per_second x (1 - padding_fraction)
  useful_model_flops_per_second     model_flops_per_second x (1 - padding_fraction)
  useful_mfu                        mfu x (1 - padding_fraction)

Useful FLOPs scale the padded count by the real tokens' share. That is exact for every per-token matmul (the
bulk of the model) and counts attention among a row's real tokens as if each attended to the full length, so at
heavy padding it is slightly above the arithmetic a packed batch would need.
"""

from __future__ import annotations

from typing import Optional

from mobilebert_jax import hardware


class Throughput:
    """Counts real tokens step by step; `scalars(rate)` gives the window's figures and starts a new window."""

    def __init__(self, *, batch_size: int, tokens_per_example: int, flops_per_step: float, dtype: str):
        self.batch_size = batch_size
        self.tokens_per_step = batch_size * tokens_per_example
        self.flops_per_step = flops_per_step
        self.dtype = dtype
        self._steps = 0
        self._real_tokens = 0

    def add_step(self, real_tokens: Optional[float]) -> None:
        """One step's non-padding token count over the global batch (None: its batch has no input_mask)."""
        if real_tokens is not None:
            self._steps += 1
            self._real_tokens += int(real_tokens)

    def scalars(self, steps_per_second: Optional[float]) -> dict[str, float]:
        """The figures since the last call; rates need `steps_per_second` (None before it is known)."""
        out: dict[str, float] = {}
        useful_share = None
        if self._steps:
            padded = self._steps * self.tokens_per_step
            useful_share = self._real_tokens / padded
            out["padding_fraction"] = (padded - self._real_tokens) / padded  # exact: integers, one division
        self._steps = self._real_tokens = 0
        if steps_per_second:
            rates = {"examples_per_second": steps_per_second * self.batch_size,
                     "tokens_per_second": steps_per_second * self.tokens_per_step,
                     "model_flops_per_second": steps_per_second * self.flops_per_step}
            mfu = hardware.mfu(self.flops_per_step, 1.0 / steps_per_second, dtype=self.dtype)
            if mfu is not None:
                rates["mfu"] = mfu
            out.update(rates)
            if useful_share is not None:
                out["real_tokens_per_second"] = rates["tokens_per_second"] * useful_share
                out["useful_model_flops_per_second"] = rates["model_flops_per_second"] * useful_share
                if mfu is not None:
                    out["useful_mfu"] = mfu * useful_share
        return out
