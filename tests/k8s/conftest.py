"""Fixtures for the Kubernetes manifests: rendered overlays, the checkers in k8s/tools.

Rendering uses `kubectl kustomize` (Kustomize v5, what `kubectl apply -k` runs) when kubectl
is on PATH, else the Python renderer k8s/tools/render.py; test_render.py checks that the two
agree. Set IWP_K8S_RENDERER=python to force the Python one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
TOOLS = K8S / "tools"

# Every kustomization a user can apply, and the directory the others build on.
OVERLAYS = ("small", "large", "nightly-raycronjob", "nightly-cronjob")
BUILDS = ("base",) + tuple(f"overlays/{o}" for o in OVERLAYS)
KUBECTL_LATEST_OK = frozenset({"docker.io/bitnami/kubectl:latest"})


def _load(name: str):
    key = f"iwp_k8s_tools_{name}"  # private module name: k8s/tools is not a package
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def kubectl_path() -> str | None:
    if os.environ.get("IWP_K8S_RENDERER") == "python":
        return None
    return shutil.which("kubectl")


def pytest_report_header(config):
    kubectl = kubectl_path()
    if kubectl is None:
        return "k8s manifests rendered by: k8s/tools/render.py (kubectl not used)"
    try:
        version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=20).stdout
        kustomize = next((line for line in version.splitlines() if "Kustomize" in line), "").strip()
    except (OSError, subprocess.TimeoutExpired):
        kustomize = "?"
    return f"k8s manifests rendered by: {kubectl} kustomize ({kustomize})"


@pytest.fixture(scope="session")
def render():
    return _load("render")


@pytest.fixture(scope="session")
def validate():
    return _load("validate")


@pytest.fixture(scope="session")
def rendered(render) -> dict[str, list[dict]]:
    """{'base' | 'small' | 'large' | ...: objects} for every build in BUILDS."""
    kubectl = kubectl_path()
    out = {}
    for build in BUILDS:
        directory = K8S / build
        objs = render.build_with_kubectl(directory, kubectl) if kubectl else render.build(directory)
        out[build.removeprefix("overlays/")] = objs
    return out


@pytest.fixture(scope="session")
def schema_dir(validate) -> str:
    """The folder holding the upstream CRD YAML: IWP_K8S_SCHEMAS, k8s/schemas, or the shared
    folder beside the checkout (../shared/k8s-schemas), where the team keeps third-party data."""
    candidates = [os.environ.get("IWP_K8S_SCHEMAS"), str(K8S / "schemas"), str(K8S.parent.parent / "shared" / "k8s-schemas")]
    for c in candidates:
        if c and all((Path(c) / f).is_file() for f in validate.CRD_FILES):
            return c
    pytest.skip(f"vendored CRD schemas {validate.CRD_FILES} not found in {[c for c in candidates if c]}")


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    """The single object of this kind (and name) in a rendered build."""
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


@pytest.fixture(scope="session")
def get():
    return one
