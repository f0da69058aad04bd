"""Quarantine for the model stage: an item that kills or hangs the model actor fails alone, and a
model that dies on everything stops the job.

Ray Data restarts a dead model actor and retries its call without limit (the same batch,
on the restarted actor), so an item that segfaults the model would crash it forever, and
a bounded `max_task_retries` would fail the whole job instead of the one item. The
`CrashLedger` is an actor the driver owns, so it outlives every model actor: each actor
tells it which items a model batch holds before running it and when it finished; a
restarted actor reports that its last batch died, with the fatal signal if `faulthandler`
caught one (`CrashLog`). The ledger then plans the retried call: a batch that held the
dead one's items is split in halves, again on each crash, until the culprit runs alone,
and an item that killed the actor `model_attempts` times on its own becomes a failed row
(`ModelCrashed`), while the rest of its batch is annotated. A batch still running after
`model_batch_timeout_s` (`Deadline`) is reported and its actor killed, so hangs split the
same way; an item that hangs alone fails at once as `ModelTimeout` (a retry would cost the
whole deadline again). `max_consecutive_model_crashes` deaths in a row with no batch
succeeding mean the model itself is broken: the next call raises `ModelBroken`, which ends
the run (exit 5) before it quarantines the whole manifest.
"""

from __future__ import annotations

import faulthandler
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# faulthandler's first line for each fatal signal it handles.
_FATAL = {"Segmentation fault": "SIGSEGV", "Aborted": "SIGABRT", "Bus error": "SIGBUS",
          "Floating-point exception": "SIGFPE", "Illegal instruction": "SIGILL"}
NO_REPORT = "no fatal signal reported: SIGKILL, e.g. by the out-of-memory killer, or its node was lost"


class ModelCrashed(RuntimeError):
    """The model actor died on this item, alone, on every attempt."""


class ModelTimeout(TimeoutError):
    """The model was still running this item, alone, at the batch deadline; its actor was killed."""


class ModelBroken(RuntimeError):
    """The model actor died on every recent batch, none succeeding: the model, not an item, is at fault."""


@dataclass
class _Suspect:
    """What the crashes so far say about one item."""

    smallest: int = sys.maxsize  # size of the smallest dead batch that held it
    alone: int = 0  # deaths with it alone in the batch
    hung: bool = False  # timed out alone
    cause: str = ""


class CrashLedger:
    """Crash counts per item and the breaker, kept by the driver (as a Ray actor) across actor restarts."""

    def __init__(self, model: str, attempts: int, breaker: int) -> None:
        self.model, self.attempts, self.breaker = model, attempts, breaker
        self.running: dict[str, list[str]] = {}
        self.suspects: dict[str, _Suspect] = {}
        self.in_a_row = 0
        self.last = ""

    def begin(self, actor: str, ids: list[str]) -> None:
        self.running[actor] = list(ids)

    def end(self, actor: str) -> None:
        self.running.pop(actor, None)
        self.in_a_row = 0

    def restarted(self, actor: str, cause: str) -> None:
        """`actor` (re)started; a batch it was running when it died held the culprit."""
        ids = self.running.pop(actor, None)
        if ids is not None:
            self._died(ids, f"the model actor died ({cause})", hung=False)

    def timed_out(self, actor: str, timeout_s: float) -> None:
        ids = self.running.pop(actor, None)
        if ids is not None:
            self._died(ids, f"the model batch was still running after {timeout_s:g} s; its actor was killed", hung=True)

    def _died(self, ids: list[str], cause: str, hung: bool) -> None:
        self.in_a_row += 1
        self.last = cause
        for i in ids:
            s = self.suspects.setdefault(i, _Suspect())
            s.smallest, s.cause = min(s.smallest, len(ids)), cause
            if len(ids) == 1:
                s.alone += 1
                s.hung |= hung

    def plan(self, groups: list[list[str]]) -> tuple[list[list[str]], dict[str, Exception], str | None]:
        """The model batches to run for one call's `groups`, the items that fail instead, and, once
        the breaker has tripped, why the model is broken (then nothing is to run)."""
        if self.in_a_row >= self.breaker:
            return [], {}, (f"model {self.model}: the model actor died on {self.in_a_row} model batches in a row with "
                            f"none succeeding (max_consecutive_model_crashes={self.breaker}); last: {self.last}")
        batches: list[list[str]] = []
        failed: dict[str, Exception] = {}
        for group in groups:
            self._split(group, batches, failed)
        return batches, failed, None

    def _split(self, ids: list[str], batches: list[list[str]], failed: dict[str, Exception]) -> None:
        if len(ids) == 1:
            s = self.suspects.get(ids[0])
            if s is not None and s.hung:
                failed[ids[0]] = ModelTimeout(f"{s.cause}, with this item alone")
            elif s is not None and s.alone >= self.attempts:
                failed[ids[0]] = ModelCrashed(f"{s.cause} on each of {s.alone} attempts with this item alone")
            else:
                batches.append(ids)
            return
        if any(i in self.suspects and self.suspects[i].smallest <= len(ids) for i in ids):
            half = len(ids) // 2
            self._split(ids[:half], batches, failed)
            self._split(ids[half:], batches, failed)
            return
        batches.append(ids)


def crash_dir(job: str) -> Path:
    """Where a Ray job's model actors keep their crash logs on each node; the driver removes its own."""
    return Path(tempfile.gettempdir()) / f"iwp-crash-logs-{job}"


class CrashLog:
    """faulthandler's report of a fatal signal, in a node-local file that the restarted actor reads.

    A SIGKILL (the out-of-memory killer) leaves no report; nor does a restart on another node.
    """

    def __init__(self, actor: str, job: str) -> None:
        self.path = crash_dir(job) / f"{actor}.log"
        self.file = None

    def previous(self) -> str:
        """The signal the last process of this actor died of, as far as it reported one."""
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            return NO_REPORT
        return next((name for phrase, name in _FATAL.items() if f"Fatal Python error: {phrase}" in text), NO_REPORT)

    def arm(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w")  # noqa: SIM115 -- must stay open for faulthandler until the process ends
        faulthandler.enable(self.file)


class Deadline:
    """A watchdog thread: `expire()` runs when a batch is still going `timeout_s` after `start()`."""

    def __init__(self, timeout_s: float, expire: Callable[[], None]) -> None:
        self.timeout_s, self.expire = timeout_s, expire
        self._cond = threading.Condition()
        self._due: float | None = None
        threading.Thread(target=self._watch, daemon=True, name="model-deadline").start()

    def start(self) -> None:
        with self._cond:
            self._due = time.monotonic() + self.timeout_s
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._due = None
            self._cond.notify()

    def _watch(self) -> None:
        while True:
            with self._cond:
                while self._due is None or self._due > time.monotonic():
                    self._cond.wait(None if self._due is None else self._due - time.monotonic())
                self._due = None
            self.expire()
