"""Decoding in a child process: same results as in-process, a crashing item fails alone after a
bounded number of attempts, a hanging item times out, and the next item still decodes."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from pipeline import sandbox
from pipeline.config import DecodeIsolationConfig, SamplingConfig
from pipeline.decode import decode_row
from pipeline.failpoints import CRASH_ENV
from pipeline.tensors import unpack

ISOLATED = DecodeIsolationConfig(timeout_s=20, max_attempts=3)


def row(uri) -> dict:
    return {"id": "x", "uri": str(uri), "media_type": None, "prompt": None, "start_s": None, "end_s": None}


@pytest.fixture()
def fresh_child(monkeypatch):
    """A new child per test, so environment changes (the failpoint) reach it."""
    def restart(**env: str) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        sandbox._SANDBOX.close()

    restart()
    yield restart
    sandbox._SANDBOX.close()


def test_isolated_decode_gives_the_same_rows_and_errors(media, fresh_child):
    cfg = SamplingConfig(num_frames=4)
    for name in ("video", "image", "empty", "corrupt", "text"):
        inside, isolated = decode_row(row(media[name]), cfg), decode_row(row(media[name]), cfg, ISOLATED)
        assert (isolated["status"], isolated["error_type"], isolated["error"]) == (
            inside["status"], inside["error_type"], inside["error"]), name
        if inside["status"] == "ok":
            assert np.array_equal(unpack(isolated["frames"])["frames"], unpack(inside["frames"])["frames"])
            assert isolated["fps"] == inside["fps"]
    missing = decode_row(row(media["video"].with_name("nope.mp4")), cfg, ISOLATED)
    assert missing["error_type"] == "FileNotFoundError"


def test_a_crashing_item_fails_alone_after_bounded_attempts(media, fresh_child, monkeypatch):
    fresh_child(**{CRASH_ENV: "clip.mp4"})
    pids = []
    original = sandbox.Sandbox._start

    def counting_start(self):
        original(self)
        pids.append(self.proc.pid)

    monkeypatch.setattr(sandbox.Sandbox, "_start", counting_start)
    crashed = decode_row(row(media["video"]), SamplingConfig(num_frames=4), ISOLATED)
    after = decode_row(row(media["image"]), SamplingConfig(), ISOLATED)
    assert crashed["status"] == "failed" and crashed["error_type"] == "DecoderCrashed" and crashed["stage"] == "decode"
    assert crashed["error"] == "the decoder process died (SIGSEGV) on each of 3 attempts"
    assert len(pids) == 4 and len(set(pids)) == 4  # three tries, each in a fresh child, then one for the next item
    assert after["status"] == "ok"


def test_a_hanging_item_times_out_and_the_next_item_decodes(tmp_path, media, fresh_child):
    fifo = tmp_path / "hang.png"
    os.mkfifo(fifo)  # opening it for reading blocks forever, like a hung network mount
    started = time.monotonic()
    hung = decode_row(row(fifo), SamplingConfig(), DecodeIsolationConfig(timeout_s=2, max_attempts=3))
    assert time.monotonic() - started < 10
    assert hung["error_type"] == "DecodeTimeout" and "still decoding after 2 s" in hung["error"]
    assert decode_row(row(media["image"]), SamplingConfig(), ISOLATED)["status"] == "ok"
