"""The model stage's quarantine logic without Ray: the ledger finds the culprit of a crashing
batch by halving it across restarts, fails a hanging item at once, and trips the breaker on a
model that dies on everything; the deadline fires only for a batch that overruns; the crash
log names the signal a process died of."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from pipeline.quarantine import NO_REPORT, CrashLedger, CrashLog, Deadline, ModelCrashed, ModelTimeout

IDS = [f"i{n}" for n in range(8)]


def drive(ledger: CrashLedger, groups: list[list[str]], poison: set[str], calls: int = 50) -> tuple[list, dict, str | None]:
    """Replay one Ray call until it completes: each crash restarts the actor and retries the call."""
    batches = []
    for _ in range(calls):
        batches, failed, broken = ledger.plan(groups)
        if broken:
            return batches, failed, broken
        for batch in batches:
            ledger.begin("actor", batch)
            if poison & set(batch):
                ledger.restarted("actor", "SIGSEGV")
                break
            ledger.end("actor")
        else:
            return batches, failed, None
    raise AssertionError("the call never completed")


def test_the_culprit_of_a_crashing_batch_fails_alone_and_the_rest_runs():
    ledger = CrashLedger("m", attempts=3, breaker=10)
    batches, failed, broken = drive(ledger, [IDS], {"i2"})
    assert broken is None
    assert set(failed) == {"i2"} and isinstance(failed["i2"], ModelCrashed)
    assert str(failed["i2"]) == "the model actor died (SIGSEGV) on each of 3 attempts with this item alone"
    ran = [i for b in batches for i in b]
    assert sorted(ran) == sorted(set(IDS) - {"i2"})  # the call that completed annotated everyone else
    assert max(len(b) for b in batches) == 4  # only the crashed batch's halves were split further
    assert ledger.suspects["i2"].alone == 3 and ledger.in_a_row == 0


def test_two_culprits_in_one_batch_both_fail_without_tripping_the_default_breaker():
    ledger = CrashLedger("m", attempts=3, breaker=10)
    _, failed, broken = drive(ledger, [IDS[:4], IDS[4:]], {"i0", "i7"})
    assert broken is None and sorted(failed) == ["i0", "i7"]


def test_a_model_that_crashes_on_everything_trips_the_breaker():
    ledger = CrashLedger("/models/bad", attempts=3, breaker=4)
    _, _, broken = drive(ledger, [IDS], set(IDS))
    assert broken == ("model /models/bad: the model actor died on 4 model batches in a row with none succeeding "
                      "(max_consecutive_model_crashes=4); last: the model actor died (SIGSEGV)")


def test_a_success_resets_the_breaker():
    ledger = CrashLedger("m", attempts=3, breaker=2)
    ledger.begin("a", ["x"])
    ledger.restarted("a", "SIGSEGV")
    ledger.begin("a", ["y"])
    ledger.end("a")
    ledger.begin("a", ["x"])
    ledger.restarted("a", "SIGSEGV")
    assert ledger.plan([["x"]])[2] is None


def test_a_hanging_item_fails_at_once_and_a_restart_while_idle_blames_nobody():
    ledger = CrashLedger("m", attempts=3, breaker=10)
    ledger.restarted("a", NO_REPORT)  # a fresh actor, or one that died between batches
    assert ledger.in_a_row == 0 and not ledger.suspects
    ledger.begin("a", ["x", "y"])
    ledger.timed_out("a", 30)
    ledger.restarted("a", NO_REPORT)  # the kill after the timeout is not counted twice
    assert ledger.in_a_row == 1
    assert ledger.plan([["x", "y"]])[0] == [["x"], ["y"]]
    ledger.begin("a", ["x"])
    ledger.timed_out("a", 30)
    batches, failed, _ = ledger.plan([["x", "y"]])
    assert batches == [["y"]] and isinstance(failed["x"], ModelTimeout)
    assert str(failed["x"]) == "the model batch was still running after 30 s; its actor was killed, with this item alone"


def test_the_deadline_fires_only_for_an_overrunning_batch():
    fired = threading.Event()
    deadline = Deadline(0.3, fired.set)
    deadline.start()
    deadline.stop()
    assert not fired.wait(0.8)
    deadline.start()
    assert fired.wait(5)


@pytest.mark.parametrize("sig, expected", [(signal.SIGSEGV, "SIGSEGV"), (signal.SIGABRT, "SIGABRT"), (signal.SIGKILL, NO_REPORT)])
def test_the_crash_log_names_the_fatal_signal(tmp_path, monkeypatch, sig, expected):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    code = f"from pipeline.quarantine import CrashLog; import os; CrashLog('a1', 'j').arm(); os.kill(os.getpid(), {int(sig)})"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert run.returncode == -sig
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert CrashLog("a1", "j").previous() == expected
    assert CrashLog("never-ran", "j").previous() == NO_REPORT


def test_a_model_error_splits_the_call_frees_its_memory_and_fails_only_the_item_that_causes_it(tiny_model_dir, monkeypatch):
    """An error the engine cannot pin on one row (out of memory it handles itself): the call's rows
    are split until the culprit runs alone; the failed call's tensors are gone before its halves run."""
    import weakref

    import numpy as np
    import torch

    from jobs.spec import parse_spec
    from pipeline.engine import ModelEngine
    from pipeline.generation import GenerationResult
    from pipeline.preprocess import build_inputs, load_processor

    cfg = parse_spec(f"input: m\noutput: o\nmodel: {{path: {tiny_model_dir}, device: cpu}}\npruning: {{method: none}}\n")
    engine = ModelEngine(cfg)
    processor = load_processor(str(tiny_model_dir))
    frame = np.random.default_rng(0).integers(0, 255, (1, 56, 56, 3), dtype=np.uint8)
    inputs = [build_inputs(processor, frame, "image", "describe " * (40 if i == 2 else 1), 0.0) for i in range(4)]
    rows = [{"id": f"r{i}", "uri": f"r{i}.png", "status": "ok", "latency_s": 0.0, "num_visual_tokens": 4} for i in range(4)]
    held: list[weakref.ref] = []
    sizes, alive = [], []

    def generate(requests):
        alive.append(sum(ref() is not None for ref in held))  # tensors of failed calls still in memory
        sizes.append(len(requests))
        if any(r.prompt_tokens > 40 for r in requests):
            activations = torch.ones(1 << 16)
            held.append(weakref.ref(activations))
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return [GenerationResult(tokens=[7], text="a caption") for _ in requests]

    monkeypatch.setattr(engine.engine, "generate", generate)
    engine._run(rows, inputs)
    assert sizes == [4, 2, 2, 1, 1] and alive == [0] * 5
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "ok"]
    assert (rows[2]["error_type"], rows[2]["stage"]) == ("RuntimeError", "model")
    assert rows[2]["error"].startswith("CUDA error: an illegal memory access")
    assert rows[0]["caption"] == "a caption"
