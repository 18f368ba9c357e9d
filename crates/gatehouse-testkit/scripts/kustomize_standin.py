#!/usr/bin/env python3
"""A STAND-IN for `kustomize build` (kubectl apply -k), which cannot be installed here: no
registry this machine reaches ships it. It renders the subset of kustomize that deploy/kubernetes
uses, as kustomize documents it (https://kubectl.docs.kubernetes.io/references/kustomize/):

- `resources`: files (every YAML document in them) and directories holding a kustomization.yaml,
  rendered first, in the order listed;
- `labels` with `pairs` (added to every resource's metadata.labels; `includeSelectors` and
  `includeTemplates` false, their defaults);
- `patches` with `path`: strategic-merge patches matched by apiVersion group, kind, name and
  namespace. `$patch: delete` removes the resource; maps merge key by key; the lists the
  Kubernetes API merges by a key (containers, initContainers, volumes and env by `name`,
  volumeMounts by `mountPath`, container ports by `containerPort`) merge entry by entry; other lists
  are replaced.

Anything else in a kustomization.yaml is refused, so that a manifest never relies on a feature
this stand-in would silently skip. Usage: kustomize_standin.py DIR > rendered.yaml
"""

import copy
import os
import sys

import yaml

KNOWN = {"apiVersion", "kind", "resources", "labels", "patches"}
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}


def fail(msg):
    sys.stderr.write(f"kustomize stand-in: {msg}\n")
    sys.exit(2)


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def ident(r):
    group = r.get("apiVersion", "").rsplit("/", 1)[0] if "/" in r.get("apiVersion", "") else ""
    meta = r.get("metadata", {})
    return (group, r.get("kind"), meta.get("name"), meta.get("namespace"))


def merge(base, patch, field=None):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        out = [copy.deepcopy(x) for x in base]
        for p in patch:
            for i, b in enumerate(out):
                if isinstance(b, dict) and isinstance(p, dict) and b.get(key) == p.get(key):
                    out[i] = merge(b, p, None)
                    break
            else:
                out.append(copy.deepcopy(p))
        return out
    return copy.deepcopy(patch)


def build(directory):
    kfile = os.path.join(directory, "kustomization.yaml")
    if not os.path.isfile(kfile):
        fail(f"{directory}: no kustomization.yaml")
    k = load_docs(kfile)[0]
    unknown = set(k) - KNOWN
    if unknown:
        fail(f"{kfile}: not supported by the stand-in: {sorted(unknown)}")
    out = []
    for res in k.get("resources", []):
        p = os.path.normpath(os.path.join(directory, res))
        if os.path.isdir(p):
            out.extend(build(p))
        elif os.path.isfile(p):
            out.extend(load_docs(p))
        else:
            fail(f"{kfile}: resource {res} not found")
    for entry in k.get("patches", []):
        if set(entry) != {"path"}:
            fail(f"{kfile}: only `path` patches are supported, got {entry}")
        for patch in load_docs(os.path.join(directory, entry["path"])):
            delete = patch.pop("$patch", None) == "delete"
            matches = [i for i, r in enumerate(out) if ident(r) == ident(patch)]
            if len(matches) != 1:
                fail(f"{entry['path']}: patch {ident(patch)} matches {len(matches)} resources")
            if delete:
                out.pop(matches[0])
            else:
                out[matches[0]] = merge(out[matches[0]], patch)
    for entry in k.get("labels", []):
        if set(entry) - {"pairs"}:
            fail(f"{kfile}: labels: only `pairs` is supported, got {entry}")
        for r in out:
            r.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    seen = set()
    for r in out:
        if ident(r) in seen:
            fail(f"{directory}: {ident(r)} defined twice")
        seen.add(ident(r))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: kustomize_standin.py DIR")
    yaml.safe_dump_all(build(sys.argv[1]), sys.stdout, sort_keys=False)
