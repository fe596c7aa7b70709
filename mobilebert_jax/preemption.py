"""SIGTERM as "stop at the next step boundary", from the first line of the process on.

Standard library only, so that `main` can install the handler before it
imports JAX (seconds) and the trainer builds the data and the program
(minutes): a SIGTERM at any moment after that sets `STOP`, and the trainer's
`checkpointing.PreemptionGuard` (which uses the same flag) stops cleanly at
the next step boundary, or before the first step, instead of the process
dying without a word.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

STOP = threading.Event()


def handle(signum: int, frame: Any) -> None:
    del frame
    if not STOP.is_set():
        print(f"received signal {signum}: will stop at the next step boundary (saving a checkpoint if a step ran)",
              file=sys.stderr, flush=True)
    STOP.set()


def install(signals: tuple[int, ...] = (signal.SIGTERM,)) -> dict[int, Any]:
    """Routes `signals` to `handle`; returns the handlers it replaced. Only the main thread may install handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handle) for sig in signals}
