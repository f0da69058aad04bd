"""Output storage that fills up or turns read-only mid-run: a clear error naming the path (exit 4),
no half-written file taken as done, and a rerun after the fix completes every id exactly once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support.faults import (cli_command, cli_env, fill, media_manifest, mount_tmpfs, remount, result_files, tally,
                              unmount, wait_for)


@pytest.fixture()
def small_tmpfs(tmp_path) -> Path:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    refused = mount_tmpfs(mnt)
    if refused:
        pytest.skip(f"mounting a tmpfs is not permitted here: {refused}")
    yield mnt
    unmount(mnt)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_storage_fault_mid_run_is_named_and_the_rerun_completes(small_tmpfs, tmp_path, tiny_model_dir, fault):
    count = 48
    manifest, output = media_manifest(tmp_path, count), small_tmpfs / "out"
    # Two rows per model call: results land over the whole run, so the fault comes while most are still to write.
    cmd = cli_command(manifest, output, tiny_model_dir, "--rows-per-call", "2")
    log = tmp_path / "first.log"
    with open(log, "w") as err:
        first = subprocess.Popen(cmd, env=cli_env(), stdout=err, stderr=err, start_new_session=True)
        try:
            wait_for(lambda: result_files(output) or first.poll() is not None, 300, "the first result file")
            assert first.poll() is None, "the first run finished before the storage fault"
            filler = fill(small_tmpfs) if fault == "full" else remount(small_tmpfs, "ro")
            code = first.wait(timeout=300)
        finally:
            if first.poll() is None:
                first.kill()
    text = log.read_text()
    reason = "No space left on device" if fault == "full" else "Read-only file system"
    assert code == 4, text[-3000:]
    assert f"iwp-annotate: output storage error: cannot write {output}/" in text, text[-3000:]
    assert reason in text, text[-3000:]
    for path in result_files(output):  # whatever is there is whole: written elsewhere, then renamed
        pq.read_table(path)
    partial = tally(output, manifest)
    assert 0 < partial.rows < count and partial.duplicated == 0

    if fault == "full":
        filler.unlink()
    else:
        remount(small_tmpfs, "rw")
    second = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{partial.rows} already done, skipped" in second.stdout
    final = tally(output, manifest)
    assert (final.lost, final.duplicated, final.failed, final.rows) == (0, 0, 0, count)
    assert not list(output.rglob(".tmp-*"))
