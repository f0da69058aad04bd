"""Security properties of every rendered object, and proof that the checks can fail."""

from __future__ import annotations

import copy

import pytest

BUILD_NAMES = ("base", "small", "large", "nightly-raycronjob", "nightly-cronjob")
LATEST_OK = frozenset({"docker.io/bitnami/kubectl:latest"})


@pytest.mark.parametrize("build", BUILD_NAMES)
def test_security_properties_hold(rendered, validate, build):
    problems = []
    for obj in rendered[build]:
        problems += validate.validate_security(obj, LATEST_OK)
    assert problems == []


@pytest.mark.parametrize("build", BUILD_NAMES)
def test_every_pod_spec_is_found(rendered, validate, build):
    """The walker must see every pod template, or the checks above would pass vacuously."""
    found = {}
    for obj in rendered[build]:
        found[(obj["kind"], obj["metadata"]["name"])] = [path for path, _ in validate.pod_specs(obj)]
    rayjob_pods = [
        "/spec/submitterPodTemplate/spec",
        "/spec/rayClusterSpec/headGroupSpec/template/spec",
        "/spec/rayClusterSpec/workerGroupSpecs/0/template/spec",
    ]
    for (kind, name), paths in found.items():
        if kind == "RayJob":
            assert sorted(paths) == sorted(rayjob_pods)
        elif kind == "RayCronJob":
            assert sorted(paths) == sorted(p.replace("/spec/", "/spec/jobTemplate/", 1) for p in rayjob_pods)
        elif kind == "Deployment":
            assert paths == ["/spec/template/spec"]
        elif kind == "CronJob":
            assert paths == ["/spec/jobTemplate/spec/template/spec"]
        else:
            assert paths == [], (kind, name)


def test_ray_containers_run_as_uid_1000(rendered, validate):
    for build in ("small", "large", "nightly-cronjob", "nightly-raycronjob"):
        for obj in rendered[build]:
            if obj["kind"] not in ("RayJob", "RayCronJob"):
                continue
            for _, spec in validate.pod_specs(obj):
                assert spec["securityContext"]["runAsUser"] == 1000
                for c in spec["containers"]:
                    assert c["securityContext"]["runAsUser"] == 1000


def test_only_clusterip_and_no_secrets_in_the_repo(rendered):
    for build in BUILD_NAMES:
        for obj in rendered[build]:
            assert obj["kind"] != "Secret"
            if obj["kind"] == "Service":
                assert obj["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_credentials_come_only_from_an_optional_secret(rendered, get):
    rayjob = get(rendered["small"], "RayJob")
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        refs = [e["secretRef"] for e in pod["containers"][0]["envFrom"] if "secretRef" in e]
        assert refs == [{"name": "iwp-annotate-s3", "optional": True}]
        assert not any(e.get("name", "").startswith("AWS_") for e in pod["containers"][0].get("env", []))


@pytest.mark.parametrize(
    "mutation, expected",
    [
        (lambda pod, c: c["securityContext"].update(privileged=True), "privileged"),
        (lambda pod, c: c["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
        (lambda pod, c: c["securityContext"].pop("readOnlyRootFilesystem"), "readOnlyRootFilesystem"),
        (lambda pod, c: c["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "drop ALL"),
        (lambda pod, c: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "adds capabilities"),
        (lambda pod, c: (c["securityContext"].update(runAsUser=0), pod["securityContext"].update(runAsUser=0)), "runAsUser"),
        (lambda pod, c: (c["securityContext"].pop("runAsNonRoot"), pod["securityContext"].pop("runAsNonRoot")), "runAsNonRoot"),
        (lambda pod, c: c["resources"].pop("limits"), "resources.limits.cpu missing"),
        (lambda pod, c: c.update(image="registry.example.com/ml/iwp-annotate"), "has no tag"),
        (lambda pod, c: c.update(image="registry.example.com/ml/iwp-annotate:latest"), "latest tag"),
        (lambda pod, c: c.setdefault("env", []).append({"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}), "literal"),
        (lambda pod, c: c["envFrom"][1]["secretRef"].pop("optional"), "optional: true"),
        (lambda pod, c: pod.update(hostNetwork=True), "hostNetwork"),
        (lambda pod, c: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    ],
)
def test_security_checks_can_fail(rendered, validate, get, mutation, expected):
    rayjob = copy.deepcopy(get(rendered["small"], "RayJob"))
    pod = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    mutation(pod, pod["containers"][0])
    problems = validate.validate_security(rayjob)
    assert any(expected in p for p in problems), problems


def test_exposure_and_secret_checks_can_fail(rendered, validate, get):
    service = copy.deepcopy(get(rendered["small"], "Service"))
    service["spec"]["type"] = "LoadBalancer"
    assert validate.validate_security(service)
    service["spec"]["type"] = "NodePort"
    assert validate.validate_security(service)

    rayjob = copy.deepcopy(get(rendered["small"], "RayJob"))
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    assert any("serviceType" in p for p in validate.validate_security(rayjob))

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}}
    assert validate.validate_security(secret)

    configmap = copy.deepcopy(get(rendered["small"], "ConfigMap", "iwp-annotate-env"))
    configmap["data"]["AWS"] = "AKIAABCDEFGHIJKLMNOP"
    assert validate.validate_security(configmap)

    large = copy.deepcopy(get(rendered["large"], "RayJob"))
    large["spec"]["rayClusterSpec"]["autoscalerOptions"]["securityContext"]["readOnlyRootFilesystem"] = False
    assert any("autoscaler" in p for p in validate.validate_security(large))
