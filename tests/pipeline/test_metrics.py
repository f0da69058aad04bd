"""Metrics on real servers: Prometheus scrapes Ray's metrics port, the job pushes a summary to a
Pushgateway; plus the progress display and the hang watchdog."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ModelConfig, PipelineConfig
from pipeline.progress import StallError
from pipeline.run import run_pipeline
from pipeline.sink import read_results
from scenes.media import write_image

pytestmark = pytest.mark.skipif(not shutil.which("prometheus") or not shutil.which("prometheus-pushgateway"),
                                reason="Debian's prometheus and prometheus-pushgateway are not installed (.ci/run installs them)")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            get(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture(scope="module")
def pushgateway(unused_port):
    port = unused_port()
    proc = subprocess.Popen(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/-/ready")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def start_prometheus(root: Path, targets: list[str], port: int) -> tuple[subprocess.Popen, str]:
    config = root / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: ray\n    honor_labels: true\n    static_configs: [{{targets: {json.dumps(targets)}}}]\n"
    )
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={root / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/-/ready")
    return proc, url


def prom_query(url: str, expr: str) -> float | None:
    data = json.loads(get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    result = data["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def pushed(url: str, job: str) -> dict[str, float]:
    """Metric name -> value of the group `job` in the Pushgateway."""
    data = json.loads(get(url + "/api/v1/metrics"))["data"]
    out = {}
    for group in data:
        if group["labels"].get("job") != job:
            continue
        for name, family in group.items():
            if isinstance(family, dict) and family.get("metrics"):
                out[name] = float(family["metrics"][0]["value"])
    return out


def manifest(root: Path, ok: int, broken: int = 0) -> str:
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(ok):
        write_image(media / f"{i}.png", seed=i, size=(112, 112), count=2)
        rows.append({"id": f"ok-{i}", "uri": str(media / f"{i}.png")})
    for i in range(broken):
        (media / f"bad{i}.png").write_bytes(b"not an image")
        rows.append({"id": f"bad-{i}", "uri": str(media / f"bad{i}.png")})
    path = root / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def test_live_metrics_scraped_and_summary_pushed(tmp_path, tiny_model_dir, pushgateway, ray_cluster, unused_port):
    metrics_ports = (unused_port(), unused_port())
    address, env = ray_cluster(nodes=2, metrics_ports=metrics_ports)
    prom, prom_url = start_prometheus(tmp_path, [f"127.0.0.1:{p}" for p in metrics_ports], unused_port())
    try:
        cmd = [sys.executable, "-m", "jobs.cli", "run", "--input", manifest(tmp_path, 5, broken=2),
               "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir), "--name", "metrics-test",
               "--pushgateway", pushgateway, "--max-new-tokens", "4", "--keep-ratio", "0.5"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        sel = '{job="metrics-test",task="caption",method="iwp"}'
        expect = {
            f"sum(last_over_time(ray_iwp_items_processed_total{sel}[10m]))": 7,
            'sum(last_over_time(ray_iwp_items_failed_total{job="metrics-test",stage="decode"}[10m]))': 2,
            f"sum(last_over_time(ray_iwp_frames_decoded_total{sel}[10m]))": 5,
            'sum(last_over_time(ray_iwp_stage_latency_seconds_count{job="metrics-test",stage="decode"}[10m]))': 7,
        }
        deadline = time.monotonic() + 90
        while True:
            got = {q: prom_query(prom_url, q) for q in expect}
            if got == {q: float(v) for q, v in expect.items()} or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert got == {q: float(v) for q, v in expect.items()}
        by_type = json.loads(get(f"{prom_url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": 'sum by (error_type) (last_over_time(ray_iwp_items_failed_total{job="metrics-test"}[10m]))'})))
        assert {r["metric"]["error_type"]: float(r["value"][1]) for r in by_type["data"]["result"]} == {"UnidentifiedImageError": 2.0}
        before = prom_query(prom_url, 'sum(last_over_time(ray_iwp_visual_tokens_total{job="metrics-test",phase="before"}[10m]))')
        after = prom_query(prom_url, 'sum(last_over_time(ray_iwp_visual_tokens_total{job="metrics-test",phase="after"}[10m]))')
        assert before and after and after / before == pytest.approx(0.5, abs=0.05)
        assert prom_query(prom_url, 'sum(last_over_time(ray_iwp_batch_size_count{job="metrics-test"}[10m]))') >= 1
        assert prom_query(prom_url, 'max(last_over_time(ray_iwp_decode_tokens_per_second{job="metrics-test"}[10m]))') > 0
    finally:
        prom.terminate()
        prom.wait(timeout=30)
    summary = pushed(pushgateway, "metrics-test")
    assert summary["iwp_job_items_ok"] == 5 and summary["iwp_job_items_failed"] == 2
    assert summary["iwp_job_keep_ratio"] == pytest.approx(0.5, abs=0.05)
    assert 0 < summary["iwp_job_weight_fidelity_mean"] <= 1
    assert summary["iwp_job_items_per_second"] > 0 and summary["iwp_job_duration_seconds"] > 0
    assert abs(summary["iwp_job_last_success_unixtime"] - time.time()) < 600


def test_failed_run_pushes_failure_and_keeps_last_success(tmp_path, tiny_model_dir, pushgateway, ray_local):
    cfg = PipelineConfig(name="push-fail", input=manifest(tmp_path, 1), output=str(tmp_path / "out"),
                         model=ModelConfig(path=str(tiny_model_dir)), metrics={"pushgateway": pushgateway})
    run_pipeline(cfg)
    success = pushed(pushgateway, "push-fail")["iwp_job_last_success_unixtime"]
    changed = cfg.model_copy(update={"pruning": cfg.pruning.model_copy(update={"keep_ratio": 0.9})})
    with pytest.raises(ValueError, match="different configuration"):
        run_pipeline(changed)
    after = pushed(pushgateway, "push-fail")
    assert after["iwp_job_last_success_unixtime"] == success
    assert after["iwp_job_last_failure_unixtime"] >= success


def test_unreachable_pushgateway_never_fails_the_job(tmp_path, tiny_model_dir, ray_local, caplog, unused_port):
    cfg = PipelineConfig(name="push-down", input=manifest(tmp_path, 1), output=str(tmp_path / "out"),
                         model=ModelConfig(path=str(tiny_model_dir)),
                         metrics={"pushgateway": f"http://127.0.0.1:{unused_port()}"})
    started = time.monotonic()
    report = run_pipeline(cfg)
    assert report.this_run.ok == 1
    assert "could not push the job summary" in caplog.text
    assert time.monotonic() - started < 120


def test_progress_lines_when_not_a_terminal(tmp_path, tiny_model_dir, ray_local):
    stream = io.StringIO()
    cfg = PipelineConfig(input=manifest(tmp_path, 3), output=str(tmp_path / "out"), model=ModelConfig(path=str(tiny_model_dir)))
    run_pipeline(cfg, progress_stream=stream)
    assert "progress: 3/3 items (100%)" in stream.getvalue()


def test_watchdog_names_the_stuck_stage(tmp_path, tiny_model_dir, ray_local):
    """A FIFO never yields data, like a hung network mount: decode blocks and the watchdog fires."""
    path = manifest(tmp_path, 2)
    fifo = tmp_path / "media" / "hang.png"
    os.mkfifo(fifo)
    table = pq.read_table(path)
    pq.write_table(pa.concat_tables([table, pa.table({"id": ["hang"], "uri": [str(fifo)]})]), path)
    cfg = PipelineConfig(input=path, output=str(tmp_path / "out"), model=ModelConfig(path=str(tiny_model_dir)),
                         stall_timeout_s=25)
    try:
        with pytest.raises(StallError, match=r"no item finished for 25 s; rows done per stage: decode [0-2]/3.*the decode stage is the first one behind"):
            run_pipeline(cfg)
    finally:
        threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True).start()
    assert len(read_results(cfg.output.path)) <= 2
