"""The memory probe: the peak during one call, from the process's resident-set high-water mark
on a CPU and from the caching allocator's statistics on CUDA.

- CPU: ``peak`` is Linux's ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the
  call; ``extra`` is that minus the resident size just before it (weights, inputs and the torch
  runtime are in the baseline). Freed heap is handed back (``malloc_trim``) before each reading,
  so memory an earlier, larger call left behind does not hide this one's; memory the allocator
  reuses without growing the resident set is still not seen, so ``extra`` is a lower bound.
- CUDA: ``torch.cuda.max_memory_allocated`` during the call (``peak``, weights included) and
  minus the allocation just before it (``extra``); the allocator's reserve is not counted."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness.timing import sync

ROOT = Path(__file__).resolve().parents[2]


def status(field: str) -> int:
    """A byte count from /proc/self/status (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def trim() -> None:
    """Collect garbage and hand freed heap back to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> str:
    """Restart VmHWM from the current resident size; says what the next reading will mean."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return "VmHWM (reset) during the call"
    except OSError:
        return "VmHWM since process start (could not reset: an upper bound for this call)"


def peak_of(fn: Callable[[], object], device) -> dict:
    """Run fn once; its peak and the extra above the baseline (see the module docstring)."""
    import torch

    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"before": before, "peak": peak, "extra": peak - before, "kind": "cuda max_memory_allocated"}
    trim()
    kind = reset_peak()
    before = status("VmRSS")
    fn()
    peak = status("VmHWM")
    return {"before": before, "peak": peak, "extra": peak - before, "kind": kind}


def peak_rss_mib() -> float:
    """The process's resident-set high-water mark since it started, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(module: str, *args: str) -> dict:
    """``python -m module args...`` from the repository root; the JSON its last output line holds.
    A measurement runs there so that the process's peak is its own, not left by an earlier one."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False,
                          cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])
