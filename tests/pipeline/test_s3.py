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


def test_credentials_in_a_uri_are_refused_without_echoing_them():
    from jobs.spec import SpecError, parse_spec

    for uri in ("s3://AKIAEXAMPLE:verysecret@bucket/m.parquet", "s3://bucket/m.parquet?secret_key=verysecret&access_key=a"):
        with pytest.raises(ValueError, match="carries credentials") as resolved:
            storage.resolve(uri)
        with pytest.raises(SpecError) as refused:  # what the CLI prints for a spec or a flag
            parse_spec(json.dumps({"input": uri, "output": "out", "model": {"path": "m"}}))
        assert "input: carries credentials" in str(refused.value)
        assert "verysecret" not in str(resolved.value) + str(refused.value)
    assert storage.credential_problem("s3://bucket/out?region=eu-west-1&endpoint_override=minio:9000&scheme=http") is None


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
