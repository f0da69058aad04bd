"""Submitting job specs through Ray's Job Submission API: local checks, then a real head node."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import jobs.submit as submit_module
from jobs.spec import SpecError
from jobs.submit import ENTRYPOINT, SubmitError, add_submit_commands, prepare_submission, submit
from scenes.media import write_image

VENV_BIN = Path(sys.executable).parent


def write_spec(path: Path, **changes) -> Path:
    data = {"name": "submit-test", "task": {"kind": "caption"}, "input": "/data/m.parquet", "output": "/data/out",
            "model": {"path": "/models/m"}, **changes}
    path.write_text("# a comment that must travel too\n" + yaml.safe_dump(data, sort_keys=False))
    return path


# ---- without a cluster -----------------------------------------------------------------------


def test_prepare_submission_sends_the_spec_and_only_named_env(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml")
    environ = {"AWS_ACCESS_KEY_ID": "AKIA-test", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "HOME": "/root"}
    sub = prepare_submission(str(spec), env_names=["AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"], environ=environ)
    assert sub.entrypoint == ENTRYPOINT == "iwp-annotate run job.yaml"
    assert sub.env_vars == {"AWS_ACCESS_KEY_ID": "AKIA-test"}
    assert "AKIA-test" not in repr(sub)
    assert sub.spec_bytes == spec.read_bytes()
    assert sub.spec.name == "submit-test" and sub.submission_id.startswith("submit-test-")
    assert sub.metadata == {"iwp-annotate/name": "submit-test", "iwp-annotate/task": "caption"}
    assert prepare_submission(str(spec), entrypoint_prefix=" nice -n 5 ", environ={}).entrypoint == \
        "nice -n 5 iwp-annotate run job.yaml"
    assert prepare_submission(str(spec), environ={}).submission_id != sub.submission_id


def test_env_names_must_be_set_here_and_be_names(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml")
    with pytest.raises(SubmitError, match="NOT_SET_HERE: not set"):
        prepare_submission(str(spec), env_names=["NOT_SET_HERE"], environ={})
    with pytest.raises(SubmitError, match="variable names"):
        prepare_submission(str(spec), env_names=["AWS_KEY=abc"], environ={"AWS_KEY": "x"})


@pytest.fixture()
def no_cluster(monkeypatch):
    def refuse(address):
        raise AssertionError("the cluster must not be contacted")

    monkeypatch.setattr(submit_module, "_client", refuse)


def test_invalid_or_relative_specs_are_refused_before_contacting_the_cluster(tmp_path, no_cluster):
    bad = write_spec(tmp_path / "bad.yaml", pruning={"keep_ratio": 2})
    with pytest.raises(SpecError, match="pruning.keep_ratio: Input should be less than or equal to 1"):
        submit(str(bad), "http://127.0.0.1:1")
    relative = write_spec(tmp_path / "rel.yaml", input="manifests/m.parquet", model={"path": "models/m"})
    with pytest.raises(SpecError) as info:
        submit(str(relative), "http://127.0.0.1:1")
    assert [p.split(":")[0] for p in info.value.problems] == ["input", "model.path"]
    with pytest.raises(SpecError, match="does not exist"):
        submit(str(tmp_path / "missing.yaml"), "http://127.0.0.1:1")
    with pytest.raises(SubmitError):
        submit(str(write_spec(tmp_path / "ok.yaml")), "http://127.0.0.1:1", env_names=["IWP_SURELY_UNSET_VAR"])


def test_submit_uploads_a_directory_holding_only_the_spec(tmp_path, monkeypatch):
    spec = write_spec(tmp_path / "spec.yaml", input="s3://bucket/m.parquet", grace_period_s=40)
    (tmp_path / "secrets.env").write_text("AWS_SECRET_ACCESS_KEY=x\n")  # beside the spec: must not travel
    seen = {}

    class FakeClient:
        def __init__(self, address):
            seen["address"] = address

        def submit_job(self, **kwargs):
            workdir = Path(kwargs["runtime_env"]["working_dir"])
            seen["files"] = {p.name: p.read_bytes() for p in workdir.iterdir()}
            seen.update(kwargs, workdir=workdir)
            return kwargs["submission_id"]

    monkeypatch.setattr(submit_module, "_client", FakeClient)
    monkeypatch.setenv("IWP_TEST_PASSED", "yes")
    monkeypatch.setenv("IWP_TEST_NOT_PASSED", "no")
    job_id = submit(str(spec), "http://head:8265", env_names=["IWP_TEST_PASSED"])
    assert job_id == seen["submission_id"] and seen["address"] == "http://head:8265"
    assert seen["files"] == {"job.yaml": spec.read_bytes()}
    # Ray's supervisor may SIGKILL the driver only after the spec's grace period (+5 s) on `stop`.
    assert seen["runtime_env"] == {"working_dir": str(seen["workdir"]),
                                   "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "45", "IWP_TEST_PASSED": "yes"}}
    assert seen["entrypoint"] == "iwp-annotate run job.yaml"
    assert not seen["workdir"].exists()  # the temporary directory is removed after the upload


def test_command_line_parsing():
    p = argparse.ArgumentParser()
    add_submit_commands(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(["submit", "job.yaml", "--address", "http://h:8265", "--env", "A", "--env", "B"])
    assert (a.command, a.spec, a.address, a.env, a.wait) == ("submit", "job.yaml", "http://h:8265", ["A", "B"], False)
    a = p.parse_args(["status", "job-1", "--address", "http://h:8265", "--wait", "--timeout", "5"])
    assert (a.command, a.job_id, a.wait, a.timeout) == ("status", "job-1", True, 5.0)
    a = p.parse_args(["logs", "job-1", "--follow"])
    assert (a.command, a.job_id, a.follow, a.address) == ("logs", "job-1", True, None)


def test_cli_dispatch_prints_and_maps_errors_to_exit_codes(monkeypatch, capsys):
    class FakeStatus:
        value = "RUNNING"

    class FakeClient:
        def __init__(self, address):
            pass

        def get_job_status(self, job_id):
            if job_id == "gone":
                raise RuntimeError("Request failed with status code 404: Job gone does not exist.")
            return FakeStatus()

        def get_job_logs(self, job_id):
            return "line 1\nline 2\n"

        async def tail_job_logs(self, job_id):
            for chunk in ("a\n", "b\n"):
                yield chunk

    monkeypatch.setattr(submit_module, "_client", FakeClient)
    assert submit_module.main(["status", "j1", "--address", "http://h:8265"]) == 0
    assert capsys.readouterr().out == "RUNNING\n"
    assert submit_module.main(["logs", "j1"]) == 0
    assert capsys.readouterr().out == "line 1\nline 2\n"
    assert submit_module.main(["logs", "j1", "--follow"]) == 0
    assert capsys.readouterr().out == "a\nb\n"
    assert submit_module.main(["status", "gone"]) == 2
    assert "Job gone does not exist" in capsys.readouterr().err
    assert submit_module.main(["status", "j1", "--wait", "--timeout", "0"]) == 2
    assert "still RUNNING" in capsys.readouterr().err
    assert submit_module.main(["submit", "/nonexistent/spec.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---- a real Ray head with the job API ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/api/version", timeout=2)
        return True
    except urllib.error.HTTPError:  # 401/403 from token auth still means it is up
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` with the dashboard's job API on loopback, token auth (Ray's default)."""
    port, dash, agent, agent_grpc, client, metrics, runtime_env = (free_port() for _ in range(7))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", f"--temp-dir={temp_dir}",
         # Ray's fixed default ports (agent 52365, client 10001) clash with other clusters on this machine.
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 90
        while not dashboard_answers(url):
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray dashboard did not answer"
            time.sleep(0.5)
        yield url, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=3)  # a graceful `ray start --block` exit can take 30 s; do not wait for it
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.submit", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


# status(), logs() and logs(follow=True) in a process with RAY_AUTH_MODE=token (this one has none).
INSPECT = """
import json, sys
from jobs.submit import logs, status
address, ok_id, bad_id = sys.argv[1:4]
try:
    status("no-such-job", address)
    unknown = "no error"
except RuntimeError as exc:
    unknown = str(exc)
print(json.dumps({"status": status(ok_id, address), "logs": logs(ok_id, address),
                  "followed": "".join(logs(ok_id, address, follow=True)), "bad_logs": logs(bad_id, address),
                  "unknown": unknown}))
"""


def test_submitted_specs_run_on_the_cluster(ray_head, tmp_path, tiny_model_dir):
    url, head_env = ray_head
    # A job that must fail (its manifest does not exist), submitted first so it runs alongside.
    bad_spec = write_spec(tmp_path / "bad.yaml", name="submit-fail", input=str(tmp_path / "no-such-manifest.parquet"),
                          output=str(tmp_path / "bad-out"), model={"path": str(tiny_model_dir)})
    r = cli(head_env, "submit", str(bad_spec), "--address", url)
    assert r.returncode == 0, r.stderr[-3000:]
    bad_id = r.stdout.strip()
    assert bad_id.startswith("submit-fail-") and "iwp-annotate logs" in r.stderr

    # A real small run: two images, the tiny model, results under tmp.
    media = tmp_path / "media"
    media.mkdir()
    rows = []
    for i in range(2):
        write_image(media / f"img{i}.png", seed=50 + i, size=(112, 112), count=2)
        rows.append({"id": f"img-{i}", "uri": str(media / f"img{i}.png")})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
    output = tmp_path / "out"
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "submit-test",
        "task": {"kind": "caption"},
        "input": str(tmp_path / "manifest.parquet"),
        "output": str(output),
        "model": {"path": str(tiny_model_dir), "device": "cpu", "dtype": "float32"},
        "generation": {"max_new_tokens": 4},
        "resources": {"model_actors": [1, 1], "gpus_per_actor": 0, "cpus_per_model_actor": 1, "cpus_per_decode_task": 1},
    }, sort_keys=False))
    # The submitter's environment, not the head's: the named variable reaches the job, the other does not.
    env = {**head_env, "IWP_SUBMIT_MARKER": "passed-41", "IWP_SUBMIT_UNNAMED": "leaked"}
    echo = 'echo "marker=$IWP_SUBMIT_MARKER unnamed=${IWP_SUBMIT_UNNAMED:-absent} cwd=$(ls)" &&'
    r = cli(env, "submit", str(spec), "--address", url, "--env", "IWP_SUBMIT_MARKER", "--entrypoint-prefix", echo,
            "--wait", "--timeout", "300", timeout=360)
    ok_id = r.stdout.split()[0] if r.stdout.split() else ""
    seen = json.loads(subprocess.run([sys.executable, "-c", INSPECT, url, ok_id, bad_id], env=env, capture_output=True,
                                     text=True, timeout=120, check=True).stdout.splitlines()[-1])
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr[-3000:]}\njob logs:\n{seen['logs'][-5000:]}"
    assert ok_id.startswith("submit-test-") and r.stdout.split()[1] == "SUCCEEDED"

    assert seen["status"] == "SUCCEEDED"
    assert "marker=passed-41 unnamed=absent cwd=job.yaml" in seen["logs"]  # only the spec travelled, as job.yaml
    assert "items: 2 (2 ok, 0 failed)" in seen["logs"]
    assert "items: 2 (2 ok, 0 failed)" in seen["followed"]  # follow ends when the job has ended
    assert "no-such-job" in seen["unknown"] and "does not exist" in seen["unknown"]

    from pipeline.sink import read_results

    assert list((output / "results").rglob("part-*.parquet"))
    table = read_results(str(output))
    assert sorted(table["id"].to_pylist()) == ["img-0", "img-1"]
    assert set(table["status"].to_pylist()) == {"ok"}

    # The failed job: `status --wait` says FAILED with exit code 1, and its logs say why.
    w = cli(env, "status", bad_id, "--address", url, "--wait", "--timeout", "120", timeout=180)
    assert (w.returncode, w.stdout.strip()) == (1, "FAILED"), w.stderr
    assert bad_id in w.stderr
    assert "no-such-manifest.parquet" in seen["bad_logs"]
