#!/usr/bin/env python3
"""What deploy/kubernetes must hold beyond Kubernetes' schemas (kubernetes-validate checks those),
read from a rendered overlay (kustomize_standin.py's output):

- the workload (Deployment or StatefulSet) runs `gatehouse serve` with the ConfigMap's config;
- its probes are /healthz (startup, liveness) and /readyz (readiness) on the admin port, and the
  container ports are the ones `server.listen` and `admin.listen` name;
- the drain fits: terminationGracePeriodSeconds > preStop pause + server.shutdown_grace;
- it runs as non-root with a read-only root file system, no privilege escalation, every
  capability dropped, and no service account token;
- the Service targets the http port, the PodDisruptionBudget selects the workload's pods;
- a NetworkPolicy in the forge's namespace admits only Gatehouse's pods to the forge.

Writes the ConfigMap's gatehouse.toml and policy.cedar into OUTDIR (for `gatehouse check`), and the
workload's GATEHOUSE__* environment as OUTDIR/env (NAME=value lines). Exit 1 with every problem.
Usage: check_kubernetes.py RENDERED.yaml OUTDIR
"""

import os
import re
import sys
import tomllib

import yaml

problems = []


def need(cond, msg):
    if not cond:
        problems.append(msg)


def seconds(d):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", d)
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return n / 1000 if unit == "ms" else n * {"s": 1, "m": 60, "h": 3600}[unit]


def main(rendered, outdir):
    with open(rendered, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    workloads = kinds.get("Deployment", []) + kinds.get("StatefulSet", [])
    need(len(workloads) == 1, f"one Gatehouse workload expected, found {len(workloads)}")
    cms = [c for c in kinds.get("ConfigMap", []) if "gatehouse.toml" in c.get("data", {})]
    need(len(cms) == 1, "one ConfigMap with gatehouse.toml expected")
    if problems:
        return
    w, cm = workloads[0], cms[0]
    cfg = tomllib.loads(cm["data"]["gatehouse.toml"])
    os.makedirs(outdir, exist_ok=True)
    for name in ("gatehouse.toml", "policy.cedar"):
        with open(os.path.join(outdir, name), "w", encoding="utf-8") as f:
            f.write(cm["data"].get(name, ""))

    pod = w["spec"]["template"]["spec"]
    labels = w["spec"]["template"]["metadata"]["labels"]
    need(w["spec"]["selector"]["matchLabels"].items() <= labels.items(), "selector does not match the pod labels")
    c = next(c for c in pod["containers"] if c["name"] == "gatehouse")
    need(c["args"][:1] == ["serve"], f"the container runs {c['args']}, not `gatehouse serve`")
    cfg_path = c["args"][c["args"].index("--config") + 1]
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    need(os.path.dirname(cfg_path) in mounts, f"--config {cfg_path} is not on a mounted volume")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    need(ports.get("http") == int(cfg["server"]["listen"].rsplit(":", 1)[1]), "port http is not server.listen's")
    need(ports.get("admin") == int(cfg["admin"]["listen"].rsplit(":", 1)[1]), "port admin is not admin.listen's")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = c.get(probe, {}).get("httpGet", {})
        need(p.get("path") == path and p.get("port") in ("admin", ports.get("admin")), f"{probe} is not {path} on the admin port")
    grace = seconds(cfg["server"].get("shutdown_grace", "30s"))
    pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    need(pod.get("terminationGracePeriodSeconds", 30) > grace + pause,
         f"terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds', 30)} does not cover preStop {pause}s + shutdown_grace {grace}s")
    sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
    need(psc.get("runAsNonRoot") is True, "pod may run as root")
    need(sc.get("allowPrivilegeEscalation") is False, "privilege escalation allowed")
    need(sc.get("readOnlyRootFilesystem") is True, "root file system writable")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities not all dropped")
    need(pod.get("automountServiceAccountToken") is False, "a service account token is mounted")
    state = os.path.dirname(cfg["audit"]["file"])
    need(state in mounts, f"the audit log's directory {state} is not a volume")

    svc = [s for s in kinds.get("Service", []) if s["metadata"]["name"] == "gatehouse"]
    need(len(svc) == 1 and any(p.get("targetPort") == "http" for p in svc[0]["spec"]["ports"]), "Service gatehouse does not target port http")
    pdbs = kinds.get("PodDisruptionBudget", [])
    need(any(p["spec"]["selector"]["matchLabels"].items() <= labels.items() for p in pdbs), "no PodDisruptionBudget selects the pods")
    forge_ns = [n for n in kinds.get("NetworkPolicy", []) if n["metadata"].get("namespace") != w["metadata"]["namespace"]]
    need(len(forge_ns) == 1, "one NetworkPolicy in the forge's namespace expected")
    if forge_ns:
        spec = forge_ns[0]["spec"]
        need(spec.get("policyTypes") == ["Ingress"], "the forge's policy does not restrict ingress")
        froms = [f for rule in spec.get("ingress", []) for f in rule.get("from", [])]
        need(len(froms) >= 1 and all(
            f.get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()
            and f.get("podSelector", {}).get("matchLabels")
            and f.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == w["metadata"]["namespace"]
            for f in froms), "the forge admits more than Gatehouse's pods")

    # Every pod that mounts a Secret runs with an fsGroup: the files are mode 0400 and the
    # kubelet gives them to that group, or the non-root user cannot read them.
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = d["spec"]["template"]["spec"]
        if any("secret" in v for v in spec.get("volumes", [])):
            need(spec.get("securityContext", {}).get("fsGroup") is not None,
                 f"{d['kind']} {d['metadata']['name']} mounts a Secret without an fsGroup")

    with open(os.path.join(outdir, "env"), "w", encoding="utf-8") as f:
        for e in c.get("env", []):
            if e["name"].startswith("GATEHOUSE__") and "value" in e:
                f.write(f"{e['name']}={e['value']}\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: check_kubernetes.py RENDERED.yaml OUTDIR")
    main(sys.argv[1], sys.argv[2])
    for p in problems:
        print(f"problem: {p}")
    sys.exit(1 if problems else 0)
