"""Keep the console for our own progress and summary; everything else goes to the run's log file.

Ray's driver warnings, the C++ core worker's lines, the workers' forwarded output (decoders
complaining about broken files, transformers' weight-loading bars) and Python warnings are
all written to file descriptors 1 and 2 from many threads and processes, some of them below
Python, so they are caught where they all meet: the driver's stdout and stderr descriptors
are pointed at a log file for the Ray part of a run. Our own progress is written to a copy
of the real console taken first.

The file is written in the local temporary directory and copied into the output at the end
(`OUTPUT/_runs/<run id>.log`), not written there directly: an open file would keep a full
or remounted output busy, and object stores cannot append.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Literal, TextIO

import pyarrow.fs as pafs

from pipeline.runlog import RUNS_DIR
from pipeline.storage import resolve

Console = Literal["inherit", "quiet", "verbose"]
"""inherit: leave the process's output alone (library callers); quiet: the log file only;
verbose: the log file and the console."""


def log_path(output: str, run_id: str) -> str:
    """Where the run's log ends up."""
    return f"{output.rstrip('/')}/{RUNS_DIR}/{run_id}.log"


@contextlib.contextmanager
def captured(output: str, run_id: str, mode: Console) -> Iterator[TextIO | None]:
    """Route fds 1 and 2 to the run's log for the block; yield a stream to the real console.

    Yields None in "inherit" mode (nothing is redirected).
    """
    if mode == "inherit":
        yield None
        return
    fd, local = tempfile.mkstemp(prefix=f"iwp-annotate-{run_id}-", suffix=".log")
    saved = {n: os.dup(n) for n in (1, 2)}
    console = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    tee = _Tee(fd, saved[2]) if mode == "verbose" else None
    target = tee.write_fd if tee else fd
    print(f"log: {log_path(output, run_id)} (Ray, decoder and model-loading messages; {local} until the run ends"
          f"{'' if tee else '; --verbose shows them here too'})", file=console)
    _flush_std()
    for n in (1, 2):
        os.dup2(target, n)
    try:
        yield console
    finally:
        _flush_std()
        for n, copy in saved.items():
            os.dup2(copy, n)
        if tee:
            tee.close()
        for copy in saved.values():
            os.close(copy)
        os.close(fd)
        console.close()
        _publish(local, output, run_id)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


class _Tee:
    """A pipe whose bytes a thread copies to the log file and to the console."""

    def __init__(self, log_fd: int, console_fd: int):
        read_fd, self.write_fd = os.pipe()
        self._thread = threading.Thread(target=self._pump, args=(read_fd, log_fd, console_fd),
                                        name="iwp-log-tee", daemon=True)
        self._thread.start()

    @staticmethod
    def _pump(read_fd: int, log_fd: int, console_fd: int) -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as src, contextlib.suppress(OSError):
            while chunk := src.read(1 << 16):
                os.write(log_fd, chunk)
                os.write(console_fd, chunk)

    def close(self) -> None:
        os.close(self.write_fd)
        self._thread.join(timeout=5)


def _publish(local: str, output: str, run_id: str) -> None:
    """Copy the local log into the output; never hide the run's own outcome if that fails."""
    fs, root = resolve(output.rstrip("/") + "/" + RUNS_DIR)
    try:
        fs.create_dir(root, recursive=True)
        pafs.copy_files(local, f"{root}/{run_id}.log", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    except OSError as exc:
        logging.getLogger("iwp_annotate").warning("run log kept at %s: cannot copy it into the output: %s", local, exc)
        return
    os.unlink(local)
