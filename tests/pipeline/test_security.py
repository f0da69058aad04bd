"""Security basics that can be tested here: no remote code unless asked, no unsafe deserialising,
no dashboard in local mode, and credentials from the environment never written anywhere (for a
job on S3 too: tests/pipeline/test_s3.py), nor accepted inside a URI."""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from pipeline.config import ModelConfig, PipelineConfig
from tests.support.faults import cli_command, cli_env, media_manifest, tally

REPO = Path(__file__).resolve().parents[2]
SECRET = "iwp-test-secret-7f3a9c1e5b"


def test_remote_code_is_off_unless_the_job_asks(monkeypatch, tiny_model_dir):
    import transformers

    from pipeline import preprocess
    from pipeline.generation import loading

    calls = []

    class Loaded:
        def to(self, device):
            return self

        def eval(self):
            return self

    def record(*args, **kwargs):
        calls.append(kwargs)
        return Loaded()

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", record)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", record)
    for asked in (False, True):
        model = ModelConfig(path=str(tiny_model_dir), trust_remote_code=True) if asked else ModelConfig(path=str(tiny_model_dir))
        cfg = PipelineConfig(input="m", output="o", model=model)
        loading.load_model(cfg.model)
        preprocess.load_processor.__wrapped__(cfg.model.path, cfg.model.trust_remote_code)
    assert [(c["trust_remote_code"], c["local_files_only"]) for c in calls] == [
        (False, True), (False, True), (True, True), (True, True)]


UNSAFE = re.compile(r"pickle\.loads?\(|torch\.load\(|allow_pickle\s*=\s*True|yaml\.load\(|yaml\.unsafe_load|"
                    r"dill\.|joblib\.load|marshal\.loads?\(|shelve\.open")


def test_no_code_deserialises_untrusted_bytes():
    """Nothing unpickles or YAML-loads what users supply (specs use yaml.safe_load, tensors safetensors).

    The decode child's socket pair (pipeline/sandbox.py) carries pickles only between two
    processes of ours, through `Connection.send/recv`, which this pattern does not match.
    """
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
            for package in ("pipeline", "jobs", "iwp_ops", "reference")
            for p in sorted((REPO / package).rglob("*.py"))
            for n, line in enumerate(p.read_text().splitlines(), 1) if UNSAFE.search(line)]
    assert hits == []
    assert UNSAFE.search("state = torch.load(path)")  # the check can fail


def test_local_ray_starts_no_dashboard_and_requires_a_token(tmp_path):
    """No dashboard means no HTTP job API to submit code through; Ray's gRPC ports need the token."""
    script = textwrap.dedent("""
        import ray
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
        from pipeline.run import ensure_ray
        ensure_ray()
        node = ray._private.worker.global_worker.node
        print("dashboard:", node.address_info.get("webui_url") or "none")
        print("token auth:", is_token_auth_enabled())
    """)
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as ray_tmp:  # short: Ray's socket paths
        r = subprocess.run([sys.executable, "-c", script], env=cli_env(RAY_TMPDIR=ray_tmp), capture_output=True,
                           text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dashboard: none" in r.stdout and "token auth: True" in r.stdout, r.stdout


class PushRecorder(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_PUT(self):
        self.bodies.append(self.path.encode() + self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT

    def log_message(self, *args):
        pass


def test_object_store_credentials_never_reach_results_logs_run_log_or_metrics(tmp_path, tiny_model_dir):
    gateway = http.server.HTTPServer(("127.0.0.1", 0), PushRecorder)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    manifest, output = media_manifest(tmp_path, 6), tmp_path / "out"
    secrets = {"AWS_ACCESS_KEY_ID": SECRET + "-id", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": SECRET + "-token",
               "GOOGLE_APPLICATION_CREDENTIALS": f"/nonexistent/{SECRET}.json"}
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as ray_tmp:
        try:
            r = subprocess.run(
                cli_command(manifest, output, tiny_model_dir, "--pushgateway", f"http://127.0.0.1:{gateway.server_port}"),
                env=cli_env(RAY_TMPDIR=ray_tmp, **secrets), capture_output=True, text=True, timeout=600)
        finally:
            gateway.shutdown()
        assert r.returncode == 0, r.stderr[-3000:]
        written = [p for root in (output, Path(ray_tmp)) for p in root.rglob("*") if p.is_file() and not p.is_socket()]
        leaks = [str(p) for p in written if SECRET.encode() in p.read_bytes()]
    assert tally(output, manifest).rows == 6 and PushRecorder.bodies, "the run or its metrics push did not happen"
    assert len(written) > 20  # results, run log, dead letter, and Ray's session logs were all searched
    assert leaks == []
    assert SECRET not in r.stdout + r.stderr
    assert not any(SECRET.encode() in body for body in PushRecorder.bodies)


def test_credentials_in_a_uri_are_refused_without_echoing_them():
    from jobs.spec import SpecError, parse_spec
    from pipeline.storage import credential_problem, resolve

    for uri in ("s3://AKIAEXAMPLE:verysecret@bucket/m.parquet", "s3://bucket/m.parquet?secret_key=verysecret&access_key=a"):
        with pytest.raises(ValueError, match="carries credentials") as resolved:
            resolve(uri)
        with pytest.raises(SpecError) as refused:  # what the CLI prints for a spec or a flag
            parse_spec(json.dumps({"input": uri, "output": "out", "model": {"path": "m"}}))
        assert "input: carries credentials" in str(refused.value)
        assert "verysecret" not in str(resolved.value) + str(refused.value)
    assert credential_problem("s3://bucket/out?region=eu-west-1&endpoint_override=minio:9000&scheme=http") is None
