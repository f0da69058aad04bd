"""Stop cleanly on SIGTERM, the signal a scheduler sends before it evicts the process.

The handler raises `Preempted` in the main thread, which unwinds the run the normal way:
stop consuming, shut the stages down, mark the run log "preempted", release the output
lock. Every batch already written stays written (each file appears by an atomic rename),
so a rerun of the same command finishes the rest. In-flight batches are abandoned and
redone by that rerun. If unwinding takes longer than the grace period, a timer ends the
process with the same exit code, so the scheduler never has to escalate to SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

EXIT_PREEMPTED = 128 + signal.SIGTERM  # 143: what a shell or Kubernetes reports for SIGTERM


class Preempted(BaseException):
    """SIGTERM arrived; a BaseException so no `except Exception` in a stage swallows it."""


def install(grace_period_s: float) -> Callable[[], None]:
    """Handle SIGTERM from now on; returns a function restoring the previous handler.

    A no-op outside the main thread (Python delivers signals only there). Call it again
    after `ray.init`, which installs its own SIGTERM handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    fired = threading.Event()

    def handler(signum: int, frame) -> None:
        if fired.is_set():
            return
        fired.set()
        threading.Thread(target=_hard_exit_after, args=(grace_period_s,), name="iwp-grace-timer", daemon=True).start()
        raise Preempted(f"received SIGTERM; stopping within the {grace_period_s:g} s grace period")

    previous = signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _hard_exit_after(seconds: float) -> None:
    time.sleep(seconds)
    print(f"iwp-annotate: preempted: clean shutdown took over the {seconds:g} s grace period; exiting now",
          file=sys.stderr, flush=True)
    os._exit(EXIT_PREEMPTED)
