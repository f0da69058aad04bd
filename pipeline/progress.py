"""Know what a running job is doing: per-stage progress, a progress display, a hang watchdog.

Stages report batch completions to one small `ProgressBoard` (fire-and-forget, once per batch;
a Ray actor that `pipeline.run` shares with the crash ledger); the driver shows items done with
rate and ETA, and fails the job with a diagnostic naming the stuck stage when no item finishes
for `stall_timeout_s`, instead of hanging.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import ray

log = logging.getLogger("iwp_annotate")
STAGES = ("decode", "preprocess", "model", "write")


class StallError(RuntimeError):
    """No item finished for too long; the message says which stage is stuck."""


class ProgressBoard:
    """Rows finished per stage, and the batches still running with when they started."""

    def __init__(self) -> None:
        self.done: Counter[str] = Counter()
        self.in_progress: dict[str, tuple[str, float]] = {}

    def started(self, key: str, stage: str) -> None:
        self.in_progress[key] = (stage, time.time())

    def finished(self, stage: str, rows: int, key: str | None = None) -> None:
        self.done[stage] += rows
        if key is not None:
            self.in_progress.pop(key, None)

    def snapshot(self) -> tuple[dict[str, int], list[tuple[str, float]]]:
        now = time.time()
        return dict(self.done), [(stage, now - t) for stage, t in self.in_progress.values()]


def report(board: Any, stage: str, rows: int, key: str | None = None) -> None:
    if board is not None:
        board.finished.remote(stage, rows, key)


def rows_expected(board: Any, todo: int) -> int:
    """Rows a clip run will deliver as far as known now: each source still to plan counts one
    row until the plan stage has turned it into its clips (or its one failed row)."""
    try:
        done, _ = ray.get(board.snapshot.remote(), timeout=10)
    except Exception:  # progress must never stop the run
        return todo
    return todo - done.get("plan", 0) + done.get("plan_rows", 0)


def diagnose(board: Any, total: int, stalled_for: float) -> str:
    """Name the first stage that has not finished every row, and anything running for long."""
    try:
        done, running = ray.get(board.snapshot.remote(), timeout=30)
    except Exception as exc:  # the diagnosis must never hide the stall itself
        return f"no item finished for {stalled_for:.0f} s (stage progress unavailable: {exc})"
    parts = [f"{stage} {done.get(stage, 0)}/{total}" for stage in STAGES]
    stuck = next((s for s in STAGES if done.get(s, 0) < total), "write")
    longest = max(running, key=lambda r: r[1], default=None)
    busy = f"; a {longest[0]} batch has been running for {longest[1]:.0f} s" if longest else ""
    return (f"no item finished for {stalled_for:.0f} s; rows done per stage: {', '.join(parts)}{busy}; "
            f"the {stuck} stage is the first one behind")


def watched(batches: Iterable[Any], stall_timeout_s: float, on_stall) -> Iterator[Any]:
    """Yield from `batches`, raising StallError(on_stall(seconds)) if none arrives in time."""
    q: queue.Queue = queue.Queue(maxsize=8)
    end = object()

    def pump() -> None:
        try:
            for batch in batches:
                q.put(batch)
            q.put(end)
        except BaseException as exc:  # re-raised in the driver thread
            q.put(exc)

    threading.Thread(target=pump, name="iwp-pipeline-consumer", daemon=True).start()
    while True:
        try:
            item = q.get(timeout=stall_timeout_s)
        except queue.Empty:
            raise StallError(on_stall(stall_timeout_s)) from None
        if item is end:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


class ProgressDisplay:
    """A progress bar on a terminal; plain periodic log lines elsewhere (CI, Kubernetes logs)."""

    def __init__(self, total: int, every_s: float = 30.0, stream=None, unit: str = "item"):
        self.total, self.done, self.every_s, self.unit = total, 0, every_s, unit
        self.stream = stream or sys.stderr
        self.started = self.last = time.monotonic()
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, file=self.stream, dynamic_ncols=True)

    def set_total(self, total: int) -> None:
        """The total grows while clip plans are made."""
        if total != self.total:
            self.total = total
            if self.bar is not None:
                self.bar.total = total
                self.bar.refresh()

    def update(self, rows: int) -> None:
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.0f} s" if eta != float("inf") else "unknown"
        return (f"progress: {self.done}/{self.total} {self.unit}s ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{rate:.2f} {self.unit}s/s, ETA {eta_text}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
