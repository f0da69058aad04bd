"""Every rendered object against its schema: vendored CRDs (strict) and kubernetes-validate."""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "k8s"
BUILD_NAMES = ("base", "small", "large", "nightly-raycronjob", "nightly-cronjob")


@pytest.mark.parametrize("build", BUILD_NAMES)
def test_every_object_matches_its_schema(rendered, validate, schema_dir, build):
    problems = []
    for obj in rendered[build]:
        problems += validate.validate_object(obj, schema_dir)
    assert problems == []


@pytest.mark.parametrize("build", ["small", "large", "nightly-cronjob"])
def test_rayjob_cluster_spec_is_a_valid_raycluster(rendered, validate, schema_dir, build):
    rayjob = next(o for o in rendered[build] if o["kind"] == "RayJob")
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "check"},
        "spec": rayjob["spec"]["rayClusterSpec"],
    }
    assert validate.validate_custom_resource(cluster, schema_dir) == []


def test_example_objects_match_their_schemas(validate):
    for path in sorted((K8S / "examples").glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            assert validate.validate_object(obj) == [], path.name


def test_schema_checks_catch_mistakes(rendered, validate, schema_dir, get):
    objs = rendered["nightly-cronjob"]
    rayjob = copy.deepcopy(get(objs, "RayJob"))
    rayjob["spec"]["shutdownAfterJobFinish"] = True  # typo of shutdownAfterJobFinishes
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    worker["maxReplicas"] = "8"  # string, not integer
    worker["template"]["spec"]["containers"][0]["resource"] = {}  # typo of resources
    problems = validate.validate_object(rayjob, schema_dir)
    assert any("shutdownAfterJobFinish" in p for p in problems)
    assert any("maxReplicas" in p for p in problems)
    assert any("'resource' was unexpected" in p for p in problems)

    cron = copy.deepcopy(get(rendered["nightly-raycronjob"], "RayCronJob"))
    del cron["spec"]["schedule"]
    cron["spec"]["timeZone"] = ""
    problems = validate.validate_object(cron, schema_dir)
    assert any("'schedule' is a required property" in p for p in problems)
    assert any("timeZone" in p for p in problems)

    monitor = copy.deepcopy(get(objs, "PodMonitor", "iwp-annotate-ray"))
    monitor["spec"]["podMetricsEndpoints"][0]["honourLabels"] = True
    assert validate.validate_object(monitor, schema_dir)

    cronjob = copy.deepcopy(get(objs, "CronJob"))
    cronjob["spec"]["concurrency"] = "Forbid"
    assert any("concurrency" in p for p in validate.validate_object(cronjob))

    deployment = copy.deepcopy(get(objs, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9091"
    assert validate.validate_object(deployment)

    configmap = copy.deepcopy(get(objs, "ConfigMap", "iwp-annotate-job"))
    configmap["metadata"]["labels"]["broken"] = 1
    assert any("must be a string" in p for p in validate.validate_object(configmap))


def test_unknown_custom_resource_is_reported(validate, schema_dir):
    obj = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "x"}, "spec": {}}
    assert any("no vendored CRD schema" in p for p in validate.validate_custom_resource(obj, schema_dir))


def test_kuberay_rules_hold_and_can_fail(rendered, validate, get):
    for build in BUILD_NAMES:
        for obj in rendered[build]:
            assert validate.validate_kuberay_rules(obj) == [], build
    rayjob = copy.deepcopy(get(rendered["small"], "RayJob"))
    rayjob["metadata"]["name"] = "x" * 48
    rayjob["spec"]["shutdownAfterJobFinishes"] = False
    rayjob["spec"]["suspend"] = True
    rayjob["spec"]["activeDeadlineSeconds"] = 0
    group = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["minReplicas"], group["maxReplicas"] = 2, 1
    group["rayStartParams"]["num-gpus"] = "1"
    group["resources"] = {"GPU": "1"}
    problems = "\n".join(validate.validate_kuberay_rules(rayjob))
    for needle in ("at most 47", "shutdownAfterJobFinishes", "activeDeadlineSeconds", "minReplicas 2 > maxReplicas 1", "both in rayStartParams"):
        assert needle in problems
    cron = copy.deepcopy(get(rendered["nightly-raycronjob"], "RayCronJob"))
    cron["metadata"]["name"] = "x" * 37
    cron["spec"]["schedule"] = "CRON_TZ=UTC 0 2 * * *"
    problems = "\n".join(validate.validate_kuberay_rules(cron))
    assert "36" in problems and "timeZone" in problems


def test_vendored_crds_match_source_md():
    source = (K8S / "schemas" / "SOURCE.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|.*\| ([0-9a-f]{64}) \|$", source, re.M)
    files = sorted(p.name for p in (K8S / "schemas").glob("*.yaml"))
    if not files:
        pytest.skip("no vendored CRD files in k8s/schemas")
    assert sorted(name for name, _ in rows) == files
    for name, digest in rows:
        assert hashlib.sha256((K8S / "schemas" / name).read_bytes()).hexdigest() == digest, name


def test_raycronjob_crd_has_the_fields_we_use(validate, schema_dir):
    schemas = validate.crd_schemas(schema_dir)
    spec = schemas[("ray.io", "v1", "RayCronJob")]["properties"]["spec"]
    assert {"jobTemplate", "schedule", "timeZone", "suspend"} <= set(spec["properties"])
    assert set(spec["required"]) == {"jobTemplate", "schedule"}
    rayjob_spec = schemas[("ray.io", "v1", "RayJob")]["properties"]["spec"]["properties"]
    for field in ("shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "backoffLimit", "activeDeadlineSeconds", "entrypoint"):
        assert field in rayjob_spec
