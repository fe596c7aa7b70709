"""SIGTERM (and, while steps run, Ctrl-C) as "stop at the next step boundary", from the first line of the process on.

Standard library only, so that `main` can install the handler before it
imports JAX (seconds) and the trainer builds the data and the program
(minutes): a SIGTERM at any moment after that sets `STOP`, and the trainer's
`checkpointing.PreemptionGuard` (which uses the same flag) stops cleanly at
the next step boundary, or before the first step, instead of the process
dying without a word. The training loop routes SIGINT here too, so Ctrl-C
saves like a preemption; a second Ctrl-C stops at once, without saving.

A run stopped this way has not reached its last step, so its command must not
exit 0 (`main && evaluate` would go on): `exit_if_stopped` ends it with
`PREEMPTED_EXIT` or `INTERRUPTED_EXIT` and a line saying to rerun the same
command; `launch/tpu_run.sh watch` reads the first as "restart".
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

STOP = threading.Event()
# The signals that set STOP, in order (the exit status tells a Ctrl-C from a preemption).
RECEIVED: list[int] = []

PREEMPTED_EXIT = 75  # sysexits' EX_TEMPFAIL: stopped early on purpose, rerun to continue
INTERRUPTED_EXIT = 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)


def handle(signum: int, frame: Any) -> None:
    del frame
    if signum == signal.SIGINT and signal.SIGINT in RECEIVED:
        raise KeyboardInterrupt  # asked twice: stop now; the checkpoints already committed stay
    RECEIVED.append(signum)
    if signum == signal.SIGINT:
        print("interrupted: saving a checkpoint at the next step boundary, then exiting (Ctrl-C again to stop at "
              "once without saving)", file=sys.stderr, flush=True)
    elif not STOP.is_set():
        print(f"received signal {signum}: will stop at the next step boundary (saving a checkpoint if a step ran)",
              file=sys.stderr, flush=True)
    STOP.set()


def install(signals: tuple[int, ...] = (signal.SIGTERM,)) -> dict[int, Any]:
    """Routes `signals` to `handle`; returns the handlers it replaced. Only the main thread may install handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handle) for sig in signals}


def exit_if_stopped() -> None:
    """Ends the process with a non-zero status and one line if a signal stopped the run before its end."""
    if not STOP.is_set():
        return
    if signal.SIGINT in RECEIVED:
        print("interrupted: the run stopped before its last step; resume with the same command", file=sys.stderr,
              flush=True)
        sys.exit(INTERRUPTED_EXIT)
    print("preempted, resume with the same command (the run stopped before its last step)", file=sys.stderr,
          flush=True)
    sys.exit(PREEMPTED_EXIT)
