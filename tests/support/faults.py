"""Jobs and checks shared by the fault tests and `benchmarks/chaos.py`, so both inject the
same faults into the same kind of job and count loss and duplication the same way."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from scenes.media import write_image, write_video

# Ray titles its worker processes "ray::<what runs there>"; these name our stages' workers.
MODEL_WORKER, CPU_STAGE_WORKER = "ModelStage", "run_stages"


def media_manifest(root: Path, count: int, video_every: int = 4) -> str:
    """`count` real items (every `video_every`-th an H.264 mp4, the rest PNGs) in a Parquet manifest."""
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        if video_every and i % video_every == 0:
            path = media / f"clip{i}.mp4"
            write_video(path, seed=2000 + i, frames=8, fps=8, size=(96, 128))
        else:
            path = media / f"img{i}.png"
            write_image(path, seed=1000 + i, size=(112, 112), count=2)
        rows.append({"id": f"item-{i:04d}", "uri": str(path)})
    path = root / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def result_files(output: Path) -> list[Path]:
    return list((Path(output) / "results").rglob("part-*.parquet"))


@dataclass(frozen=True)
class Tally:
    """What the output holds against the manifest: the numbers the chaos report prints."""

    items: int
    rows: int
    lost: int
    duplicated: int
    failed: int


def tally(output: Path, manifest: str) -> Tally:
    """Count rows straight from the Parquet files, not through the sink, so its own bugs show."""
    expected = set(pq.read_table(manifest, columns=["id"])["id"].to_pylist())
    ids, failed = [], 0
    for path in result_files(output):
        table = pq.read_table(path, columns=["id", "status"])
        ids += table["id"].to_pylist()
        failed += table["status"].to_pylist().count("failed")
    return Tally(items=len(expected), rows=len(ids), lost=len(expected - set(ids)),
                 duplicated=len(ids) - len(set(ids)), failed=failed)


def kill_after_first_result(cmd: list[str], env: dict[str, str], output: Path) -> None:
    """Start a run, SIGKILL its whole process group once its first result file exists, and wait
    for it: a driver killed mid-run, for the resume tests."""
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: result_files(output) or run.poll() is not None, 300, "the first result file")
        assert run.poll() is None, "the first run finished before it could be killed"
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)


def cli_command(manifest: str, output: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "run", "--input", manifest, "--output", str(output), "--model", str(model),
            "--max-new-tokens", "24", *extra]


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without RAY_ADDRESS (so the CLI starts its own local Ray) plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(extra)
    return env


def stage_workers(root_pid: int, markers: tuple[str, ...] = (MODEL_WORKER, CPU_STAGE_WORKER)) -> list[tuple[str, Any]]:
    """(marker, psutil process) for each Ray worker below `root_pid` (a driver that started its own
    Ray, or a node's `ray start`) running one of our stages now; never another job's workers."""
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:  # the run just ended
        return []
    found = []
    for proc in children:
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if any(m in cmdline for m in markers):
            found.append((next(m for m in markers if m in cmdline), proc))
    return found


def kill_random_worker(rng: random.Random, root_pid: int) -> str | None:
    """SIGKILL one of our stage workers below `root_pid`, chosen at random; returns its kind, or None."""
    candidates = stage_workers(root_pid)
    if not candidates:
        return None
    marker, proc = rng.choice(candidates)
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return marker


def mount_tmpfs(path: Path, size: str = "8m") -> str | None:
    """Mount a small tmpfs at `path`; returns why not (e.g. not permitted), or None on success."""
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True,
                       timeout=60)
    return None if r.returncode == 0 else (r.stderr.strip() or f"mount exited {r.returncode}")


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=60)


def fill(mount: Path) -> Path:
    """Write until the filesystem is full; returns the filler file to delete to free the space."""
    filler = mount / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def remount(mount: Path, mode: str) -> None:
    """`mode` "ro" or "rw"; read-only fails while a file is open for writing, so retry until it takes."""
    deadline = time.monotonic() + 30
    while True:
        r = subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"could not remount {mount} {mode}: {r.stderr.strip()}")
        time.sleep(0.05)
