"""Session fixtures: a tiny saved model, real generated media, one local Ray instance."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.cluster import LocalCluster, free_port
from scenes.media import write_image, write_video


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.support.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """Real media files, good and bad, written once per session."""
    root = tmp_path_factory.mktemp("media")
    files = {
        "video": root / "clip.mp4",
        "video_long": root / "long clip ünï.mp4",
        "image": root / "image.png",
        "empty": root / "empty.mp4",
        "corrupt": root / "corrupt.mp4",
        "truncated": root / "truncated.mp4",
        "text": root / "notes.txt",
    }
    write_video(files["video"], seed=1, frames=16, fps=8)
    write_video(files["video_long"], seed=2, frames=40, fps=8, size=(160, 240))
    write_image(files["image"], seed=3)
    files["empty"].write_bytes(b"")
    files["corrupt"].write_bytes(b"\x00\x01 definitely not an mp4 " * 50)
    data = files["video"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["text"].write_text("hello")
    return files


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def unused_port():
    """A function returning a loopback TCP port that is free right now."""
    return free_port


@pytest.fixture()
def ray_cluster():
    """Start a real multi-node Ray cluster on this machine with `ray start` (loopback, token auth).

    Yields a `tests.support.cluster.LocalCluster`: call it as `ray_cluster(nodes=2, metrics_ports=(),
    head_cpus=1) -> (address, env)`, where `metrics_ports` gives each node its Ray metrics
    export port (every node serves its own workers' metrics); `kill_node(i)` kills a node.
    Everything it started is stopped at teardown. Each node but the head gets one CPU.
    """
    cluster = LocalCluster()
    yield cluster
    cluster.stop()
