#!/usr/bin/env python3
"""Render a kustomization in this folder tree without kubectl: a small Kustomize subset.

    python k8s/tools/render.py k8s/overlays/small            # YAML stream on stdout
    python k8s/tools/render.py --kubectl k8s/overlays/small  # the same through `kubectl kustomize`

`kubectl kustomize` (Kustomize v5) is the renderer of record, and what `kubectl apply -k`
uses; this module exists so that the tests (tests/k8s) also run where kubectl is missing,
and tests/k8s checks that both give the same objects for every overlay here.

Supported, and nothing more (anything else raises UnsupportedKustomization):
  resources (YAML files and kustomization directories), components (kind: Component),
  configMapGenerator (files, literals; behavior create/replace/merge; options.labels;
  only with disableNameSuffixHash, per generator or in generatorOptions), patches (inline or
  path; JSON6902 lists, or a strategic-merge `$patch: delete` / plain map merge),
  namespace, images, replacements (source/targets with dotted fieldPaths).
Build order as in Kustomize v5: resources, generators, components, then patches,
namespace, images, replacements.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

try:
    _Loader = yaml.CSafeLoader
except AttributeError:  # PyYAML without libyaml
    _Loader = yaml.SafeLoader

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

# Kinds that carry no metadata.namespace (the subset a project like this can meet).
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "APIService",
}

KNOWN_FIELDS = {
    "apiVersion", "kind", "metadata", "resources", "components", "configMapGenerator",
    "generatorOptions", "patches", "namespace", "images", "replacements",
}


class UnsupportedKustomization(Exception):
    """The kustomization uses a feature this renderer does not implement."""


def load_yaml_stream(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no kustomization file in {directory}")


def _group_version(obj: dict) -> tuple[str, str]:
    api = obj.get("apiVersion", "")
    if "/" in api:
        group, version = api.split("/", 1)
        return group, version
    return "", api


def _matches(obj: dict, sel: dict) -> bool:
    group, version = _group_version(obj)
    meta = obj.get("metadata", {})
    checks = {
        "group": group, "version": version, "kind": obj.get("kind"),
        "name": meta.get("name"), "namespace": meta.get("namespace"),
    }
    for key, value in sel.items():
        if key in ("fieldPath", "fieldPaths", "options"):
            continue
        if key not in checks:
            raise UnsupportedKustomization(f"selector field {key!r}")
        if checks[key] != value:
            return False
    return True


# -- field paths (replacements) ------------------------------------------------------------

def _split_field_path(path: str) -> list[str]:
    parts, cur, i = [], "", 0
    while i < len(path):
        c = path[i]
        if c == "\\" and i + 1 < len(path):
            cur += path[i + 1]
            i += 2
            continue
        if c == ".":
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    for p in parts:
        if p.startswith("["):
            raise UnsupportedKustomization(f"list selector in fieldPath {path!r}")
    return parts


def _get_path(obj: Any, parts: list[str]) -> Any:
    for p in parts:
        if isinstance(obj, list):
            obj = obj[int(p)]
        elif isinstance(obj, dict) and p in obj:
            obj = obj[p]
        else:
            raise KeyError(".".join(parts))
    return obj


def _set_path(obj: Any, parts: list[str], value: Any, create: bool) -> None:
    for p in parts[:-1]:
        if isinstance(obj, list):
            obj = obj[int(p)]
        else:
            if p not in obj:
                if not create:
                    raise KeyError(".".join(parts))
                obj[p] = {}
            obj = obj[p]
    last = parts[-1]
    if isinstance(obj, list):
        obj[int(last)] = value
    else:
        if last not in obj and not create:
            raise KeyError(".".join(parts))
        obj[last] = value


# -- transformers ------------------------------------------------------------------------------

def _strategic_merge(base: Any, patch: Any) -> Any:
    """Map merge; lists and scalars replace (what Kustomize does for custom resources)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if key.startswith("$"):
                raise UnsupportedKustomization(f"strategic-merge directive {key!r}")
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _strategic_merge(base.get(key), value)
        return out
    return copy.deepcopy(patch)


def _apply_patches(resources: list[dict], patches: list[dict], root: Path) -> list[dict]:
    import jsonpatch

    for entry in patches:
        unknown = set(entry) - {"patch", "path", "target"}
        if unknown:
            raise UnsupportedKustomization(f"patch fields {sorted(unknown)}")
        text = entry["patch"] if "patch" in entry else (root / entry["path"]).read_text()
        body = yaml.load(text, Loader=_Loader)
        target = entry.get("target")
        if isinstance(body, list):  # JSON6902
            if not target:
                raise ValueError("a JSON6902 patch needs a target")
            selected = [r for r in resources if _matches(r, target)]
            if not selected:
                raise ValueError(f"patch target {target} selects nothing")
            for i, r in enumerate(resources):
                if _matches(r, target):
                    resources[i] = jsonpatch.apply_patch(r, body)
            continue
        if not isinstance(body, dict):
            raise ValueError(f"patch in {root} is neither a JSON6902 list nor a map")
        if target is None:
            group, version = _group_version(body)
            target = {"kind": body["kind"], "name": body["metadata"]["name"]}
            if version:
                target["version"] = version
            if group:
                target["group"] = group
        selected = [r for r in resources if _matches(r, target)]
        if not selected:
            raise ValueError(f"patch target {target} selects nothing")
        if body.get("$patch") == "delete":
            resources = [r for r in resources if not _matches(r, target)]
            continue
        body = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
        meta = dict(body.get("metadata", {}))
        meta.pop("name", None)
        meta.pop("namespace", None)
        if meta:
            body["metadata"] = meta
        else:
            body.pop("metadata", None)
        for i, r in enumerate(resources):
            if _matches(r, target):
                resources[i] = _strategic_merge(r, body)
    return resources


def _set_namespace(resources: list[dict], namespace: str) -> None:
    for r in resources:
        if r.get("kind") in CLUSTER_SCOPED:
            continue
        meta = r.setdefault("metadata", {})
        old = meta.get("namespace")
        meta["namespace"] = namespace
        if r.get("kind") in ("RoleBinding", "ClusterRoleBinding"):
            for subject in r.get("subjects", []):
                if subject.get("kind") == "ServiceAccount" and subject.get("namespace") in (None, old):
                    subject["namespace"] = namespace


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image, tag = image.rsplit(":", 1)
    return image, tag, digest


def _set_images(node: Any, images: list[dict]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if isinstance(container, dict) and isinstance(container.get("image"), str):
                        container["image"] = _new_image(container["image"], images)
            _set_images(value, images)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, images)


def _new_image(image: str, images: list[dict]) -> str:
    name, tag, digest = _split_image(image)
    for rule in images:
        unknown = set(rule) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise UnsupportedKustomization(f"images fields {sorted(unknown)}")
        if rule["name"] != name:
            continue
        name = rule.get("newName", name)
        if "newTag" in rule:
            tag, digest = str(rule["newTag"]), None
        if "digest" in rule:
            tag, digest = None, rule["digest"]
        break
    out = name
    if tag:
        out += ":" + tag
    if digest:
        out += "@" + digest
    return out


def _replacements(resources: list[dict], replacements: list[dict]) -> None:
    for rep in replacements:
        if "path" in rep:
            raise UnsupportedKustomization("replacements from a file")
        src_sel = rep["source"]
        sources = [r for r in resources if _matches(r, src_sel)]
        if len(sources) != 1:
            raise ValueError(f"replacement source {src_sel} selects {len(sources)} objects")
        value = _get_path(sources[0], _split_field_path(src_sel.get("fieldPath", "metadata.name")))
        for target in rep["targets"]:
            if set(target) - {"select", "fieldPaths", "options"}:
                raise UnsupportedKustomization(f"replacement target fields {sorted(target)}")
            create = bool(target.get("options", {}).get("create", False))
            for r in resources:
                if not _matches(r, target["select"]):
                    continue
                for fp in target["fieldPaths"]:
                    _set_path(r, _split_field_path(fp), copy.deepcopy(value), create)


# -- generators ------------------------------------------------------------------------------

def _generate_configmaps(resources: list[dict], kust: dict, root: Path) -> None:
    global_opts = kust.get("generatorOptions", {})
    for gen in kust.get("configMapGenerator", []):
        unknown = set(gen) - {"name", "namespace", "behavior", "files", "literals", "options"}
        if unknown:
            raise UnsupportedKustomization(f"configMapGenerator fields {sorted(unknown)}")
        opts = {**global_opts, **gen.get("options", {})}
        if not opts.get("disableNameSuffixHash"):
            raise UnsupportedKustomization(f"ConfigMap {gen['name']}: name suffix hashes are not implemented")
        data: dict[str, str] = {}
        for item in gen.get("files", []):
            key, _, path = item.partition("=") if "=" in item else (Path(item).name, "", item)
            data[key] = (root / path).read_text()
        for item in gen.get("literals", []):
            key, _, value = item.partition("=")
            data[key] = value
        labels = {**global_opts.get("labels", {}), **gen.get("options", {}).get("labels", {})}
        behavior = gen.get("behavior", "create")
        existing = [r for r in resources if r.get("kind") == "ConfigMap" and r["metadata"]["name"] == gen["name"]]
        if behavior == "create":
            if existing:
                raise ValueError(f"ConfigMap {gen['name']} already exists; use behavior: replace or merge")
            cm: dict = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}}
            if labels:
                cm["metadata"]["labels"] = labels
            if gen.get("namespace"):
                cm["metadata"]["namespace"] = gen["namespace"]
            cm["data"] = data
            resources.append(cm)
        elif behavior in ("replace", "merge"):
            if len(existing) != 1:
                raise ValueError(f"ConfigMap {gen['name']}: behavior {behavior} needs exactly one to exist")
            cm = existing[0]
            cm["data"] = data if behavior == "replace" else {**cm.get("data", {}), **data}
            if labels:
                cm["metadata"]["labels"] = {**cm["metadata"].get("labels", {}), **labels}
        else:
            raise UnsupportedKustomization(f"configMapGenerator behavior {behavior!r}")


# -- build -------------------------------------------------------------------------------------

def _load_resource(path: Path) -> list[dict]:
    if path.is_dir():
        return build(path)
    return load_yaml_stream(path.read_text())


def _apply(resources: list[dict], directory: Path, component: bool) -> list[dict]:
    kust = yaml.load(_kustomization_file(directory).read_text(), Loader=_Loader) or {}
    unknown = set(kust) - KNOWN_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"{directory}: fields {sorted(unknown)}")
    if component != (kust.get("kind") == "Component"):
        raise ValueError(f"{directory}: kind {kust.get('kind')!r} used as a {'component' if component else 'kustomization'}")
    for entry in kust.get("resources", []):
        resources.extend(_load_resource(directory / entry))
    _generate_configmaps(resources, kust, directory)
    for entry in kust.get("components", []):
        resources = _apply(resources, directory / entry, component=True)
    resources = _apply_patches(resources, kust.get("patches", []), directory)
    if "namespace" in kust:
        _set_namespace(resources, kust["namespace"])
    if kust.get("images"):
        _set_images(resources, kust["images"])
    _replacements(resources, kust.get("replacements", []))
    return resources


def build(directory: str | Path) -> list[dict]:
    """The objects `kustomize build DIRECTORY` would print (for the supported subset)."""
    return _apply([], Path(directory), component=False)


def build_with_kubectl(directory: str | Path, kubectl: str = "kubectl") -> list[dict]:
    out = subprocess.run([kubectl, "kustomize", str(directory)], check=True, capture_output=True, text=True)
    return load_yaml_stream(out.stdout)


def object_id(obj: dict) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


def main(argv: list[str]) -> int:
    use_kubectl = "--kubectl" in argv
    dirs = [a for a in argv if a != "--kubectl"]
    if len(dirs) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    objs = build_with_kubectl(dirs[0]) if use_kubectl else build(dirs[0])
    yaml.safe_dump_all(objs, sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
