#!/usr/bin/env python3
"""Renders the kustomizations under deploy/k8s/ and checks what kustomize and the schemas cannot.

Neither kustomize nor kubectl is packaged for Debian or on PyPI, so this renders the subset of
kustomize that deploy/k8s/ uses, and refuses anything else (so `kubectl apply -k` and this never
disagree silently):

  resources (files and directories with a kustomization.yaml), namespace, labels (pairs, without
  selectors), images (newName, newTag, digest), patches (path, with a target of kind and name,
  strategic merge: maps merged, lists of maps merged by `name`, other lists replaced).

  render.py render DIR OUT.yaml      render the kustomization in DIR into one multi-document file
  render.py check OUT.yaml...        structural checks of rendered files (below); exit 1 on a finding
  render.py rules OUT.yaml DIR       write each PrometheusRule's spec into DIR (for promtool)
  render.py sync-rules               regenerate base/monitoring/prometheusrule-*.yaml from
                                     deploy/prometheus/*-alerts.yml
  render.py stale-rules              exit 1 when those generated files differ from the rules

Checks: every object has a namespace (but Namespace); every workload's pod runs as non-root with
resources, a read-only root filesystem and probes on named ports it declares (Deployments);
Deployments' grace periods; the CRDs this repository uses (KEDA ScaledObject and
TriggerAuthentication, ServiceMonitor, PrometheusRule) have the fields their operators need, and
point at objects that exist in the same render (a Deployment, a Service and its port); a
ScaledObject's maxReplicaCount equals its backbone.io/input-topic-partitions annotation.
"""

import copy
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
RULE_SOURCES = {
    "crm-sync": REPO / "deploy/prometheus/crm-sync-alerts.yml",
    "gift-certificates": REPO / "deploy/prometheus/gift-certificates-alerts.yml",
}


class RenderError(Exception):
    pass


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def strategic_merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            for i, existing in enumerate(out):
                if existing["name"] == item["name"]:
                    out[i] = strategic_merge(existing, item)
                    break
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def pod_specs(obj):
    kind = obj.get("kind")
    spec = obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [spec.get("template", {}).get("spec", {})]
    if kind == "CronJob":
        return [spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})]
    return []


def set_image(container, images):
    image = container.get("image", "")
    name = image.split("@")[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name.rsplit(":", 1)[0]
    for rule in images:
        if rule["name"] == name:
            new = rule.get("newName", name)
            if "digest" in rule:
                container["image"] = f"{new}@{rule['digest']}"
            elif "newTag" in rule:
                container["image"] = f"{new}:{rule['newTag']}"
            else:
                container["image"] = new


def add_labels(obj, pairs):
    meta = obj.setdefault("metadata", {})
    meta.setdefault("labels", {}).update(pairs)
    kind = obj.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        tmeta = obj["spec"].setdefault("template", {}).setdefault("metadata", {})
        tmeta.setdefault("labels", {}).update(pairs)


def render(directory):
    directory = pathlib.Path(directory)
    kfile = directory / "kustomization.yaml"
    if not kfile.exists():
        raise RenderError(f"{directory}: no kustomization.yaml")
    (k,) = load_docs(kfile)
    unknown = set(k) - KUSTOMIZATION_KEYS
    if unknown:
        raise RenderError(f"{kfile}: keys this renderer does not support: {sorted(unknown)}")
    objs = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        if path.is_dir():
            objs.extend(render(path))
        elif path.is_file():
            objs.extend(load_docs(path))
        else:
            raise RenderError(f"{kfile}: resource {res} does not exist")
    for p in k.get("patches", []):
        if set(p) - {"path", "target"} or "path" not in p:
            raise RenderError(f"{kfile}: a patch needs path (and optionally target), nothing else")
        (patch,) = load_docs(directory / p["path"])
        target = p.get("target") or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
        if set(target) - {"kind", "name"}:
            raise RenderError(f"{kfile}: patch targets select by kind and name only")
        hits = [
            i
            for i, o in enumerate(objs)
            if o.get("kind") == target["kind"] and o["metadata"]["name"] == target["name"]
        ]
        if len(hits) != 1:
            raise RenderError(f"{kfile}: patch {p['path']} matches {len(hits)} objects, not 1")
        objs[hits[0]] = strategic_merge(objs[hits[0]], patch)
    for group in k.get("labels", []):
        if set(group) - {"pairs", "includeSelectors", "includeTemplates"} or group.get("includeSelectors"):
            raise RenderError(f"{kfile}: labels support pairs without selectors only")
        for o in objs:
            add_labels(o, group["pairs"])
    images = k.get("images", [])
    for o in objs:
        for pod in pod_specs(o):
            for c in pod.get("initContainers", []) + pod.get("containers", []):
                set_image(c, images)
    if "namespace" in k:
        for o in objs:
            if o.get("kind") not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = k["namespace"]
    return objs


def check(objs):
    findings = []
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o

    def where(o):
        return f"{o['kind']}/{o['metadata']['name']}"

    for o in objs:
        if o["kind"] not in CLUSTER_SCOPED and not o["metadata"].get("namespace"):
            findings.append(f"{where(o)}: no namespace")
        for pod in pod_specs(o):
            sc = pod.get("securityContext", {})
            if not sc.get("runAsNonRoot"):
                findings.append(f"{where(o)}: pod does not set runAsNonRoot")
            if pod.get("automountServiceAccountToken") is not False:
                findings.append(f"{where(o)}: service account token mounted")
            for c in pod.get("containers", []):
                csc = c.get("securityContext", {})
                if not csc.get("readOnlyRootFilesystem") or csc.get("allowPrivilegeEscalation") is not False:
                    findings.append(f"{where(o)}/{c['name']}: writable root or privilege escalation")
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    for r in ("cpu", "memory"):
                        if r not in res.get(part, {}):
                            findings.append(f"{where(o)}/{c['name']}: no {part}.{r}")
                if ":" not in c.get("image", "").rsplit("/", 1)[-1] and "@" not in c.get("image", ""):
                    findings.append(f"{where(o)}/{c['name']}: image {c.get('image')} has no tag")
                if o["kind"] == "Deployment":
                    ports = {p.get("name") for p in c.get("ports", [])}
                    for probe in ("livenessProbe", "readinessProbe"):
                        http = c.get(probe, {}).get("httpGet")
                        if not http:
                            findings.append(f"{where(o)}/{c['name']}: no {probe}")
                        elif http["port"] not in ports:
                            findings.append(f"{where(o)}/{c['name']}: {probe} on undeclared port {http['port']}")
        if o["kind"] == "Deployment":
            grace = o["spec"]["template"]["spec"].get("terminationGracePeriodSeconds")
            if grace is None:
                findings.append(f"{where(o)}: no terminationGracePeriodSeconds")
            if o["metadata"]["name"] not in {
                pdb["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name")
                for pdb in by_kind.get("PodDisruptionBudget", {}).values()
            }:
                findings.append(f"{where(o)}: no PodDisruptionBudget")
        if o["kind"] == "ScaledObject":
            spec = o.get("spec", {})
            ref = spec.get("scaleTargetRef", {})
            if ref.get("name") not in by_kind.get(ref.get("kind", "Deployment"), {}):
                findings.append(f"{where(o)}: scaleTargetRef {ref.get('name')} is not in the render")
            partitions = o["metadata"].get("annotations", {}).get("backbone.io/input-topic-partitions")
            if partitions is None or spec.get("maxReplicaCount") != int(partitions):
                findings.append(f"{where(o)}: maxReplicaCount {spec.get('maxReplicaCount')} is not the partition count {partitions}")
            if not 1 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 0):
                findings.append(f"{where(o)}: needs 1 <= minReplicaCount <= maxReplicaCount")
            triggers = spec.get("triggers", [])
            if not triggers:
                findings.append(f"{where(o)}: no triggers")
            for t in triggers:
                if t.get("type") != "kafka":
                    findings.append(f"{where(o)}: trigger {t.get('type')} is not kafka")
                    continue
                md = t.get("metadata", {})
                for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                    if not isinstance(md.get(key), str) or not md.get(key):
                        findings.append(f"{where(o)}: kafka trigger needs {key} as a non-empty string")
                auth = t.get("authenticationRef", {}).get("name")
                if auth and auth not in by_kind.get("TriggerAuthentication", {}):
                    findings.append(f"{where(o)}: TriggerAuthentication {auth} is not in the render")
        if o["kind"] == "TriggerAuthentication":
            for ref in o.get("spec", {}).get("secretTargetRef", []):
                if not {"parameter", "name", "key"} <= set(ref):
                    findings.append(f"{where(o)}: secretTargetRef needs parameter, name and key")
        if o["kind"] == "ServiceMonitor":
            sel = o.get("spec", {}).get("selector", {}).get("matchLabels", {})
            services = [
                s
                for s in by_kind.get("Service", {}).values()
                if sel and all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())
            ]
            if not services:
                findings.append(f"{where(o)}: selects no Service of the render")
            for ep in o.get("spec", {}).get("endpoints", []):
                if not any(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]} for s in services):
                    findings.append(f"{where(o)}: endpoint port {ep.get('port')} is not a port of the selected Service")
        if o["kind"] == "PrometheusRule":
            groups = o.get("spec", {}).get("groups", [])
            if not groups:
                findings.append(f"{where(o)}: no rule groups")
            for g in groups:
                if not g.get("name") or not g.get("rules"):
                    findings.append(f"{where(o)}: a group needs a name and rules")
                for r in g.get("rules", []):
                    if ("alert" in r) == ("record" in r) or not r.get("expr"):
                        findings.append(f"{where(o)}: a rule needs alert or record, and expr")
    return findings


def rule_object(service):
    source = RULE_SOURCES[service]
    spec = yaml.safe_load(source.read_text(encoding="utf-8"))
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": service, "labels": {"app.kubernetes.io/name": service}},
        "spec": spec,
    }
    header = (
        f"# Generated from {source.relative_to(REPO)} by `deploy/k8s/render.py sync-rules`;\n"
        "# edit the rules there (deploy/check-deploy.sh fails when this file is stale).\n"
    )
    return header + yaml.safe_dump(obj, sort_keys=False, width=100, allow_unicode=True)


def rule_path(service):
    return HERE / "base/monitoring" / f"prometheusrule-{service}.yaml"


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    try:
        if cmd == "render" and len(argv) == 4:
            objs = render(argv[2])
            with open(argv[3], "w", encoding="utf-8") as f:
                yaml.safe_dump_all(objs, f, sort_keys=False, width=100)
            print(f"rendered {argv[2]}: {len(objs)} objects")
            return 0
        if cmd == "check" and len(argv) >= 3:
            bad = 0
            for path in argv[2:]:
                findings = check(load_docs(path))
                for finding in findings:
                    print(f"{path}: {finding}")
                bad += len(findings)
            return 1 if bad else 0
        if cmd == "rules" and len(argv) == 4:
            out = pathlib.Path(argv[3])
            out.mkdir(parents=True, exist_ok=True)
            for o in load_docs(argv[2]):
                if o["kind"] == "PrometheusRule":
                    (out / f"{o['metadata']['name']}.rules.yml").write_text(
                        yaml.safe_dump(o["spec"], sort_keys=False), encoding="utf-8"
                    )
            return 0
        if cmd == "sync-rules":
            for service in RULE_SOURCES:
                rule_path(service).write_text(rule_object(service), encoding="utf-8")
            return 0
        if cmd == "stale-rules":
            stale = [s for s in RULE_SOURCES if rule_path(s).read_text(encoding="utf-8") != rule_object(s)]
            for s in stale:
                print(f"{rule_path(s).relative_to(REPO)} is stale: run deploy/k8s/render.py sync-rules")
            return 1 if stale else 0
    except (RenderError, OSError, yaml.YAMLError, KeyError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
