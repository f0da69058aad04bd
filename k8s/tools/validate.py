#!/usr/bin/env python3
"""Check rendered manifests offline: schemas, KubeRay's own admission rules, security.

    python k8s/tools/validate.py k8s/overlays/small [more overlay dirs]   # exit 1 on problems

Every check returns a list of problems (strings naming the object and field); tests/k8s
asserts the lists are empty for every overlay and non-empty for broken inputs.

- Custom resources (RayJob, RayCronJob, RayCluster, PodMonitor): the openAPIV3Schema of the
  CRD YAML vendored in k8s/schemas/ (see SOURCE.md), made strict the way `kubectl apply`'s
  server-side field validation is: a field the schema does not name is an error (unless the
  schema says x-kubernetes-preserve-unknown-fields). CEL rules (x-kubernetes-validations) are
  not evaluated; the KubeRay rules our manifests could break are re-implemented below.
- Kubernetes core objects: the `kubernetes-validate` package (bundled JSON schemas, strict).
- Security: non-root, no privilege escalation, ALL capabilities dropped, read-only root
  filesystem, resource limits, no host namespaces or hostPath, ClusterIP-only Services,
  credentials only through optional Secret references.
"""

from __future__ import annotations

import copy
import functools
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

try:
    _Loader = yaml.CSafeLoader
except AttributeError:
    _Loader = yaml.SafeLoader

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
CRD_FILES = (
    "ray.io_rayjobs.yaml",
    "ray.io_rayclusters.yaml",
    "ray.io_raycronjobs.yaml",
    "monitoring.coreos.com_podmonitors.yaml",
)
# Kubernetes versions the core objects are checked against: the oldest we document and the
# newest that kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.29.0", "latest")
CORE_API_VERSIONS = {"v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1", "policy/v1", "networking.k8s.io/v1"}

# KubeRay v1.7.0 ray-operator/controllers/ray/utils/constant.go
MAX_RAYJOB_NAME = 47
MAX_RAYCRONJOB_NAME = 36
GENERATE_NAME_SUFFIX = 5  # characters the API server appends to generateName

DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SECRETISH_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY)", re.I)
SECRET_VALUE_PATTERNS = (
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"aws_secret_access_key\s*[:=]\s*\S", re.I),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)


# -- schemas -----------------------------------------------------------------------------------

def strict_schema(schema: Any) -> Any:
    """OpenAPI v3 (structural CRD schema) -> JSON Schema that refuses unknown fields."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if out.get("x-kubernetes-embedded-resource") and "properties" in out:
        for key in ("apiVersion", "kind"):
            out["properties"].setdefault(key, {"type": "string"})
        out["properties"].setdefault("metadata", {"type": "object"})
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@functools.lru_cache(maxsize=None)
def crd_schemas(schema_dir: str = str(SCHEMA_DIR)) -> dict[tuple[str, str, str], dict]:
    """{(group, version, kind): strict JSON schema} for every served version of every CRD."""
    out = {}
    for name in CRD_FILES:
        crd = yaml.load((Path(schema_dir) / name).read_text(), Loader=_Loader)
        if crd.get("kind") != "CustomResourceDefinition":
            raise ValueError(f"{name} is not a CustomResourceDefinition")
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                out[(group, version["name"], kind)] = strict_schema(version["schema"]["openAPIV3Schema"])
    return out


def _gvk(obj: dict) -> tuple[str, str, str]:
    api = obj.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    return group, version, obj.get("kind", "")


def describe(obj: dict) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('name') or meta.get('generateName', '?') + '*'}"


def _error_path(error) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(root)"


def validate_custom_resource(obj: dict, schema_dir: str = str(SCHEMA_DIR)) -> list[str]:
    import jsonschema

    schema = crd_schemas(schema_dir).get(_gvk(obj))
    if schema is None:
        return [f"{describe(obj)}: no vendored CRD schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    validator = jsonschema.Draft4Validator(schema)
    problems = [f"{describe(obj)}: {_error_path(e)}: {e.message}" for e in validator.iter_errors(obj)]
    return problems + validate_metadata(obj)


def validate_core(obj: dict, versions=KUBERNETES_VERSIONS) -> list[str]:
    from kubernetes_validate import utils as kv

    problems = []
    for version in versions:
        v = kv.latest_version() if version == "latest" else version
        try:
            kv.validate(obj, v, strict=True)
        except kv.ValidationError as e:
            path = "/".join(str(p) for p in e.absolute_path) or "(root)"
            problems.append(f"{describe(obj)} (Kubernetes {v}): {path}: {e.message}")
        except kv.SchemaNotFoundError:
            problems.append(f"{describe(obj)}: kubernetes-validate has no schema for {obj.get('apiVersion')} {obj.get('kind')} in {v}")
    return problems + validate_metadata(obj)


def validate_metadata(obj: dict) -> list[str]:
    meta = obj.get("metadata") or {}
    where = describe(obj)
    problems = []
    name = meta.get("name")
    if name is None and not meta.get("generateName"):
        problems.append(f"{where}: metadata.name (or generateName) is missing")
    if name is not None and (len(name) > 253 or not DNS1123_SUBDOMAIN.match(name)):
        problems.append(f"{where}: metadata.name {name!r} is not a DNS-1123 subdomain")
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            if not isinstance(value, str):
                problems.append(f"{where}: metadata.{field}[{key}] must be a string, not {value!r}")
            elif field == "labels" and (len(value) > 63 or not LABEL_VALUE.match(value)):
                problems.append(f"{where}: label {key}={value!r} is not a valid label value")
    return problems


def validate_object(obj: dict, schema_dir: str = str(SCHEMA_DIR)) -> list[str]:
    if obj.get("apiVersion") in CORE_API_VERSIONS:
        return validate_core(obj)
    return validate_custom_resource(obj, schema_dir)


# -- KubeRay admission rules (ray-operator/controllers/ray/utils/validation.go, v1.7.0) ---------

def rayjob_specs(obj: dict) -> Iterator[tuple[str, dict]]:
    """(where, RayJobSpec) for a RayJob and for a RayCronJob's jobTemplate."""
    if obj.get("kind") == "RayJob":
        yield describe(obj), obj.get("spec", {})
    elif obj.get("kind") == "RayCronJob":
        yield describe(obj) + " jobTemplate", obj.get("spec", {}).get("jobTemplate", {})


def validate_kuberay_rules(obj: dict) -> list[str]:
    problems = []
    meta = obj.get("metadata", {})
    if obj.get("kind") == "RayJob":
        name = meta.get("name") or meta.get("generateName", "") + "x" * GENERATE_NAME_SUFFIX
        if len(name) > MAX_RAYJOB_NAME or not DNS1035_LABEL.match(name):
            problems.append(f"{describe(obj)}: RayJob name must be a DNS-1035 label of at most {MAX_RAYJOB_NAME} characters")
    if obj.get("kind") == "RayCronJob":
        spec = obj.get("spec", {})
        if len(meta.get("name", "")) > MAX_RAYCRONJOB_NAME:
            problems.append(f"{describe(obj)}: RayCronJob name longer than {MAX_RAYCRONJOB_NAME} characters")
        if "TZ" in spec.get("schedule", ""):
            problems.append(f"{describe(obj)}: use spec.timeZone, not TZ/CRON_TZ in the schedule")
        if len(str(spec.get("schedule", "")).split()) != 5:
            problems.append(f"{describe(obj)}: schedule {spec.get('schedule')!r} is not a 5-field cron expression")
        if "timeZone" in spec and not spec["timeZone"]:
            problems.append(f"{describe(obj)}: timeZone must not be empty")
        if not spec.get("jobTemplate"):
            problems.append(f"{describe(obj)}: jobTemplate is empty")
    for where, spec in rayjob_specs(obj):
        if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
            problems.append(f"{where}: a suspended RayJob needs shutdownAfterJobFinishes: true")
        if spec.get("ttlSecondsAfterFinished", 0) < 0:
            problems.append(f"{where}: ttlSecondsAfterFinished must be >= 0")
        if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
            problems.append(f"{where}: ttlSecondsAfterFinished only works with shutdownAfterJobFinishes: true")
        if "activeDeadlineSeconds" in spec and spec["activeDeadlineSeconds"] <= 0:
            problems.append(f"{where}: activeDeadlineSeconds must be positive")
        if spec.get("backoffLimit", 0) < 0:
            problems.append(f"{where}: backoffLimit must be >= 0")
        if spec.get("submissionMode") == "SidecarMode" and (spec.get("submitterPodTemplate") or spec.get("submitterConfig")):
            problems.append(f"{where}: SidecarMode allows neither submitterPodTemplate nor submitterConfig")
        cluster = spec.get("rayClusterSpec")
        if not cluster and not spec.get("clusterSelector"):
            problems.append(f"{where}: one of rayClusterSpec or clusterSelector must be set")
            continue
        problems += _validate_cluster(where, cluster or {})
    return problems


def _validate_cluster(where: str, cluster: dict) -> list[str]:
    problems = []
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    head = cluster.get("headGroupSpec", {})
    if not head.get("template", {}).get("spec", {}).get("containers"):
        problems.append(f"{where}: headGroupSpec needs at least one container")
    groups = [("head", head)] + [(g.get("groupName", "?"), g) for g in cluster.get("workerGroupSpecs", [])]
    for name, group in groups:
        params = group.get("rayStartParams", {})
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
            problems.append(f"{where}: group {name} sets resources both in rayStartParams and resources")
        if "labels" in params:
            problems.append(f"{where}: group {name}: rayStartParams['labels'] is not supported")
        for key, value in params.items():
            if not isinstance(value, str):
                problems.append(f"{where}: group {name}: rayStartParams[{key}] must be a string")
    for group in cluster.get("workerGroupSpecs", []):
        name = group.get("groupName", "?")
        if not group.get("template", {}).get("spec", {}).get("containers"):
            problems.append(f"{where}: worker group {name} needs at least one container")
        lo, hi = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (lo is None or hi is None):
            problems.append(f"{where}: worker group {name} must set minReplicas and maxReplicas without autoscaling")
        if lo is not None and hi is not None and lo > hi:
            problems.append(f"{where}: worker group {name}: minReplicas {lo} > maxReplicas {hi}")
        replicas = group.get("replicas")
        if replicas is not None and lo is not None and hi is not None and not lo <= replicas <= hi:
            problems.append(f"{where}: worker group {name}: replicas {replicas} outside [{lo}, {hi}]")
    return problems


# -- security ----------------------------------------------------------------------------------

def pod_specs(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every pod spec (a map with `containers`) anywhere inside an object, with its path."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield path or "/", node
        for key, value in node.items():
            yield from pod_specs(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from pod_specs(item, f"{path}/{i}")


def _image_problems(where: str, image: Any, allow_latest: frozenset[str]) -> list[str]:
    if not isinstance(image, str) or not image:
        return [f"{where}: no image"]
    if "@sha256:" in image:
        return []
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return [f"{where}: image {image!r} has no tag"]
    if last.endswith(":latest") and image not in allow_latest:
        return [f"{where}: image {image!r} uses the latest tag"]
    return []


def _container_problems(where: str, c: dict, pod_sc: dict, allow_latest: frozenset[str]) -> list[str]:
    problems = _image_problems(where, c.get("image"), allow_latest)
    sc = c.get("securityContext") or {}
    if sc.get("privileged"):
        problems.append(f"{where}: privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation must be false")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: readOnlyRootFilesystem must be true")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        problems.append(f"{where}: capabilities must drop ALL")
    if caps.get("add"):
        problems.append(f"{where}: adds capabilities {caps['add']}")
    non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    if non_root is not True:
        problems.append(f"{where}: runAsNonRoot must be true")
    if user is None or user == 0:
        problems.append(f"{where}: runAsUser must be set to a non-zero UID")
    resources = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for res in ("cpu", "memory"):
            if res not in (resources.get(kind) or {}):
                problems.append(f"{where}: resources.{kind}.{res} missing")
    for e in c.get("env") or []:
        if "value" in e and SECRETISH_NAME.search(e.get("name", "")):
            problems.append(f"{where}: env {e['name']} is a literal; credentials must come from a Secret")
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref is not None and ref.get("optional") is not True:
            problems.append(f"{where}: env {e['name']} secretKeyRef must be optional: true")
    for e in c.get("envFrom") or []:
        if "secretRef" in e and e["secretRef"].get("optional") is not True:
            problems.append(f"{where}: envFrom secretRef {e['secretRef'].get('name')} must be optional: true")
    return problems


def validate_security(obj: dict, allow_latest: frozenset[str] = frozenset()) -> list[str]:
    problems = []
    where = describe(obj)
    if obj.get("kind") == "Secret":
        problems.append(f"{where}: Secrets are created by hand (k8s/README.md), never rendered from this repo")
    if obj.get("kind") == "Service" and obj.get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
        problems.append(f"{where}: Service type {obj['spec']['type']}; only ClusterIP is allowed")
    if obj.get("kind") in ("ConfigMap",):
        for key, value in (obj.get("data") or {}).items():
            for pattern in SECRET_VALUE_PATTERNS:
                if pattern.search(str(value)):
                    problems.append(f"{where}: data[{key}] looks like it contains a credential")
    for _, spec in rayjob_specs(obj):
        cluster = spec.get("rayClusterSpec") or {}
        head = cluster.get("headGroupSpec", {})
        if head.get("serviceType", "ClusterIP") != "ClusterIP":
            problems.append(f"{where}: head serviceType {head['serviceType']}; only ClusterIP is allowed")
        if head.get("enableIngress"):
            problems.append(f"{where}: head enableIngress must be off")
        auto = cluster.get("autoscalerOptions")
        if auto is not None:
            problems += _container_problems(
                f"{where} autoscaler", {**auto, "image": auto.get("image", "inherits-head:image")},
                {}, allow_latest)
    for path, spec in pod_specs(obj):
        pw = f"{where} {path}"
        pod_sc = spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{pw}: {flag}")
        for v in spec.get("volumes") or []:
            if "hostPath" in v:
                problems.append(f"{pw}: hostPath volume {v.get('name')}")
        if pod_sc.get("runAsNonRoot") is not True:
            problems.append(f"{pw}: pod securityContext.runAsNonRoot must be true")
        for c in (spec.get("initContainers") or []) + spec["containers"]:
            problems += _container_problems(f"{pw} container {c.get('name')}", c, pod_sc, allow_latest)
    return problems


# -- all together ------------------------------------------------------------------------------

def check_objects(objs: list[dict], allow_latest: frozenset[str] = frozenset(), schema_dir: str = str(SCHEMA_DIR)) -> list[str]:
    problems = []
    for obj in objs:
        problems += validate_object(obj, schema_dir)
        problems += validate_kuberay_rules(obj)
        problems += validate_security(obj, allow_latest)
    return problems


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import render

    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    bad = 0
    for directory in argv:
        objs = render.build(directory)
        problems = check_objects(objs, allow_latest=frozenset({"docker.io/bitnami/kubectl:latest"}))
        for p in problems:
            print(f"{directory}: {p}")
        print(f"{directory}: {len(objs)} objects, {len(problems)} problems")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
