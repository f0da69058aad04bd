"""One run at a time per output directory.

A second run that starts while another holds the output refuses at once, naming the
holder, rather than waiting: scheduled jobs retry on their next tick, and a person sees
why. On a local or network filesystem the lock is an exclusive create; a lock whose
process is gone (same host, dead pid) is taken over.

On object stores the lock is best effort: pyarrow's S3 and GCS filesystems offer no
conditional create (S3 `If-None-Match: *`), so the lock is check, write, then read back.
The read-back refuses the later of two runs whose writes did not overlap, but two runs
that both check before either writes can both proceed; the scheduler's own exclusion
(CronJob `concurrencyPolicy: Forbid`) is the real guard there. A lock on an object store
cannot tell a live holder from a dead one on another host: a run killed there leaves
`_lock.json` for a person (or the same host's next run) to remove.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow.fs as pafs

from pipeline.storage import OutputStorageError, resolve

LOCK_NAME = "_lock.json"
log = logging.getLogger("iwp_annotate")


class OutputLockedError(RuntimeError):
    """Another run is writing to this output."""


def _holder_alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(fs: pafs.FileSystem, path: str) -> dict:
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read() or b"{}")
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@contextmanager
def output_lock(output: str, run_id: str) -> Iterator[None]:
    fs, root = resolve(output)
    path = f"{root}/{LOCK_NAME}"
    try:
        _acquire(fs, root, path, output, run_id)
    except OSError as exc:
        raise OutputStorageError(f"cannot take the output lock {path}: {exc}") from exc
    try:
        yield
    finally:
        _release(fs, path, run_id)


def _acquire(fs: pafs.FileSystem, root: str, path: str, output: str, run_id: str) -> None:
    fs.create_dir(root, recursive=True)
    me = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    blob = json.dumps(me).encode()
    for _ in range(2):
        if isinstance(fs, pafs.LocalFileSystem):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(fs, path)
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                break
        else:
            holder = _read(fs, path)
            if not holder:
                with fs.open_output_stream(path) as f:
                    f.write(blob)
                holder = _read(fs, path)  # of runs that wrote after one check, the last writer wins
                if holder.get("run_id") == run_id:
                    break
                raise OutputLockedError(_busy(output, holder, path))
        if holder and _holder_alive(holder):
            raise OutputLockedError(_busy(output, holder, path))
        fs.delete_file(path)
    else:
        raise OutputLockedError(f"could not take the lock {path}: another run took it at the same moment")


def _busy(output: str, holder: dict, path: str) -> str:
    return (f"output {output!r} is being written by run {holder.get('run_id')} (pid {holder.get('pid')} on "
            f"{holder.get('host')}); wait for it to finish, or delete {path} if that run is gone")


def _release(fs: pafs.FileSystem, path: str, run_id: str) -> None:
    """Never masks the run's own error: a lock left behind by a dead process is taken over."""
    try:
        if _read(fs, path).get("run_id") == run_id:
            fs.delete_file(path)
    except OSError as exc:
        log.warning("could not remove the output lock %s (%s); the next run takes it over", path, exc)
