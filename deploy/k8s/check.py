#!/usr/bin/env python3
"""Checks Kubernetes manifests without a cluster: every object against the shape of its API
(apiVersion and kind known; required fields present; field types; no unknown field where the
shape below lists the fields, as the API server's strict decoding refuses them), then what the
objects must agree on: selectors that match the pod labels, ports and probes that name container
ports, volumes that exist, an autoscaler and a disruption budget that target the Deployment, and
a termination grace that covers preStop plus the server's shutdown_grace_secs.

The shapes are the parts of the Kubernetes 1.29 OpenAPI (api/openapi-spec/swagger.json) these
manifests use, written out by hand. Usage: check.py FILE.yaml...  (exit 1 and a list of problems)
"""
import re
import sys

import yaml

S, I, B, Q = "string", "integer", "boolean", "quantity"  # quantity: string or number
ANY = "any"


def obj(fields, required=(), strict=True):
    return {"fields": fields, "required": set(required), "strict": strict}


def arr(item):
    return {"array": item}


def smap(value=S):
    return {"map": value}


META = obj({"name": S, "namespace": S, "labels": smap(), "annotations": smap()}, ["name"])
SELECTOR = obj({"matchLabels": smap(), "matchExpressions": arr(ANY)})
PORT_REF = {"oneof": [I, S]}
HTTP_GET = obj({"path": S, "port": PORT_REF, "scheme": S, "host": S, "httpHeaders": arr(ANY)}, ["port"])
EXEC = obj({"command": arr(S)}, ["command"])
PROBE = obj(
    {"httpGet": HTTP_GET, "exec": EXEC, "tcpSocket": obj({"port": PORT_REF}, ["port"]),
     "initialDelaySeconds": I, "periodSeconds": I, "timeoutSeconds": I, "failureThreshold": I,
     "successThreshold": I, "terminationGracePeriodSeconds": I},
)
HANDLER = obj({"exec": EXEC, "httpGet": HTTP_GET, "sleep": obj({"seconds": I}, ["seconds"])})
ENV = obj(
    {"name": S, "value": S,
     "valueFrom": obj({"secretKeyRef": obj({"name": S, "key": S, "optional": B}, ["key"]),
                       "configMapKeyRef": obj({"name": S, "key": S, "optional": B}, ["key"]),
                       "fieldRef": obj({"fieldPath": S, "apiVersion": S}, ["fieldPath"])})},
    ["name"],
)
CONTAINER = obj(
    {"name": S, "image": S, "args": arr(S), "command": arr(S), "env": arr(ENV),
     "ports": arr(obj({"name": S, "containerPort": I, "protocol": S, "hostPort": I}, ["containerPort"])),
     "resources": obj({"requests": smap(Q), "limits": smap(Q)}),
     "startupProbe": PROBE, "readinessProbe": PROBE, "livenessProbe": PROBE,
     "lifecycle": obj({"preStop": HANDLER, "postStart": HANDLER}),
     "volumeMounts": arr(obj({"name": S, "mountPath": S, "readOnly": B, "subPath": S}, ["name", "mountPath"])),
     "imagePullPolicy": S, "securityContext": ANY, "workingDir": S},
    ["name"],
)
POD_SPEC = obj(
    {"containers": arr(CONTAINER), "initContainers": arr(CONTAINER), "terminationGracePeriodSeconds": I,
     "volumes": arr(obj({"name": S, "configMap": obj({"name": S, "items": arr(ANY), "defaultMode": I}),
                         "secret": obj({"secretName": S}), "emptyDir": ANY}, ["name"])),
     "serviceAccountName": S, "securityContext": ANY, "nodeSelector": smap(), "affinity": ANY,
     "tolerations": arr(ANY), "topologySpreadConstraints": arr(ANY)},
    ["containers"],
)
SHAPES = {
    ("v1", "ConfigMap"): obj({"apiVersion": S, "kind": S, "metadata": META, "data": smap()}, ["metadata"]),
    ("v1", "Service"): obj(
        {"apiVersion": S, "kind": S, "metadata": META,
         "spec": obj({"type": S, "externalName": S, "selector": smap(), "clusterIP": S,
                      "ports": arr(obj({"name": S, "port": I, "targetPort": PORT_REF, "protocol": S,
                                        "nodePort": I}, ["port"]))})},
        ["metadata", "spec"],
    ),
    ("apps/v1", "Deployment"): obj(
        {"apiVersion": S, "kind": S, "metadata": META,
         "spec": obj({"replicas": I, "selector": SELECTOR, "minReadySeconds": I, "revisionHistoryLimit": I,
                      "strategy": obj({"type": S, "rollingUpdate": obj({"maxUnavailable": PORT_REF,
                                                                        "maxSurge": PORT_REF})}),
                      "template": obj({"metadata": obj({"labels": smap(), "annotations": smap()}),
                                       "spec": POD_SPEC}, ["spec"])},
                     ["selector", "template"])},
        ["metadata", "spec"],
    ),
    ("networking.k8s.io/v1", "Ingress"): obj(
        {"apiVersion": S, "kind": S, "metadata": META,
         "spec": obj({"ingressClassName": S, "tls": arr(ANY),
                      "rules": arr(obj({"host": S, "http": obj({"paths": arr(obj(
                          {"path": S, "pathType": S,
                           "backend": obj({"service": obj({"name": S, "port": obj({"name": S, "number": I})},
                                                          ["name"])}, ["service"])},
                          ["pathType", "backend"]))}, ["paths"])}))})},
        ["metadata", "spec"],
    ),
    ("policy/v1", "PodDisruptionBudget"): obj(
        {"apiVersion": S, "kind": S, "metadata": META,
         "spec": obj({"minAvailable": PORT_REF, "maxUnavailable": PORT_REF, "selector": SELECTOR})},
        ["metadata", "spec"],
    ),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): obj(
        {"apiVersion": S, "kind": S, "metadata": META,
         "spec": obj({"scaleTargetRef": obj({"apiVersion": S, "kind": S, "name": S}, ["kind", "name"]),
                      "minReplicas": I, "maxReplicas": I,
                      "metrics": arr(obj({"type": S, "pods": obj(
                          {"metric": obj({"name": S, "selector": SELECTOR}, ["name"]),
                           "target": obj({"type": S, "averageValue": Q, "value": Q, "averageUtilization": I},
                                         ["type"])}, ["metric", "target"]),
                          "resource": ANY, "external": ANY, "object": ANY}, ["type"])),
                      "behavior": ANY},
                     ["scaleTargetRef", "maxReplicas"])},
        ["metadata", "spec"],
    ),
}


def check(value, shape, path, problems):
    if shape == ANY:
        return
    if isinstance(shape, str):
        ok = {S: isinstance(value, str), I: isinstance(value, int) and not isinstance(value, bool),
              B: isinstance(value, bool),
              Q: isinstance(value, (str, int, float)) and not isinstance(value, bool)}[shape]
        if shape == Q and isinstance(value, str) and not re.fullmatch(r"[0-9.]+([numkMGTPE]i?|[eE][0-9]+)?", value):
            ok = False
        if not ok:
            problems.append(f"{path}: expected {shape}, found {value!r}")
        return
    if "oneof" in shape:
        if not any(not checked(value, s) for s in shape["oneof"]):
            problems.append(f"{path}: expected one of {shape['oneof']}, found {value!r}")
        return
    if "array" in shape:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return
        for i, v in enumerate(value):
            check(v, shape["array"], f"{path}[{i}]", problems)
        return
    if "map" in shape:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a map")
            return
        for k, v in value.items():
            check(v, shape["map"], f"{path}.{k}", problems)
        return
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object")
        return
    for r in shape["required"]:
        if r not in value:
            problems.append(f"{path}: missing required field {r}")
    for k, v in value.items():
        if k in shape["fields"]:
            check(v, shape["fields"][k], f"{path}.{k}", problems)
        elif shape["strict"]:
            problems.append(f"{path}: unknown field {k}")


def checked(value, shape):
    p = []
    check(value, shape, "", p)
    return p


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def agree(docs, problems):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    configs = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    deployments = by_kind.get("Deployment", [])
    if not deployments:
        problems.append("no Deployment")
    for d in deployments:
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]
        labels = pod.get("metadata", {}).get("labels", {})
        if not matches(d["spec"]["selector"].get("matchLabels"), labels):
            problems.append(f"Deployment {name}: the selector does not match the pod labels")
        spec = pod["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v and v["configMap"].get("name") not in configs:
                problems.append(f"Deployment {name}: volume {v['name']} names a missing ConfigMap")
        for c in spec["containers"]:
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            probes = {k: c.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")}
            for k, p in probes.items():
                if not p:
                    problems.append(f"Deployment {name}: container {c['name']} has no {k}")
                    continue
                handlers = [h for h in ("httpGet", "exec", "tcpSocket") if h in p]
                if len(handlers) != 1:
                    problems.append(f"Deployment {name}: {k} needs exactly one handler")
                elif "httpGet" in p and p["httpGet"]["port"] not in ports:
                    problems.append(f"Deployment {name}: {k} names port {p['httpGet']['port']}, not a container port")
            want = {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}
            for k, path in want.items():
                got = (probes.get(k) or {}).get("httpGet", {}).get("path")
                if got != path:
                    problems.append(f"Deployment {name}: {k} must probe {path}, probes {got}")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    problems.append(f"Deployment {name}: mount {m['name']} has no volume")
            # The grace must cover preStop and the server's own drain.
            pre = c.get("lifecycle", {}).get("preStop", {})
            cmd = pre.get("exec", {}).get("command", [])
            pre_s = int(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else pre.get("sleep", {}).get("seconds", 0)
            grace = 10
            for cfg in configs.values():
                m = re.search(r"^shutdown_grace_secs\s*=\s*(\d+)", cfg.get("config.toml", ""), re.M)
                grace = int(m.group(1)) if m else grace
            for e in c.get("env", []):
                if e["name"] == "GHOSTLINE_SHUTDOWN_GRACE_SECS":
                    grace = int(e.get("value", grace))
            total = spec.get("terminationGracePeriodSeconds", 30)
            if total < pre_s + grace + 1:
                problems.append(f"Deployment {name}: terminationGracePeriodSeconds {total} does not cover "
                                f"preStop {pre_s}s + shutdown_grace_secs {grace}s")
        for s in by_kind.get("Service", []):
            sel = s["spec"].get("selector")
            if sel is not None and not matches(sel, labels):
                problems.append(f"Service {s['metadata']['name']}: the selector matches no pod of {name}")
        for p in by_kind.get("PodDisruptionBudget", []):
            if not matches(p["spec"].get("selector", {}).get("matchLabels"), labels):
                problems.append(f"PodDisruptionBudget {p['metadata']['name']}: the selector matches no pod")
            if ("minAvailable" in p["spec"]) == ("maxUnavailable" in p["spec"]):
                problems.append(f"PodDisruptionBudget {p['metadata']['name']}: give one of minAvailable, maxUnavailable")
    names = {d["metadata"]["name"] for d in deployments}
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        ref = h["spec"]["scaleTargetRef"]
        if ref["kind"] != "Deployment" or ref["name"] not in names:
            problems.append(f"HorizontalPodAutoscaler {h['metadata']['name']}: targets no Deployment here")
        if h["spec"].get("minReplicas", 1) > h["spec"]["maxReplicas"]:
            problems.append(f"HorizontalPodAutoscaler {h['metadata']['name']}: minReplicas above maxReplicas")
    services = {s["metadata"]["name"] for s in by_kind.get("Service", [])}
    for ing in by_kind.get("Ingress", []):
        for r in ing["spec"].get("rules", []):
            for p in r.get("http", {}).get("paths", []):
                if p["backend"]["service"]["name"] not in services:
                    problems.append(f"Ingress {ing['metadata']['name']}: backend names a missing Service")


def main(paths):
    problems, docs = [], []
    for path in paths:
        with open(path) as f:
            for i, d in enumerate(yaml.safe_load_all(f)):
                if d is None:
                    continue
                where = f"{path}#{i} {d.get('kind')}"
                shape = SHAPES.get((d.get("apiVersion"), d.get("kind")))
                if shape is None:
                    problems.append(f"{where}: unknown apiVersion/kind {d.get('apiVersion')}/{d.get('kind')}")
                    continue
                before = len(problems)
                check(d, shape, where, problems)
                if len(problems) == before:
                    docs.append(d)
    agree(docs, problems)
    for p in problems:
        print(p)
    if not problems:
        kinds = sorted({d["kind"] for d in docs})
        print(f"ok: {len(docs)} objects ({', '.join(kinds)})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
