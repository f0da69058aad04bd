"""On CUDA, PC-MMR's captured-and-replayed steps choose exactly what the eager loop chooses.

A shape runs eagerly the first time, is captured the second, and replays from the third.

Runs only where a GPU is present (the device machine): `python -m pytest --noconftest
tests/iwp_ops/test_pcmmr_cuda_graphs.py`.
"""

from __future__ import annotations

import pytest
import torch

import iwp_ops
from iwp_ops import pcmmr

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _inputs(seed: int, b: int = 3, h: int = 4, n: int = 700, d: int = 64, dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(b, h, n, d, generator=gen) * 3
    values = torch.randn(b, h, n, d, generator=gen)
    mask = torch.rand(b, n, generator=gen) > 0.1
    return keys.cuda().to(dtype), values.cuda().to(dtype), mask.cuda()


def _both(*args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    eager = iwp_ops.select_tokens(*args, cuda_graphs=False, **kwargs)
    return eager, iwp_ops.select_tokens(*args, cuda_graphs=True, **kwargs)


@pytest.mark.parametrize("chunk", [None, 8, (1, 4)])
def test_replayed_selection_equals_the_eager_one_for_new_inputs_of_the_same_shape(chunk):
    budget = torch.tensor([77, 10, 300], device="cuda")
    pcmmr._GRAPHS.cache.clear()
    for seed in range(4):  # eager, capture, then two replays with new inputs
        keys, values, mask = _inputs(seed)
        eager, graphed = _both(keys, values, budget, mask=mask, chunk=chunk)
        assert torch.equal(graphed, eager)
    assert len(pcmmr._GRAPHS.cache) == 1


def test_extra_eager_steps_after_a_replay_when_pools_run_short():
    keys = torch.ones(2, 4, 300, 64, device="cuda")  # every token duplicates every other
    values = torch.ones(2, 4, 300, 64, device="cuda")
    values[1, :, ::2] = -1.0
    for _ in range(3):  # eager, capture, replay: each continues with eager steps
        eager, graphed = _both(keys, values, 120)
        assert torch.equal(graphed, eager)
        assert bool((graphed >= 0).all())


def test_inference_mode_and_no_grad_calls_keep_separate_graphs():
    pcmmr._GRAPHS.cache.clear()
    keys, values, mask = _inputs(7, b=1, n=257)
    for mode in (torch.inference_mode, torch.no_grad):
        with mode():
            for _ in range(2):
                eager, graphed = _both(keys, values, 30, mask=mask)
                assert torch.equal(graphed, eager)
    assert len(pcmmr._GRAPHS.cache) == 2


def test_least_recently_used_graphs_are_dropped(monkeypatch):
    pcmmr._GRAPHS.cache.clear()
    monkeypatch.setattr(pcmmr._GRAPHS, "size", 2)
    for n in (100, 120, 140, 160):
        keys, values, _ = _inputs(n, b=1, n=n)
        for _ in range(1 if n == 160 else 2):
            iwp_ops.select_tokens(keys, values, 20)
    assert [key[0][0][0][2] for key in pcmmr._GRAPHS.cache] == [120, 140]  # 160 came once: not captured


def test_captures_while_another_thread_calls_cuda(monkeypatch):
    """A data loader's pin-memory thread copies and synchronizes while the model thread captures
    (training hit this); neither the capture nor the other thread may fail."""
    import threading

    errors: list[BaseException] = []
    rounds = [0]
    stop = threading.Event()

    def busy() -> None:
        try:
            while not stop.is_set():
                torch.empty(1 << 16, pin_memory=True).cuda(non_blocking=True)
                torch.cuda.current_stream().synchronize()
                rounds[0] += 1
        except BaseException as error:  # noqa: BLE001 - reported to the test thread
            errors.append(error)

    pcmmr._GRAPHS.cache.clear()
    thread = threading.Thread(target=busy)
    thread.start()
    try:
        while rounds[0] == 0 and not errors:  # the other thread is calling CUDA before the first capture
            pass
        for n in range(300, 420, 20):  # each shape: eager, capture, replay
            keys, values, mask = _inputs(n, b=2, n=n)
            for _ in range(3):
                eager, graphed = _both(keys, values, 40, mask=mask)
                assert torch.equal(graphed, eager)
        during = rounds[0]
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert len(pcmmr._GRAPHS.cache) == pcmmr._GRAPHS.size and during > 6
