"""Losing a Ray node mid-run: its in-flight items are redone on the surviving node, the job
completes, and every id is in the output exactly once."""

from __future__ import annotations

import os
import signal
import subprocess

import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path where the test extra's psutil is absent)
import psutil

from reference.faults import CPU_STAGE_WORKER, MODEL_WORKER, cli_command, media_manifest, tally, wait_for


def stage_workers(node: psutil.Process) -> list[psutil.Process]:
    """Ray workers of this node that are running one of our stages right now."""
    found = []
    for proc in node.children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if MODEL_WORKER in cmdline or CPU_STAGE_WORKER in cmdline:
            found.append(proc)
    return found


def test_a_killed_worker_node_is_survived_and_every_id_written_once(ray_cluster, tmp_path, tiny_model_dir):
    count = 48
    # The head can run the model actor and a decode task at once: the survivor must, or the
    # redone decode work would wait forever behind the model actor for the only CPU.
    _, env = ray_cluster(nodes=2, head_cpus=2)
    worker_node = psutil.Process(ray_cluster.nodes[1].pid)
    manifest, output = media_manifest(tmp_path, count), tmp_path / "out"
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        run = subprocess.Popen(cli_command(manifest, output, tiny_model_dir, "--stall-timeout", "120"), env=env, stdout=out, stderr=out,
                               start_new_session=True)
        try:
            wait_for(lambda: stage_workers(worker_node) or run.poll() is not None, 300, "a stage running on the worker node")
            assert run.poll() is None, "the run finished before the node could be killed"
            victims = [worker_node, *worker_node.children(recursive=True)]
            busy = stage_workers(worker_node)
            for proc in victims:  # the whole node at once: raylet, its agents and its workers
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            code = run.wait(timeout=600)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    assert busy, "the worker node had no stage running when it was killed"
    assert code == 0, log.read_text()[-3000:]
    assert f"items: {count} ({count} ok, 0 failed)" in log.read_text()
    final = tally(output, manifest)
    assert (final.lost, final.duplicated, final.failed, final.rows) == (0, 0, 0, count)
