"""Training metrics out of the process: TensorBoard events, a JSONL file, and a progress line.

Only process 0 writes anything; on the other hosts every call is a no-op, so
the train loop can call them unconditionally.

    writer = MetricsWriter(workdir, total_steps=N, tokens_per_step=B * T)
    writer.write(step, {"loss": 2.3, "lr": 1e-3})   # every logging step
    writer.close()

prints `step 1200/500000 | loss 2.3 | 3.21 steps/s | 3,366,912 tokens/s (2,020,147 real, 40.0% padding) | ETA
43:04:11` (real tokens and padding where the metrics have `padding_fraction`, train/throughput.py). Lines fit a terminal
(LINE_WIDTH): an objective with many metrics gives a summary (train/stage.Spec.summary); the full record is in
metrics.jsonl and TensorBoard.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Callable, Mapping, Optional, Sequence, TextIO

Summary = Callable[[Mapping[str, float], int], list[str]]

import jax
import numpy as np
import tensorboardX

from mobilebert_jax import jsonl as jsonl_lib
from mobilebert_jax import storage

# The longest line the trainer prints: a wider one is cut, saying where the rest is.
LINE_WIDTH = 160


def join(head: str, parts: Sequence[str], tail: Sequence[str] = (), width: int = LINE_WIDTH) -> str:
    """`head` then `part | ... | tail...` with as many of `parts` (most important first) as fit in `width`; a
    line that leaves some out says where they are."""
    more = "... (all in metrics.jsonl)"
    for n in range(len(parts), -1, -1):
        line = head + " | ".join(list(parts[:n]) + ([more] if n < len(parts) else []) + list(tail))
        if len(line) <= width:
            break
    return line


def eval_line(step: int, metrics: Mapping[str, float], summary: Optional[Summary] = None) -> str:
    """`eval at step N: ...`: the summary's parts, or every metric, within LINE_WIDTH."""
    parts = summary(metrics, step) if summary else [f"{k} {float(v):.4f}" for k, v in metrics.items()]
    return join(f"eval at step {step}: ", parts)


class ProgressLine:
    """Formats progress lines with a smoothed step rate (exponential moving average)."""

    def __init__(self, total_steps: int, tokens_per_step: Optional[int] = None, smoothing: float = 0.9,
                 keys: Sequence[str] = ("loss",), clock: Callable[[], float] = time.monotonic,
                 summary: Optional[Summary] = None):
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing={smoothing!r} must be in [0, 1)")
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step
        self.smoothing = smoothing
        self.keys = tuple(keys)
        self.summary = summary
        self._clock = clock
        self._last: Optional[tuple[int, float]] = None
        self.steps_per_second: Optional[float] = None

    def update(self, step: int, metrics: Mapping[str, float]) -> str:
        now = self._clock()
        # The rate is measured between calls, so the first call (which
        # usually follows compilation) only sets the starting point.
        if self._last is not None and step > self._last[0] and now > self._last[1]:
            rate = (step - self._last[0]) / (now - self._last[1])
            if self.steps_per_second is None:
                self.steps_per_second = rate
            else:
                self.steps_per_second = self.smoothing * self.steps_per_second + (1 - self.smoothing) * rate
        self._last = (step, now)

        if self.summary is not None:
            parts = self.summary(metrics, step)
        else:
            parts = [f"{k} {float(metrics[k]):.4g}" for k in self.keys if k in metrics]
        rates = []
        if self.steps_per_second is not None:
            rates.append(f"{self.steps_per_second:.3g} steps/s")
            if self.tokens_per_step:
                tokens = self.steps_per_second * self.tokens_per_step
                padding = metrics.get("padding_fraction")
                rates.append(f"{tokens:,.0f} tokens/s" if padding is None else
                             f"{tokens:,.0f} tokens/s ({tokens * (1 - padding):,.0f} real, {padding:.1%} padding)")
            remaining = max(self.total_steps - step, 0) / self.steps_per_second
            rates.append(f"ETA {_hms(remaining)}")
        return join(f"step {step}/{self.total_steps}" + (" | " if parts or rates else ""), parts, rates)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricsWriter:
    """Scalars to TensorBoard (`<workdir>/tensorboard`) and `<workdir>/metrics.jsonl`, plus progress lines."""

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int,
        tokens_per_step: Optional[int] = None,
        progress_keys: Sequence[str] = ("loss",),
        summary: Optional[Summary] = None,
        tensorboard: bool = True,
        jsonl: bool = True,
        stream: TextIO = sys.stdout,
        clock: Callable[[], float] = time.monotonic,
        process_index: Optional[int] = None,
    ):
        self.active = (jax.process_index() if process_index is None else process_index) == 0
        self._stream = stream
        self._progress = ProgressLine(total_steps, tokens_per_step, keys=progress_keys, clock=clock,
                                     summary=summary)
        self._tb = self._jsonl = None
        if not self.active:
            return
        storage.path(workdir).mkdir(parents=True, exist_ok=True)
        if tensorboard:
            # tensorboardX writes gs:// event files itself (google-cloud-storage), local ones with open().
            self._tb = tensorboardX.SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
        if jsonl:
            self._jsonl = jsonl_lib.open_append(os.path.join(workdir, "metrics.jsonl"))  # a torn last line repaired

    def write(self, step: int, metrics: Mapping[str, float], progress: bool = True) -> None:
        """Records scalar metrics for `step`; prints a progress line unless `progress=False` (e.g. eval)."""
        if not self.active:
            return
        scalars = {}
        for k, v in metrics.items():
            value = np.asarray(v)
            if value.size != 1:
                raise ValueError(f"metric {k!r} at step {step} is not a scalar (shape {value.shape})")
            scalars[k] = float(value.reshape(()))
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._jsonl is not None:
            # NaN/inf are kept (as JSON's NaN/Infinity extension) because a diverging loss is the point.
            self._jsonl.write(json.dumps({"step": int(step), "time": _now(), **scalars}) + "\n")
            self._jsonl.flush()
        if progress:
            print(self._progress.update(step, scalars), file=self._stream, flush=True)

    @property
    def steps_per_second(self) -> Optional[float]:
        """The smoothed training rate (None until two progress lines were written)."""
        return self._progress.steps_per_second

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
        if self._jsonl is not None:
            self._jsonl.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
