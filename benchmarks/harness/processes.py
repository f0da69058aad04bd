"""Whole-process timing: a command's wall and CPU seconds from the operating system's own accounting,
and two commands paired (A B, then B A, ...) so that the machine's drift hits both alike."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


_TICK = os.sysconf("SC_CLK_TCK")


def _session(sid: int) -> dict[int, float]:
    """The live processes of session `sid` (zombies aside), each with its CPU seconds so far."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) != sid:
                    continue
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                found[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    return found


def run_process(argv: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
                timeout_s: float = 900.0, linger_timeout_s: float = 60.0) -> dict:
    """Run `argv` to its end with its output in `log`: wall seconds, CPU seconds (its own and those of
    the descendants it reaped, from wait4), peak RSS of the largest of them, and the exit code.

    It runs in a session of its own; after it exits, this waits (up to `linger_timeout_s`) until no
    process of that session is left (Ray's workers and their children end after the driver), so one
    run's tail never runs into the next run's time. `linger_s` is how long that took. `session_cpu_s`
    is the CPU seconds of every process of the session (Ray's too), read from /proc every 0.05 s:
    what the job cost the machine, which other load changes far less than it changes wall time
    (a process that lives under 0.05 s may be missed)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
        deadline = started + timeout_s
        cpu: dict[int, float] = {}
        while True:
            cpu.update(_session(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(0.05)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    while (alive := _session(proc.pid)) and time.perf_counter() - started - wall < linger_timeout_s:
        cpu.update(alive)
        time.sleep(0.1)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "session_cpu_s": sum(cpu.values()),
            "max_rss_mb": usage.ru_maxrss / 1024, "returncode": proc.returncode,
            "linger_s": time.perf_counter() - started - wall, "log": str(log)}


def paired(commands: dict[str, Callable[[str], tuple[Sequence[str], Path]]], pairs: int, warmups: int,
           check: Callable[[str, dict], None], env: dict[str, str] | None = None, cwd: Path | None = None) -> dict:
    """Run the two `commands` in turn, `warmups` uncounted pairs first, then `pairs` counted ones;
    the first of the two alternates from pair to pair. `commands[name](tag)` gives the argv and the
    log file of one run (a fresh output per tag); `check(name, run)` raises if a run went wrong.

    Returns each command's runs and median wall / CPU seconds, and the per-pair ratios of the first
    command's wall time to the second's with their median (the figure to quote)."""
    first, second = list(commands)
    runs: dict[str, list[dict]] = {first: [], second: []}
    for index in range(warmups + pairs):
        order = (first, second) if index % 2 == 0 else (second, first)
        for name in order:
            tag = f"warmup{index}" if index < warmups else f"pair{index - warmups}"
            argv, log = commands[name](tag)
            run = run_process(argv, log, env=env, cwd=cwd)
            check(name, run)
            run["tag"] = tag
            print(f"  {tag:<8} {name:<6} {run['wall_s']:6.1f} s wall, {run['session_cpu_s']:6.1f} s CPU (all its "
                  f"processes), which were gone {run['linger_s']:.1f} s after it exited", flush=True)
            if index >= warmups:
                runs[name].append(run)
    ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(runs[first], runs[second])]
    return {
        "order": "A B, then B A, alternating; warm-up pairs not counted",
        "warmup_pairs": warmups,
        "runs": runs,
        "median_wall_s": {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()},
        "median_session_cpu_s": {name: statistics.median(r["session_cpu_s"] for r in rs) for name, rs in runs.items()},
        # None where the second command used no measurable CPU (a process that only sleeps reads 0 ticks).
        "cpu_ratios": [a["session_cpu_s"] / b["session_cpu_s"] if b["session_cpu_s"] > 0 else None
                       for a, b in zip(runs[first], runs[second])],
        "median_linger_s": {name: statistics.median(r["linger_s"] for r in rs) for name, rs in runs.items()},
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }
