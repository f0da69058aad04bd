"""Scheduled runs: RayCronJob copies the run, the CronJob launcher copies the template RayJob."""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

K8S = Path(__file__).resolve().parents[2] / "k8s"
LAUNCHER = K8S / "components" / "schedule-cronjob" / "launch-rayjob.sh"


def test_raycronjob_runs_exactly_the_large_rayjob(rendered, get):
    cron = get(rendered["nightly-raycronjob"], "RayCronJob")
    large = get(rendered["large"], "RayJob")
    assert cron["spec"]["jobTemplate"] == large["spec"]
    assert cron["spec"]["schedule"] == "0 2 * * *"
    assert cron["spec"]["timeZone"] == "Etc/UTC"
    assert cron["spec"]["suspend"] is False
    assert not [o for o in rendered["nightly-raycronjob"] if o["kind"] == "RayJob"], "no one-off run next to the schedule"


def test_cronjob_template_is_the_large_rayjob_suspended(rendered, get):
    template = get(rendered["nightly-cronjob"], "RayJob")
    large = get(rendered["large"], "RayJob")
    assert template["metadata"]["name"] == "iwp-annotate-template"
    assert template["metadata"]["labels"]["iwp-annotate/role"] == "template"
    assert template["spec"]["suspend"] is True
    assert {k: v for k, v in template["spec"].items() if k != "suspend"} == large["spec"]


def test_cronjob_wiring(rendered, get):
    objs = rendered["nightly-cronjob"]
    cronjob = get(objs, "CronJob")
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["timeZone"] == "Etc/UTC" and spec["schedule"] == "0 2 * * *"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TEMPLATE_RAYJOB"] == get(objs, "RayJob")["metadata"]["name"]
    assert "kubectl" in container["image"]

    account = get(objs, "ServiceAccount")
    role = get(objs, "Role")
    binding = get(objs, "RoleBinding")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "iwp-annotate"}]
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get", "list", "delete"]}]

    script = get(objs, "ConfigMap", "iwp-annotate-launcher")
    assert script["data"]["launch-rayjob.sh"] == LAUNCHER.read_text()
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == "iwp-annotate-launcher"
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert container["command"] == ["/bin/sh", f"{mount['mountPath']}/launch-rayjob.sh"]


# -- the launcher script, against a fake kubectl ---------------------------------------------

FAKE_KUBECTL = textwrap.dedent(
    """\
    #!{python}
    # Stands in for kubectl: serves the template and the list of runs from files, records
    # create/delete, and hands `patch --local` to the real kubectl (or to jsonpatch).
    import json, os, shutil, subprocess, sys
    state = os.environ["FAKE_STATE"]
    args = sys.argv[1:]
    with open(os.path.join(state, "calls"), "a") as f:
        f.write(json.dumps(args) + "\\n")
    if args[:2] == ["-n", os.environ["NAMESPACE"]]:
        args = args[2:]
    if args[:2] == ["get", "rayjobs"]:
        sys.stdout.write(open(os.path.join(state, "runs")).read())
    elif args[:2] == ["get", "rayjob"]:
        sys.stdout.write(open(os.path.join(state, "template.json")).read())
    elif args[:2] == ["patch", "--local"]:
        real = os.environ.get("REAL_KUBECTL")
        if real:
            os.execv(real, [real] + args)
        import jsonpatch
        obj = json.load(open(args[args.index("-f") + 1]))
        print(json.dumps(jsonpatch.apply_patch(obj, json.loads(args[args.index("-p") + 1]))))
    elif args[:1] == ["create"]:
        obj = json.load(open(args[args.index("-f") + 1]))
        json.dump(obj, open(os.path.join(state, "created.json"), "w"))
        print("rayjob.ray.io/" + obj["metadata"]["generateName"] + "x7k2p")
    elif args[:2] == ["delete", "rayjob"]:
        with open(os.path.join(state, "deleted"), "a") as f:
            f.write(args[2] + "\\n")
    else:
        sys.exit("fake kubectl: unexpected call " + " ".join(args))
    """
)


@pytest.fixture
def launcher(tmp_path, rendered, get):
    """Run launch-rayjob.sh with a fake kubectl; returns (run(runs_text) -> (proc, state), template)."""
    if shutil.which("sh") is None:
        pytest.skip("no POSIX sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "kubectl"
    fake.write_text(FAKE_KUBECTL.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    real = shutil.which("kubectl")

    # The template as the API server returns it: with server-set metadata and a status.
    template = copy.deepcopy(get(rendered["nightly-cronjob"], "RayJob"))
    template["metadata"].update(
        uid="0b6c0d9e-0000-4000-8000-000000000000", resourceVersion="4242",
        creationTimestamp="2026-01-01T00:00:00Z", finalizers=["ray.io/rayjob-finalizer"], generation=1,
    )
    template["status"] = {"jobDeploymentStatus": "Suspended", "jobStatus": "NEW"}

    def run(runs: str, keep: int = 5):
        state = tmp_path / "state"
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir()
        (state / "runs").write_text(runs)
        (state / "template.json").write_text(json.dumps(template))
        env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_STATE": str(state), "NAMESPACE": "iwp-annotate", "SCHEDULE_NAME": "iwp-annotate-nightly",
            "TEMPLATE_RAYJOB": "iwp-annotate-template", "KEEP_FINISHED": str(keep), "TMPDIR": str(tmp_path),
            "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
        }
        if real:
            env["REAL_KUBECTL"] = real
        proc = subprocess.run(["sh", str(LAUNCHER)], env=env, capture_output=True, text=True, timeout=60)
        return proc, state

    return run, template


def test_launcher_creates_a_valid_unsuspended_copy(launcher, validate, schema_dir):
    run, template = launcher
    proc, state = run("")
    assert proc.returncode == 0, proc.stderr
    assert "started rayjob.ray.io/iwp-annotate-nightly-x7k2p" in proc.stdout
    created = json.loads((state / "created.json").read_text())
    meta = created["metadata"]
    assert meta["generateName"] == "iwp-annotate-nightly-" and "name" not in meta
    assert meta["namespace"] == "iwp-annotate"
    assert meta["labels"]["iwp-annotate/schedule"] == "iwp-annotate-nightly"
    assert "iwp-annotate/role" not in meta["labels"]
    assert not {"uid", "resourceVersion", "finalizers", "creationTimestamp"} & set(meta)
    assert created["spec"]["suspend"] is False
    assert {k: v for k, v in created["spec"].items() if k != "suspend"} == {
        k: v for k, v in template["spec"].items() if k != "suspend"
    }
    created.pop("status", None)  # ignored by the API server on create (status subresource)
    assert validate.validate_object(created, schema_dir) == []
    assert validate.validate_kuberay_rules(created) == []
    assert not (state / "deleted").exists()


def test_launcher_does_not_overlap_runs(launcher):
    run, _ = launcher
    proc, state = run("iwp-annotate-nightly-aaaaa=Complete\niwp-annotate-nightly-bbbbb=Running\n")
    assert proc.returncode == 0, proc.stderr
    assert "still Running" in proc.stdout
    assert not (state / "created.json").exists()
    proc, state = run("iwp-annotate-nightly-ccccc=\n")  # just created, no status yet
    assert "still New" in proc.stdout and not (state / "created.json").exists()


def test_launcher_prunes_old_finished_runs(launcher):
    run, _ = launcher
    runs = "".join(f"iwp-annotate-nightly-{i}={'Failed' if i % 3 == 0 else 'Complete'}\n" for i in range(7))
    proc, state = run(runs, keep=5)
    assert proc.returncode == 0, proc.stderr
    assert (state / "created.json").exists()
    assert (state / "deleted").read_text().split() == ["iwp-annotate-nightly-0", "iwp-annotate-nightly-1"]
    calls = [json.loads(line) for line in (state / "calls").read_text().splitlines()]
    assert all(c[:2] == ["-n", "iwp-annotate"] or c[:2] == ["patch", "--local"] for c in calls)
