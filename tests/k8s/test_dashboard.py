"""The Grafana dashboard: loadable structure, the contract's metrics, sane PromQL, one copy."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "dashboards" / "iwp-annotate.json"
METRICS = (
    "ray_iwp_items_processed_total", "ray_iwp_items_failed_total", "ray_iwp_visual_tokens_total",
    "ray_iwp_stage_latency_seconds_bucket", "ray_iwp_batch_size_bucket", "ray_iwp_gpu_memory_bytes",
    "iwp_job_items_ok", "iwp_job_items_failed", "iwp_job_duration_seconds", "iwp_job_items_per_second",
    "iwp_job_keep_ratio", "iwp_job_weight_fidelity_mean", "iwp_job_last_success_unixtime",
)
BUILTIN_VARS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}


def panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def data_panels(dash):
    return [p for p in panels(dash) if p["type"] != "row"]


def exprs(dash):
    return [t["expr"] for p in data_panels(dash) for t in p.get("targets", [])]


def check_dashboard(dash: dict) -> list[str]:
    problems = []
    if not 36 <= dash.get("schemaVersion", 0) <= 41:
        problems.append(f"schemaVersion {dash.get('schemaVersion')} outside 36..41")
    for key in ("uid", "title", "panels", "templating", "time"):
        if key not in dash:
            problems.append(f"missing {key}")
    if dash.get("id") is not None:
        problems.append("id must be null so Grafana assigns one")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no Prometheus datasource variable named datasource")
    job = variables.get("job")
    if not job or job.get("type") != "query" or job.get("datasource", {}).get("uid") != "${datasource}":
        problems.append("no job query variable on ${datasource}")
    ids = [p.get("id") for p in panels(dash)]
    if len(ids) != len(set(ids)) or None in ids:
        problems.append(f"panel ids not unique: {ids}")
    occupied = set()
    for p in panels(dash):
        g = p.get("gridPos", {})
        if not all(k in g for k in "hwxy") or g["x"] + g["w"] > 24:
            problems.append(f"panel {p.get('title')}: bad gridPos {g}")
            continue
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        if cells & occupied:
            problems.append(f"panel {p.get('title')} overlaps another")
        occupied |= cells
    for p in data_panels(dash):
        where = f"panel {p.get('title')!r}"
        if p.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
            problems.append(f"{where}: datasource must be the ${{datasource}} variable")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)):
            problems.append(f"{where}: duplicate refIds")
        for t in targets:
            problems += [f"{where}: {e}" for e in check_promql(t.get("expr", ""), set(variables) | BUILTIN_VARS)]
    return problems


def check_promql(expr: str, variables: set[str]) -> list[str]:
    problems = []
    if not expr.strip():
        return ["empty expr"]
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    in_string = False
    for ch in expr:
        if ch == '"':
            in_string = not in_string
        elif not in_string and ch in depth:
            depth[ch] += 1
        elif not in_string and ch in closing:
            depth[closing[ch]] -= 1
            if depth[closing[ch]] < 0:
                problems.append(f"unbalanced {ch!r} in {expr}")
    if in_string or any(depth.values()):
        problems.append(f"unbalanced brackets or quotes in {expr}")
    for var in re.findall(r"\$\{?(\w+)", expr):
        if var not in variables:
            problems.append(f"undefined variable ${var} in {expr}")
    for counter in re.findall(r"\b(\w+_total|\w+_bucket)\b", expr):
        if not re.search(rf"(rate|increase)\(\s*{counter}\b", expr):
            problems.append(f"{counter} used without rate()/increase() in {expr}")
    for m in re.finditer(r"histogram_quantile\(\s*([0-9.]+)\s*,(.*)", expr):
        if not 0 < float(m.group(1)) < 1 or not re.search(r"by \([^)]*\ble\b", m.group(2)):
            problems.append(f"histogram_quantile needs a quantile in (0,1) and `by (le, ...)`: {expr}")
    return problems


@pytest.fixture(scope="module")
def dash():
    return json.loads(DASHBOARD.read_text())


def test_dashboard_is_well_formed(dash):
    assert check_dashboard(dash) == []


def test_dashboard_charts_every_contract_metric(dash):
    text = "\n".join(exprs(dash))
    assert [m for m in METRICS if not re.search(rf"\b{m}\b", text)] == []


def test_dashboard_has_the_required_panels(dash):
    by_title = {p["title"].lower(): p for p in data_panels(dash)}

    def panel(*words):
        found = [p for t, p in by_title.items() if all(w in t for w in words)]
        assert found, f"no panel titled with {words}: {list(by_title)}"
        return found[0]

    assert "rate(ray_iwp_items_processed_total" in panel("throughput")["targets"][0]["expr"]
    failures = panel("failures", "error type")["targets"][0]["expr"]
    assert "ray_iwp_items_failed_total" in failures and "by (error_type)" in failures
    keep = panel("keep ratio", "after / before")["targets"][0]["expr"]
    assert 'phase="after"' in keep and 'phase="before"' in keep and keep.index('"after"') < keep.index(" / ")
    latency = [t["expr"] for t in panel("latency")["targets"]]
    assert [re.search(r"histogram_quantile\(([0-9.]+)", e).group(1) for e in latency] == ["0.5", "0.95", "0.99"]
    assert all("by (le, stage)" in e for e in latency)
    assert "ray_iwp_gpu_memory_bytes" in panel("gpu memory")["targets"][0]["expr"]
    assert "iwp_job_last_success_unixtime" in panel("last success")["targets"][0]["expr"]


@pytest.mark.parametrize(
    "mutation, expected",
    [
        (lambda d: d["templating"]["list"].pop(0), "datasource variable"),
        (lambda d: d["templating"]["list"].pop(1), "job query variable"),
        (lambda d: d.update(schemaVersion=16), "schemaVersion"),
        (lambda d: d["panels"][1]["targets"][0].update(expr=""), "empty expr"),
        (lambda d: d["panels"][1].update(targets=[]), "no targets"),
        (lambda d: d["panels"][1].update(datasource={"type": "prometheus", "uid": "abc"}), "datasource"),
        (lambda d: d["panels"][2].update(id=d["panels"][1]["id"]), "not unique"),
        (lambda d: d["panels"][2].update(gridPos=dict(d["panels"][1]["gridPos"])), "overlaps"),
        (lambda d: d["panels"][8]["targets"][0].update(expr="sum(ray_iwp_items_processed_total{job=~\"$job\"})"), "without rate"),
        (lambda d: d["panels"][8]["targets"][0].update(expr="sum(rate(ray_iwp_items_processed_total{job=~\"$jobs\"}[5m]))"), "undefined variable"),
        (lambda d: d["panels"][8]["targets"][0].update(expr="sum(rate(ray_iwp_items_processed_total[5m])"), "unbalanced"),
        (lambda d: d["panels"][8]["targets"][0].update(expr="histogram_quantile(95, sum by (stage) (rate(ray_iwp_stage_latency_seconds_bucket[5m])))"), "histogram_quantile"),
    ],
)
def test_dashboard_checks_can_fail(dash, mutation, expected):
    broken = copy.deepcopy(dash)
    mutation(broken)
    assert any(expected in p for p in check_dashboard(broken)), check_dashboard(broken)


def test_dashboard_configmap_is_the_one_copy(rendered, get):
    for build in ("small", "large", "nightly-raycronjob", "nightly-cronjob"):
        cm = get(rendered[build], "ConfigMap", "iwp-annotate-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["data"] == {"iwp-annotate.json": DASHBOARD.read_text()}
    assert not list((REPO / "k8s").rglob("*.json")), "dashboard JSON must live only in dashboards/"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed")
def test_dashboard_promql_parses_with_promtool(dash, tmp_path):
    rules = []
    for i, expr in enumerate(exprs(dash)):
        concrete = expr.replace("$__rate_interval", "5m").replace("$job", ".*")
        rules.append({"record": f"iwp:dashboard_check:{i}", "expr": concrete})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed")
def test_dashboard_queries_compute_the_right_numbers(dash, tmp_path):
    """Evaluate the panels' PromQL on synthetic series shaped like the contract's metrics."""
    by_title = {p["title"]: p for p in data_panels(dash)}

    def expr(title, i=0):
        return by_title[title]["targets"][i]["expr"].replace("$__rate_interval", "5m").replace("$job", "nightly-captions")

    job = 'job="nightly-captions",task="caption",method="iwp"'
    series = [
        (f"ray_iwp_items_processed_total{{{job}}}", "0+120x20"),  # 2 items/s
        (f'ray_iwp_items_failed_total{{{job},error_type="DecodeError"}}', "0+30x20"),  # 0.5/s
        (f'ray_iwp_visual_tokens_total{{{job},phase="before"}}', "0+1000x20"),
        (f'ray_iwp_visual_tokens_total{{{job},phase="after"}}', "0+222x20"),
        ('ray_iwp_stage_latency_seconds_bucket{stage="model",le="1"}', "0+60x20"),
        ('ray_iwp_stage_latency_seconds_bucket{stage="model",le="2"}', "0+120x20"),
        ('ray_iwp_stage_latency_seconds_bucket{stage="model",le="+Inf"}', "0+120x20"),
        ('iwp_job_last_success_unixtime{job="nightly-captions"}', "-6600x20"),  # 2 h before eval time 600 s
        ('iwp_job_keep_ratio{job="nightly-captions"}', "0.222x20"),
        ('ray_iwp_items_processed_total{job="other",task="caption",method="iwp"}', "0+600x20"),
    ]
    tests = [
        (expr("Throughput (items/s)"), '{job="nightly-captions",task="caption",method="iwp"}', 2),
        (expr("Failures by error type (items/s)"), '{error_type="DecodeError"}', 0.5),
        (expr("Keep ratio (visual tokens after / before pruning)"), '{job="nightly-captions",method="iwp"}', 0.222),
        (expr("Keep ratio (visual tokens after / before pruning)", 1), '{job="nightly-captions"}', 0.222),
        (expr("Stage latency p50 / p95 / p99"), '{stage="model"}', 1.0),
        (expr("Stage latency p50 / p95 / p99", 2), '{stage="model"}', 1.98),
        (expr("Hours since last success"), '{job="nightly-captions"}', 2),
    ]
    spec = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "promql_expr_test": [
                {"expr": e, "eval_time": "10m", "exp_samples": [{"labels": labels, "value": value}]}
                for e, labels, value in tests
            ],
        }],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
