"""SIGTERM (what Kubernetes sends before evicting a pod): a clean stop within the grace period,
then a rerun that finishes the rest with no loss and no duplicate."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from pipeline.runlog import read_records
from tests.support.faults import cli_command, cli_env, media_manifest, result_files, tally, wait_for

GRACE_S = 20


def test_sigterm_stops_cleanly_within_the_grace_period_and_the_rerun_finishes(tmp_path, tiny_model_dir):
    count = 48
    manifest, output = media_manifest(tmp_path, count), tmp_path / "out"
    cmd = cli_command(manifest, output, tiny_model_dir, "--grace-period", str(GRACE_S))
    log = tmp_path / "first.log"
    with open(log, "w") as err:
        first = subprocess.Popen(cmd, env=cli_env(), stdout=err, stderr=err, start_new_session=True)
        try:
            wait_for(lambda: result_files(output) or first.poll() is not None, 300, "the first result file")
            assert first.poll() is None, "the first run finished before it could be preempted"
            first.send_signal(signal.SIGTERM)  # to the driver only, as the kubelet does to PID 1
            sent = time.monotonic()
            code = first.wait(timeout=GRACE_S + 30)
            took = time.monotonic() - sent
        finally:
            if first.poll() is None:
                first.kill()
    text = log.read_text()
    assert code == 143, text[-3000:]
    assert took <= GRACE_S + 3, f"exit took {took:.1f} s"
    assert "iwp-annotate: preempted: received SIGTERM" in text
    assert "took over the" not in text, "the clean shutdown overran and the grace timer had to end the process"
    [record] = read_records(str(output))
    assert record["status"] == "preempted" and "SIGTERM" in record["error"]
    assert not (output / "_lock.json").exists()
    done = tally(output, manifest)
    assert 0 < done.rows < count and done.duplicated == 0, (done, took)

    second = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{done.rows} already done, skipped" in second.stdout
    final = tally(output, manifest)
    assert (final.lost, final.duplicated, final.failed, final.rows) == (0, 0, 0, count)
    assert not list(output.rglob(".tmp-*"))


def test_the_grace_timer_ends_a_shutdown_that_hangs(tmp_path):
    """If unwinding hangs (here: code that swallows the stop), the process still exits in time."""
    script = textwrap.dedent("""
        import os, signal, time
        from pipeline import preemption
        preemption.install(1.0)
        try:
            print("ready", flush=True)
            time.sleep(60)
        except preemption.Preempted:
            time.sleep(60)  # a shutdown that never finishes
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = proc.wait(timeout=30)
    assert code == 143 and time.monotonic() - sent < 10
    assert "took over the 1 s grace period" in proc.stderr.read()
