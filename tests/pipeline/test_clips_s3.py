"""Clips of videos in object storage (a real S3 API server on loopback, as in test_s3): fixed
windows are planned from the container's header alone, and the clips of one video that reach
a decode process one after another fetch the video once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import storage
from pipeline.config import ClipsConfig, SamplingConfig
from pipeline.decode import decode_row
from pipeline.plans import plan_source
from scenes.media import write_scenes
from tests.support.s3 import Relay, S3Server


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(log=tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


@pytest.fixture()
def remote_video(s3, tmp_path, monkeypatch):
    relay = Relay(s3.port)
    for k, v in s3.env(relay.endpoint).items():
        monkeypatch.setenv(k, v)
    local = tmp_path / "minute.mp4"
    write_scenes(local, [20.0, 40.0, 80.0], 120, seed=2, size=(360, 480), fps=24)
    uri = s3.upload(local, f"{s3.bucket('clips-remote')}/media/minute.mp4")
    yield uri, local.stat().st_size, relay
    relay.down()
    storage._drop_kept()


def test_fixed_windows_of_a_remote_video_read_its_header_only(remote_video):
    uri, size, relay = remote_video
    relay.bytes_to_client = 0
    windows = plan_source(uri, ClipsConfig(length_s=10), 1 << 30, None, None)
    assert len(windows) == 12
    assert relay.bytes_to_client < size / 4  # the container header and a few packets, not the video


def test_the_clips_of_a_remote_video_fetch_it_once(remote_video):
    uri, size, relay = remote_video
    relay.bytes_to_client = 0
    for i in range(3):
        row = decode_row({"id": f"v#{i}", "uri": uri, "clip_index": i, "start_s": 10.0 * i, "end_s": 10.0 * i + 10},
                         SamplingConfig(num_frames=4, max_side=64))
        assert row["status"] == "ok", row["error"]
    assert size <= relay.bytes_to_client <= size * 1.05 + 3 * 16384  # once, plus each request's headers
    assert len(list(Path(storage.spool_dir()).iterdir())) == 1  # the one kept copy
    relay.bytes_to_client = 0
    unsplit = decode_row({"id": "v", "uri": uri}, SamplingConfig(num_frames=4, max_side=64))
    assert unsplit["status"] == "ok" and relay.bytes_to_client >= size  # a row that is no clip spools its own copy
