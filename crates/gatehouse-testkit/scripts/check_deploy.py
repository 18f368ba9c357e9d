#!/usr/bin/env python3
"""Checks deploy/istio the way Istio would read it, and prints each embedded gatehouse.toml.

kubernetes-validate knows Kubernetes' own kinds only; Istio's CRDs cannot be installed here.
This is a stand-in for Istio's validation, written from Istio's API reference
(istio.io/latest/docs/reference/config/security/ and .../istio.mesh.v1alpha1/): every field
must be one Istio defines (strict, as `istioctl validate` is), enums must hold Istio's values,
and the pieces must fit together (a CUSTOM policy names a provider the mesh defines, the
provider points at Gatehouse's Service and port, the HTTP provider's path prefix is
Gatehouse's).

Usage: check_deploy.py DIR OUT_DIR   (writes OUT_DIR/<configmap>-<key>.toml; exit 1 on a finding)
"""
import pathlib
import sys

import yaml

SELECTOR = {"matchLabels"}
AUTHZ_SPEC = {"selector", "targetRef", "targetRefs", "rules", "action", "provider"}
ACTIONS = {"ALLOW", "DENY", "AUDIT", "CUSTOM"}
RULE = {"from", "to", "when"}
SOURCE = {"principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
          "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts", "ipBlocks",
          "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"}
OPERATION = {"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths",
             "notPaths"}
CONDITION = {"key", "values", "notValues"}
REQAUTHN_SPEC = {"selector", "targetRef", "targetRefs", "jwtRules"}
JWT_RULE = {"issuer", "audiences", "jwksUri", "jwks", "fromHeaders", "fromParams",
            "outputPayloadToHeader", "fromCookies", "forwardOriginalToken", "outputClaimToHeaders",
            "timeout", "spaceDelimitedClaims"}
PEERAUTHN_SPEC = {"selector", "mtls", "portLevelMtls"}
MTLS_MODES = {"UNSET", "DISABLE", "PERMISSIVE", "STRICT"}
GRPC_PROVIDER = {"service", "port", "timeout", "failOpen", "clearRouteCache", "statusOnError",
                 "includeRequestBodyInCheck"}
HTTP_PROVIDER = {"service", "port", "timeout", "pathPrefix", "failOpen", "clearRouteCache",
                 "statusOnError", "includeHeadersInCheck", "includeRequestHeadersInCheck",
                 "includeAdditionalHeadersInCheck", "includeRequestBodyInCheck",
                 "headersToUpstreamOnAllow", "headersToDownstreamOnDeny",
                 "headersToDownstreamOnAllow"}
BODY = {"maxRequestBytes", "allowPartialMessage", "packAsBytes"}

findings = []


def strict(where, obj, allowed):
    if not isinstance(obj, dict):
        findings.append(f"{where}: not a mapping")
        return {}
    for k in obj:
        if k not in allowed:
            findings.append(f"{where}: unknown field {k!r} (Istio has {sorted(allowed)})")
    return obj


def main():
    root = pathlib.Path(sys.argv[1])
    out = pathlib.Path(sys.argv[2])
    docs = []
    for f in sorted(root.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs.append((f.name, d))
    providers = {}
    services = {}
    custom = []
    for name, d in docs:
        kind, api = d.get("kind"), d.get("apiVersion", "")
        meta = d.get("metadata", {})
        where = f"{name}: {kind} {meta.get('namespace', '')}/{meta.get('name', '')}"
        if kind == "ConfigMap" and meta.get("name") == "istio":
            mesh = yaml.safe_load(d["data"]["mesh"])
            strict(f"{where} mesh", mesh, {"extensionProviders"})
            for p in mesh.get("extensionProviders", []):
                strict(f"{where} provider", p, {"name", "envoyExtAuthzGrpc", "envoyExtAuthzHttp"})
                if "envoyExtAuthzGrpc" in p:
                    g = strict(f"{where} {p['name']}", p["envoyExtAuthzGrpc"], GRPC_PROVIDER)
                    strict(f"{where} {p['name']} body", g.get("includeRequestBodyInCheck", {}), BODY)
                    if not g.get("includeRequestBodyInCheck", {}).get("packAsBytes"):
                        findings.append(f"{where} {p['name']}: packAsBytes must be true (a push's body is binary)")
                    providers[p["name"]] = ("grpc", g)
                if "envoyExtAuthzHttp" in p:
                    h = strict(f"{where} {p['name']}", p["envoyExtAuthzHttp"], HTTP_PROVIDER)
                    strict(f"{where} {p['name']} body", h.get("includeRequestBodyInCheck", {}), BODY)
                    if h.get("pathPrefix") != "/.gatehouse/ext_authz":
                        findings.append(f"{where} {p['name']}: pathPrefix must be /.gatehouse/ext_authz")
                    if "authorization" not in [x.lower() for x in h.get("includeRequestHeadersInCheck", [])]:
                        findings.append(f"{where} {p['name']}: the credential is not sent to Gatehouse")
                    providers[p["name"]] = ("http", h)
        elif kind == "ConfigMap":
            for key, value in d.get("data", {}).items():
                if key.endswith(".toml"):
                    (out / f"{meta['name']}-{key}").write_text(value)
                if key.endswith(".cedar"):
                    (out / f"{meta['name']}-{key}").write_text(value)
        elif kind == "Service":
            for port in d["spec"].get("ports", []):
                services[(meta["name"], meta.get("namespace"), port["port"])] = port.get("appProtocol")
        elif api.startswith("security.istio.io/"):
            if api != "security.istio.io/v1":
                findings.append(f"{where}: apiVersion {api}: use security.istio.io/v1")
            spec = d.get("spec", {})
            if kind == "AuthorizationPolicy":
                strict(where, spec, AUTHZ_SPEC)
                strict(f"{where} selector", spec.get("selector", {}), SELECTOR)
                action = spec.get("action", "ALLOW")
                if action not in ACTIONS:
                    findings.append(f"{where}: action {action!r}")
                if action == "CUSTOM":
                    prov = strict(f"{where} provider", spec.get("provider", {}), {"name"})
                    if not prov.get("name"):
                        findings.append(f"{where}: CUSTOM needs provider.name")
                    custom.append((where, prov.get("name")))
                elif "provider" in spec:
                    findings.append(f"{where}: provider is for CUSTOM only")
                for r in spec.get("rules", []):
                    strict(f"{where} rule", r, RULE)
                    for f in r.get("from", []):
                        strict(f"{where} from", f, {"source"})
                        strict(f"{where} source", f.get("source", {}), SOURCE)
                    for t in r.get("to", []):
                        strict(f"{where} to", t, {"operation"})
                        op = strict(f"{where} operation", t.get("operation", {}), OPERATION)
                        for p in op.get("ports", []):
                            if not isinstance(p, str):
                                findings.append(f"{where}: ports are strings in Istio ({p!r})")
                    for c in r.get("when", []):
                        strict(f"{where} when", c, CONDITION)
            elif kind == "RequestAuthentication":
                strict(where, spec, REQAUTHN_SPEC)
                for j in spec.get("jwtRules", []):
                    strict(f"{where} jwtRule", j, JWT_RULE)
                    if not j.get("forwardOriginalToken"):
                        findings.append(f"{where}: forwardOriginalToken must be true, or Gatehouse never sees the token")
            elif kind == "PeerAuthentication":
                strict(where, spec, PEERAUTHN_SPEC)
                mode = spec.get("mtls", {}).get("mode", "UNSET")
                if mode not in MTLS_MODES:
                    findings.append(f"{where}: mtls.mode {mode!r}")
            else:
                findings.append(f"{where}: not an Istio security kind this checker knows")
    for where, name in custom:
        if name not in providers:
            findings.append(f"{where}: provider {name!r} is not in the mesh's extensionProviders")
    for name, (kind, p) in providers.items():
        svc = p.get("service", "")
        parts = svc.split(".")
        key = (parts[0], parts[1] if len(parts) > 1 else None, p.get("port"))
        if key not in services:
            findings.append(f"provider {name}: no Service port {svc}:{p.get('port')} in {root}")
        elif kind == "grpc" and services[key] != "grpc":
            findings.append(f"provider {name}: the Service port is not appProtocol grpc")
    for f in findings:
        print(f"FINDING {f}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
