"""Session fixtures: a tiny saved model, real generated media, one local Ray instance."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from reference.media import write_image, write_video


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from reference.tiny_model import build_tiny_model

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def unused_port():
    """A function returning a loopback TCP port that is free right now."""
    return free_port


@pytest.fixture()
def ray_cluster():
    """Start a real multi-node Ray cluster on this machine with `ray start` (loopback, token auth).

    Returns a function `start(nodes=2, metrics_ports=(), head_cpus=1) -> (address, env)`, where
    `metrics_ports` gives each node its Ray metrics export port (every node serves its own
    workers' metrics); everything it started is stopped at teardown. Each other node gets one CPU.
    `start.nodes` holds each node's `ray start --block` process, head first (fault tests
    kill a node through it).
    """
    procs, dirs = [], []
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_metrics_report_interval_ms="500")
    ray_bin = str(Path(sys.executable).with_name("ray"))

    def start(nodes: int = 2, metrics_ports: tuple[int, ...] = (), head_cpus: int = 1) -> tuple[str, dict[str, str]]:
        metrics = list(metrics_ports) + [free_port() for _ in range(nodes - len(metrics_ports))]
        # Every node gets free ports: Ray's fixed defaults (dashboard agent 52365, client server
        # 10001) clash with any other Ray instance on this machine.
        ports = [[f"--metrics-export-port={metrics[i]}", f"--dashboard-agent-listen-port={free_port()}",
                  f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
                 for i in range(nodes)]
        ports[0].append(f"--ray-client-server-port={free_port()}")
        port = free_port()
        temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        dirs.append(temp_dir)
        common = ["--node-ip-address=127.0.0.1", "--block"]
        head = [ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}",
                f"--num-cpus={head_cpus}", *ports[0]]
        procs.append(subprocess.Popen(head + common, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        for i in range(1, nodes):
            procs.append(subprocess.Popen([ray_bin, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", *ports[i], *common], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        cluster_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        count = "import ray; ray.init(logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        deadline = time.monotonic() + 240  # generous: node start-up crawls on a loaded 2-core machine
        while True:
            alive = subprocess.run([sys.executable, "-c", count], env=cluster_env, capture_output=True, text=True, timeout=120)
            if alive.stdout.strip().splitlines()[-1:] == [str(nodes)]:
                return f"127.0.0.1:{port}", cluster_env
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not reach {nodes} live nodes: {alive.stdout[-500:]} {alive.stderr[-1500:]}")
            time.sleep(2)

    start.nodes = procs
    yield start
    for proc in reversed(procs):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
