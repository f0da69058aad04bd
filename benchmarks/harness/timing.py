"""Timed runs and the per-stage timer. On CUDA every timed region is bracketed by a
synchronisation, so a reading is the device's time and not the host's queueing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence

from benchmarks.harness.models import stage_modules


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device) -> float:
    """Seconds one call of fn takes on `device`."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def runs(fn: Callable[[], object], device, repeats: int, warmups: int = 1) -> dict:
    """`repeats` timed calls after `warmups` untimed ones: the median, the fastest (other work on
    the machine only ever adds time) and every run."""
    for _ in range(warmups):
        fn()
    seconds = [timed(fn, device) for _ in range(repeats)]
    return {"seconds": statistics.median(seconds), "seconds_best": min(seconds), "seconds_all": seconds}


def orders(configurations: Sequence, repeats: int) -> Iterator[Sequence]:
    """Interleave the configurations, alternating the order, so that load from other work on the
    machine falls on all of them alike instead of on whichever ran during a busy spell."""
    for rep in range(repeats):
        yield configurations if rep % 2 == 0 else tuple(reversed(configurations))


class StageTimer:
    """Times the vision encoder, the decoder layers before K, layer K (the selection included) and
    the layers after K while `on`, synchronising on CUDA around each. Those syncs stop the host
    from queueing the next layer's kernels while the GPU runs the last one, which costs most
    where layers are short (after pruning), so timed prefills and generations run with it off and
    the split comes from runs of its own."""

    STAGES = ("vision", "before_k", "at_k", "after_k")

    def __init__(self, model, layer: int, device):
        self.device, self.on = device, False
        self.totals = dict.fromkeys(self.STAGES, 0.0)
        self._starts: dict[int, float] = {}
        self.hooks: list = []
        for module, stage in stage_modules(model, layer):
            self._watch(module, self.STAGES[stage])

    def _watch(self, module, stage: str) -> None:
        key = id(module)

        def pre(*_):
            if self.on:
                sync(self.device)
                self._starts[key] = time.perf_counter()

        def post(*_):
            start = self._starts.pop(key, None)
            if start is not None:
                sync(self.device)
                self.totals[stage] += time.perf_counter() - start

        self.hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def take(self) -> dict[str, float]:
        out, self.totals = self.totals, dict.fromkeys(self.STAGES, 0.0)
        return out

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
