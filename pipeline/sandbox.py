"""Run one function call at a time in a child process, so an item that crashes or hangs its
decoder or processor (a segfault in a C library, a read that never returns) fails alone
instead of killing the Ray worker again on every retry until the job dies.

Each Ray worker keeps one child and reuses it, so the cost per item is one round trip over
a socket pair (the arguments and the decoded frames, pickled between our own two
processes; nothing read from user paths is unpickled). A child that dies is replaced and
the item retried up to `max_attempts` times, then it fails as the stage's crash error
(`DecoderCrashed`, `PreprocessCrashed`); a call still running after `timeout_s` kills the
child and fails as the stage's timeout (`DecodeTimeout`, `PreprocessTimeout`) without a
retry (a hang is rarely transient and each retry would cost the full timeout). The attempt
count lives in the parent, which the crash does not touch.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from pipeline import failpoints


class DecoderCrashed(RuntimeError):
    """The decoder process died on this item on every attempt."""


class DecodeTimeout(TimeoutError):
    """The decoder process was still busy with this item after the timeout, and was killed."""


class PlanCrashed(RuntimeError):
    """The clip planner's process died on this source on every attempt."""


class PlanTimeout(TimeoutError):
    """The clip planner's process was still busy with this source after the timeout, and was killed."""


class PreprocessCrashed(RuntimeError):
    """The preprocess process died on this item on every attempt."""


class PreprocessTimeout(TimeoutError):
    """The preprocess process was still busy with this item after the timeout, and was killed."""


@dataclass(frozen=True)
class Stage:
    """How one stage's failures in the child are named: its failpoint and error types, in words."""

    name: str
    crashed: type[Exception]
    timed_out: type[Exception]
    process: str
    busy: str


DECODE = Stage("decode", DecoderCrashed, DecodeTimeout, "decoder", "decoding")
PREPROCESS = Stage("preprocess", PreprocessCrashed, PreprocessTimeout, "preprocess", "preprocessing")
PLAN = Stage("plan", PlanCrashed, PlanTimeout, "clip planner", "planning clips")


class ChildError(RuntimeError):
    """An error from the child that could not be sent back as itself (not picklable)."""


def _signal_name(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return signal.Signals(-returncode).name
    return f"exit code {returncode}"


class Sandbox:
    """One child process serving calls; started on first use and after each crash or timeout."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.sandbox", str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        self.conn = Connection(ours.detach())

    def _stop(self) -> int | None:
        """Kill the child (if still alive) and return how it ended."""
        assert self.proc is not None and self.conn is not None
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self.conn.close()
        self.proc = self.conn = None
        return code

    def call(self, fn: Callable[..., Any], args: tuple, timeout_s: float, stage: Stage = DECODE) -> Any:
        """`fn(*args)` in the child; its exceptions are re-raised here as themselves.

        By convention `args[0]` is the item's URI, which the stage's failpoint matches.
        """
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self._stop()
            self._start()
        assert self.conn is not None
        try:
            self.conn.send((stage.name, fn, args))
            ready = self.conn.poll(timeout_s)
            if ready:
                ok, value = self.conn.recv()
        except (EOFError, OSError):
            raise stage.crashed(f"the {stage.process} process died ({_signal_name(self._stop())})") from None
        if not ready:
            self._stop()
            raise stage.timed_out(f"still {stage.busy} after {timeout_s:g} s; the {stage.process} process was killed")
        if not ok:
            raise value
        return value

    def close(self) -> None:
        if self.proc is not None:
            self._stop()


_SANDBOX = Sandbox()  # one per Ray worker process, reused across its tasks


def run_isolated(fn: Callable[..., Any], args: tuple, timeout_s: float, max_attempts: int, stage: Stage = DECODE) -> Any:
    """`fn(*args)` in this worker's child process, retrying a crashed child up to `max_attempts` tries."""
    for _ in range(max_attempts):
        try:
            return _SANDBOX.call(fn, args, timeout_s, stage)
        except stage.crashed as exc:
            last = exc
    raise stage.crashed(f"{last} on each of {max_attempts} attempts")


def serve(conn: Connection) -> None:
    """The child's loop: one call at a time until the parent closes its end."""
    while True:
        try:
            stage, fn, args = conn.recv()
        except EOFError:
            return
        failpoints.crash_if_named(stage, args[:1])
        try:
            reply = (True, fn(*args))
        except Exception as exc:  # sent back and raised in the parent, which marks the item failed
            reply = (False, exc)
        try:
            conn.send(reply)
        except Exception:  # the exception itself did not pickle
            exc = reply[1]
            conn.send((False, ChildError(f"{type(exc).__name__}: {exc}")))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
