"""Losing a Ray node mid-run: its in-flight items are redone on the surviving node, the job
completes, and every id is in the output exactly once."""

from __future__ import annotations

import os
import signal
import subprocess

from tests.support.faults import cli_command, media_manifest, stage_workers, tally, wait_for


def test_a_killed_worker_node_is_survived_and_every_id_written_once(ray_cluster, tmp_path, tiny_model_dir):
    count = 48
    # The head can run the model actor and a decode task at once: the survivor must, or the
    # redone decode work would wait forever behind the model actor for the only CPU.
    _, env = ray_cluster(nodes=2, head_cpus=2)
    manifest, output = media_manifest(tmp_path, count), tmp_path / "out"
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        run = subprocess.Popen(cli_command(manifest, output, tiny_model_dir, "--stall-timeout", "120"), env=env,
                               stdout=out, stderr=out, start_new_session=True)
        try:
            wait_for(lambda: stage_workers(ray_cluster.nodes[1].pid) or run.poll() is not None, 300,
                     "a stage running on the worker node")
            assert run.poll() is None, "the run finished before the node could be killed"
            busy = stage_workers(ray_cluster.nodes[1].pid)
            ray_cluster.kill_node(1)
            code = run.wait(timeout=600)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    assert busy, "the worker node had no stage running when it was killed"
    assert code == 0, log.read_text()[-3000:]
    assert f"items: {count} ({count} ok, 0 failed)" in log.read_text()
    final = tally(output, manifest)
    assert (final.lost, final.duplicated, final.failed, final.rows) == (0, 0, 0, count)
