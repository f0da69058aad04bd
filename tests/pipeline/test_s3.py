"""Object storage as tested: a real S3 API server on loopback (moto), reached through the
project's own client code (pyarrow's S3 filesystem via pipeline/storage.py, credentials and
endpoint from the AWS_* environment). Fast checks run in this process; whole jobs run the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.config import SamplingConfig
from pipeline.decode import decode_row
from tests.support.faults import cli_command, cli_env, media_manifest, wait_for
from tests.support.s3 import FORBIDDEN, Relay, S3Server
from scenes.media import write_video


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(log=tmp_path_factory.mktemp("s3") / "moto.log", checked_access=True)
    yield server
    server.stop()


@pytest.fixture()
def bucket(s3, request) -> str:
    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    return s3.bucket(name)


@pytest.fixture()
def relay(s3):
    r = Relay(s3.port)
    yield r
    r.down()


def use(monkeypatch, env: dict[str, str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def listing(s3: S3Server, uri: str) -> list[pafs.FileInfo]:
    infos = s3.filesystem().get_file_info(pafs.FileSelector(uri.removeprefix("s3://"), recursive=True,
                                                            allow_not_found=True))
    return [i for i in infos if i.is_file]


def results(s3: S3Server, output: str) -> pa.Table:
    """Result rows read straight from the objects under OUTPUT/results, not through the sink."""
    fs = s3.filesystem()
    paths = [i.path for i in listing(s3, output + "/results") if i.base_name.startswith("part-")]
    tables = [pq.read_table(p, filesystem=fs, columns=["id", "status", "error_type", "error", "caption"]) for p in paths]
    return pa.concat_tables(tables) if tables else pa.table({"id": pa.array([], pa.string())})


def spool_files() -> list[Path]:
    return [p for p in Path(storage.spool_dir()).iterdir()]


def test_remote_video_is_fetched_once_even_when_resized(s3, bucket, relay, monkeypatch, tmp_path):
    use(monkeypatch, s3.env(relay.endpoint))
    local = tmp_path / "clip.mp4"
    write_video(local, seed=4, frames=24, fps=8, size=(240, 320))
    uri = s3.upload(local, f"{bucket}/media/clip.mp4")
    size = local.stat().st_size
    relay.bytes_to_client = 0
    row = decode_row({"id": "v", "uri": uri}, SamplingConfig(num_frames=4, max_side=64))
    assert row["status"] == "ok", row["error"]
    assert row["num_frames"] == 4
    assert size <= relay.bytes_to_client <= size * 1.05 + 16384  # the object once, plus HTTP headers
    assert spool_files() == []


def test_oversized_objects_are_refused_from_their_size_before_any_read(s3, bucket, relay, monkeypatch, tmp_path):
    use(monkeypatch, s3.env(relay.endpoint))
    local = tmp_path / "big.mp4"
    local.write_bytes(os.urandom(600_000))
    cfg = SamplingConfig(max_media_bytes=500_000)
    for name in ("big.mp4", "big.png"):
        uri = s3.upload(local, f"{bucket}/media/{name}")
        relay.bytes_to_client = 0
        row = decode_row({"id": name, "uri": uri}, cfg)
        assert (row["status"], row["error_type"]) == ("failed", "MediaTooLargeError")
        assert uri in row["error"] and "max_media_bytes=500000" in row["error"]
        assert relay.bytes_to_client < 8192  # a HEAD's answer, not the object
    # Locally: sparse files larger than this machine could load are refused at once, above the
    # default cap from their size; below it a fake image fails from its header, never loaded whole.
    for name, size, error_type in (("huge.png", 5 << 30, "MediaTooLargeError"), ("huge.mp4", 5 << 30, "MediaTooLargeError"),
                                   ("fake.png", 3 << 30, "UnidentifiedImageError")):
        path = tmp_path / name
        with open(path, "wb") as f:
            f.truncate(size)
        row = decode_row({"id": name, "uri": str(path)}, SamplingConfig())
        assert (row["status"], row["error_type"]) == ("failed", error_type), row["error"]
        assert str(path) in row["error"]


def test_missing_and_forbidden_objects_are_failed_rows_naming_uri_and_reason(s3, bucket, monkeypatch, tmp_path):
    use(monkeypatch, s3.env())
    local = tmp_path / "clip.mp4"
    write_video(local, seed=5, frames=8, fps=8, size=(64, 64))
    forbidden = s3.upload(local, f"{bucket}/{FORBIDDEN}/clip.mp4")
    image = s3.upload(local, f"{bucket}/{FORBIDDEN}/clip.png")
    missing = f"{bucket}/media/nowhere.mp4"
    got = {uri: decode_row({"id": uri, "uri": uri}, SamplingConfig()) for uri in (forbidden, image, missing)}
    for uri in (forbidden, image):
        assert got[uri]["status"] == "failed" and got[uri]["error_type"] == "StorageReadError"
        assert got[uri]["error"].startswith(f"cannot read {uri}: ") and "ACCESS_DENIED" in got[uri]["error"]
    assert (got[missing]["status"], got[missing]["error_type"]) == ("failed", "FileNotFoundError")
    assert got[missing]["error"] == f"no such file: {missing}"


def test_spool_folders_of_dead_processes_are_removed(monkeypatch, tmp_path):
    monkeypatch.setattr(storage.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(storage, "_spool_dir", None)
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / storage.SPOOL_ROOT_NAME / f"{dead.pid}-killedworker"
    left.mkdir(parents=True)
    (left / "tmpvideo.mp4").write_bytes(b"x" * 1000)
    alive = tmp_path / storage.SPOOL_ROOT_NAME / f"{os.getppid()}-parent"
    alive.mkdir()
    mine = Path(storage.spool_dir())
    assert mine.parent == tmp_path / storage.SPOOL_ROOT_NAME and mine.name.startswith(f"{os.getpid()}-")
    assert not left.exists() and alive.exists()


def test_endpoint_down_or_bucket_missing_at_start_is_exit_2(s3, bucket, tmp_path, tiny_model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens here once closed
    cmd = cli_command(f"{bucket}/manifest.parquet", f"{bucket}/out", tiny_model_dir)
    down = subprocess.run(cmd, env=cli_env(**s3.env(dead)), capture_output=True, text=True, timeout=300)
    assert down.returncode == 2, down.stderr[-3000:]
    assert f"cannot reach the store of the manifest {bucket}/manifest.parquet" in down.stderr
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"id": ["a"], "uri": [str(tmp_path / "a.png")]}), manifest)
    cmd = cli_command(str(manifest), "s3://no-such-bucket-here/out", tiny_model_dir)
    missing = subprocess.run(cmd, env=cli_env(**s3.env()), capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2, missing.stderr[-3000:]
    assert "the bucket 'no-such-bucket-here' of the output s3://no-such-bucket-here/out does not exist" in missing.stderr


def upload_manifest(s3: S3Server, rows: list[dict], uri: str) -> str:
    table = pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("uri", pa.string()),
                                                          ("start_s", pa.float64()), ("end_s", pa.float64())]))
    pq.write_table(table, uri.removeprefix("s3://"), filesystem=s3.filesystem())
    return uri


def secrets_in(s3: S3Server, prefix: str, secret: str) -> list[str]:
    fs = s3.filesystem()
    found = []
    for info in listing(s3, prefix):
        with fs.open_input_stream(info.path) as f:
            if secret.encode() in f.read():
                found.append(info.path)
    return found


def test_whole_job_on_s3_rerun_fingerprint_and_lock(s3, bucket, media, tmp_path, tiny_model_dir):
    """Manifest, media (the bad-media zoo too) and output on s3://; the job's key from the environment."""
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(300_000))
    files = {"ok-video": media["video"], "ok-unicode": media["video_long"], "ok-image": media["image"],
             "zero-byte": media["empty"], "corrupt": media["corrupt"], "truncated": media["truncated"],
             "text": media["text"], "too-big": big}
    rows = [{"id": i, "uri": s3.upload(p, f"{bucket}/media/{p.name}")} for i, p in files.items()]
    rows[1].update(start_s=0.5, end_s=2.0)
    rows.append({"id": "forbidden", "uri": s3.upload(media["video"], f"{bucket}/{FORBIDDEN}/clip.mp4")})
    rows.append({"id": "missing", "uri": f"{bucket}/media/nowhere.mp4"})
    manifest, output = upload_manifest(s3, rows, f"{bucket}/in/manifest.parquet"), f"{bucket}/out"
    cmd = cli_command(manifest, output, tiny_model_dir, "--num-frames", "4", "--max-side", "56",
                      "--max-media-bytes", "200000")
    env = cli_env(**s3.env())
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    table = results(s3, output)
    got = {r["id"]: r for r in table.to_pylist()}
    assert sorted(table["id"].to_pylist()) == sorted(r["id"] for r in rows)
    assert {i for i, r in got.items() if r["status"] == "ok"} == {"ok-video", "ok-unicode", "ok-image"}
    assert all(got[i]["caption"] for i in ("ok-video", "ok-unicode", "ok-image"))
    expected = {"zero-byte": "MediaError", "corrupt": "MediaError", "truncated": "MediaError", "text": "MediaError",
                "too-big": "MediaTooLargeError", "forbidden": "StorageReadError", "missing": "FileNotFoundError"}
    assert {i: got[i]["error_type"] for i in expected} == expected
    uris = {r["id"]: r["uri"] for r in rows}
    assert got["forbidden"]["error"].startswith(f"cannot read {uris['forbidden']}: ")
    assert "ACCESS_DENIED" in got["forbidden"]["error"]
    assert got["missing"]["error"] == f"no such file: {uris['missing']}"
    names = {i.base_name for i in listing(s3, output)}
    assert any(n.endswith(".log") for n in names) and any(n.endswith(".json") for n in names)  # run log and record
    assert "_lock.json" not in names
    secret = s3.env()["AWS_SECRET_ACCESS_KEY"]
    assert secret not in first.stdout + first.stderr and secrets_in(s3, output, secret) == []

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(rows)} already done, skipped" in again.stdout
    assert len(results(s3, output)) == len(rows)

    changed = subprocess.run(cmd + ["--num-frames", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert changed.returncode == 2 and "different configuration" in changed.stderr, changed.stderr[-3000:]

    holder = {"run_id": "other-run", "pid": 1, "host": "another-host", "since": 0}
    with s3.filesystem().open_output_stream(f"{output.removeprefix('s3://')}/_lock.json") as f:
        f.write(json.dumps(holder).encode())
    locked = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert locked.returncode == 2, locked.stderr[-3000:]
    assert "is being written by run other-run (pid 1 on another-host)" in locked.stderr
    assert len(results(s3, output)) == len(rows)


def s3_media_manifest(s3: S3Server, bucket: str, root: Path, count: int) -> str:
    """`tests.support.faults.media_manifest`'s items, uploaded, in a manifest on S3."""
    local = pq.read_table(media_manifest(root, count)).to_pylist()
    rows = [{"id": r["id"], "uri": s3.upload(r["uri"], f"{bucket}/media/{Path(r['uri']).name}")} for r in local]
    return upload_manifest(s3, rows, f"{bucket}/in/manifest.parquet")


def test_killed_driver_resumes_on_s3_without_loss_or_duplicates(s3, bucket, tmp_path, tiny_model_dir):
    count = 48
    manifest, output = s3_media_manifest(s3, bucket, tmp_path, count), f"{bucket}/out"
    cmd, env = cli_command(manifest, output, tiny_model_dir, "--rows-per-call", "4"), cli_env(**s3.env())
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: len(results(s3, output)) or first.poll() is not None, 300, "the first result object")
        assert first.poll() is None, "the first run finished before it could be killed"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    done = len(results(s3, output))
    assert 0 < done < count
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{done} already done, skipped" in second.stdout
    table = results(s3, output)
    assert len(table) == len(set(table["id"].to_pylist())) == count
    assert set(table["status"].to_pylist()) == {"ok"}


def test_endpoint_down_mid_run_is_exit_4_and_the_rerun_completes(s3, bucket, relay, tmp_path, tiny_model_dir):
    count = 48
    manifest, output = s3_media_manifest(s3, bucket, tmp_path, count), f"{bucket}/out"
    cmd = cli_command(manifest, output, tiny_model_dir, "--rows-per-call", "4")
    log = tmp_path / "first.log"
    with open(log, "w") as err:
        first = subprocess.Popen(cmd, env=cli_env(**s3.env(relay.endpoint)), stdout=err, stderr=err,
                                 start_new_session=True)
        try:
            wait_for(lambda: len(results(s3, output)) or first.poll() is not None, 300, "the first result object")
            assert first.poll() is None, "the first run finished before the endpoint went down"
            relay.down()
            code = first.wait(timeout=400)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 4, text[-3000:]
    assert f"iwp-annotate: output storage error: cannot write {output}/" in text, text[-3000:]
    partial = results(s3, output)  # every object there is whole: each PUT appears complete or not at all
    assert 0 < len(partial) < count and len(set(partial["id"].to_pylist())) == len(partial)
    assert set(partial["status"].to_pylist()) == {"ok"}

    relay.up()
    second = subprocess.run(cmd, env=cli_env(**s3.env(relay.endpoint)), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{len(partial)} already done, skipped" in second.stdout
    table = results(s3, output)
    assert len(table) == len(set(table["id"].to_pylist())) == count
    assert set(table["status"].to_pylist()) == {"ok"}


def test_lock_on_s3_refuses_a_live_holder_takes_over_a_dead_one_and_is_released(s3, bucket, monkeypatch):
    from pipeline.lock import LOCK_NAME, OutputLockedError, output_lock

    use(monkeypatch, s3.env())
    output = f"{bucket}/out"
    key = f"{output.removeprefix('s3://')}/{LOCK_NAME}"
    with output_lock(output, "first"):
        with pytest.raises(OutputLockedError, match=r"being written by run first \(pid \d+ on "):
            with output_lock(output, "second"):
                pass
    assert [i.base_name for i in listing(s3, output)] == []
    dead = subprocess.Popen(["true"])
    dead.wait()
    with s3.filesystem().open_output_stream(key) as f:
        f.write(json.dumps({"run_id": "killed", "pid": dead.pid, "host": socket.gethostname()}).encode())
    with output_lock(output, "third"):
        with s3.filesystem().open_input_stream(key) as f:
            assert json.loads(f.read())["run_id"] == "third"


def test_job_spec_file_on_s3(s3, bucket, monkeypatch, tmp_path, tiny_model_dir):
    from jobs.spec import load_spec

    use(monkeypatch, s3.env())
    spec = tmp_path / "job.yaml"
    spec.write_text(f"input: {bucket}/in/m.parquet\noutput: {bucket}/out\nmodel:\n  path: {tiny_model_dir}\n"
                    "sampling:\n  max_media_bytes: 1000000\n")
    cfg = load_spec(s3.upload(spec, f"{bucket}/specs/job.yaml"))
    assert (cfg.input, cfg.output.path, cfg.sampling.max_media_bytes) == (f"{bucket}/in/m.parquet", f"{bucket}/out", 1_000_000)
