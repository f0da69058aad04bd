"""Every kustomization renders, to exactly the objects we expect, with either renderer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

K8S = Path(__file__).resolve().parents[2] / "k8s"
BUILDS = ("base", "overlays/small", "overlays/large", "overlays/nightly-raycronjob", "overlays/nightly-cronjob")

COMMON = {
    ("ConfigMap", "iwp-annotate-dashboard"),
    ("ConfigMap", "iwp-annotate-env"),
    ("ConfigMap", "iwp-annotate-job"),
    ("Deployment", "iwp-pushgateway"),
    ("Service", "iwp-pushgateway"),
    ("PodMonitor", "iwp-annotate-ray"),
    ("PodMonitor", "iwp-pushgateway"),
}
EXPECTED = {
    "base": COMMON | {("RayJob", "iwp-annotate")},
    "small": COMMON | {("RayJob", "iwp-annotate")},
    "large": COMMON | {("RayJob", "iwp-annotate")},
    "nightly-raycronjob": COMMON | {("RayCronJob", "iwp-annotate-nightly")},
    "nightly-cronjob": COMMON
    | {
        ("RayJob", "iwp-annotate-template"),
        ("CronJob", "iwp-annotate-nightly"),
        ("ConfigMap", "iwp-annotate-launcher"),
        ("ServiceAccount", "iwp-rayjob-launcher"),
        ("Role", "iwp-rayjob-launcher"),
        ("RoleBinding", "iwp-rayjob-launcher"),
    },
}


@pytest.mark.parametrize("build", list(EXPECTED))
def test_build_renders_expected_objects(rendered, build):
    got = sorted((o["kind"], o["metadata"]["name"]) for o in rendered[build])
    assert len(got) == len(set(got)), f"duplicate objects in {build}: {got}"
    assert set(got) == EXPECTED[build]


@pytest.mark.parametrize("build", [b.removeprefix("overlays/") for b in BUILDS if b != "base"])
def test_overlays_set_the_namespace(rendered, build):
    assert {o["metadata"].get("namespace") for o in rendered[build]} == {"iwp-annotate"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not on PATH")
@pytest.mark.parametrize("build", BUILDS)
def test_python_renderer_matches_kubectl_kustomize(render, build):
    ours = {render.object_id(o): o for o in render.build(K8S / build)}
    theirs = {render.object_id(o): o for o in render.build_with_kubectl(K8S / build, shutil.which("kubectl"))}
    assert set(ours) == set(theirs)
    for key in ours:
        assert ours[key] == theirs[key], f"{key} differs between k8s/tools/render.py and kubectl kustomize"


def test_renderer_refuses_what_it_does_not_implement(render, tmp_path):
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\nnamePrefix: dev-\n")
    with pytest.raises(render.UnsupportedKustomization):
        render.build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("configMapGenerator:\n- name: y\n  literals: [a=b]\n")
    with pytest.raises(render.UnsupportedKustomization, match="hash"):
        render.build(tmp_path)


def test_renderer_applies_json6902_and_replacements(render, tmp_path):
    (tmp_path / "objs.yaml").write_text(
        "apiVersion: ray.io/v1\nkind: RayJob\nmetadata: {name: a}\nspec: {entrypoint: x, backoffLimit: 0}\n"
        "---\napiVersion: ray.io/v1\nkind: RayCronJob\nmetadata: {name: c}\nspec: {schedule: '* * * * *', jobTemplate: {}}\n"
    )
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [objs.yaml]\n"
        "patches:\n- target: {kind: RayJob, name: a}\n  patch: '[{op: replace, path: /spec/backoffLimit, value: 3}]'\n"
        "replacements:\n- source: {kind: RayJob, name: a, fieldPath: spec}\n"
        "  targets: [{select: {kind: RayCronJob, name: c}, fieldPaths: [spec.jobTemplate]}]\n"
    )
    objs = {o["kind"]: o for o in render.build(tmp_path)}
    assert objs["RayCronJob"]["spec"]["jobTemplate"] == {"entrypoint": "x", "backoffLimit": 3}

