"""A real multi-node Ray cluster on this machine (`ray start`, loopback, token auth), for the
tests' `ray_cluster` fixture and `benchmarks/chaos.py`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """`start` brings nodes up and waits until all are alive; `stop` ends everything it started.

    `nodes` holds each node's `ray start --block` process, head first (fault injection
    kills a node through it).
    """

    def __init__(self) -> None:
        self.nodes: list[subprocess.Popen] = []
        self.dirs: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(RAY_AUTH_MODE="token", RAY_metrics_report_interval_ms="500")

    def start(self, nodes: int = 2, metrics_ports: tuple[int, ...] = (), head_cpus: int = 1) -> tuple[str, dict[str, str]]:
        """Returns (address, environment for clients); each node but the head gets one CPU."""
        ray_bin = str(Path(sys.executable).with_name("ray"))
        metrics = list(metrics_ports) + [free_port() for _ in range(nodes - len(metrics_ports))]
        # Every node gets free ports: Ray's fixed defaults (dashboard agent 52365, client server
        # 10001) clash with any other Ray instance on this machine.
        ports = [[f"--metrics-export-port={metrics[i]}", f"--dashboard-agent-listen-port={free_port()}",
                  f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
                 for i in range(nodes)]
        ports[0].append(f"--ray-client-server-port={free_port()}")
        port = free_port()
        temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        self.dirs.append(temp_dir)
        common = ["--node-ip-address=127.0.0.1", "--block"]
        head = [ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}",
                f"--num-cpus={head_cpus}", *ports[0]]
        self.nodes.append(subprocess.Popen(head + common, env=self.env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, start_new_session=True))
        for i in range(1, nodes):
            self.nodes.append(subprocess.Popen([ray_bin, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", *ports[i],
                                                *common], env=self.env, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL, start_new_session=True))
        cluster_env = {**self.env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        count = "import ray; ray.init(logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        deadline = time.monotonic() + 240  # generous: node start-up crawls on a loaded 2-core machine
        while True:
            alive = subprocess.run([sys.executable, "-c", count], env=cluster_env, capture_output=True, text=True, timeout=120)
            if alive.stdout.strip().splitlines()[-1:] == [str(nodes)]:
                return f"127.0.0.1:{port}", cluster_env
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not reach {nodes} live nodes: {alive.stdout[-500:]} {alive.stderr[-1500:]}")
            time.sleep(2)

    __call__ = start

    def kill_node(self, index: int) -> int:
        """SIGKILL a whole node at once (its `ray start`, raylet, agents, workers); returns how many processes."""
        root = psutil.Process(self.nodes[index].pid)
        victims = [root, *root.children(recursive=True)]
        for proc in victims:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.nodes[index].wait(timeout=60)
        return len(victims)

    def stop(self) -> None:
        """SIGTERM each node's process group, then SIGKILL what is left after a few seconds
        (a graceful `ray start --block` shutdown takes about 30 s, which tests need not wait for)."""
        for proc in reversed(self.nodes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=60)
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
