"""Structural checks of deploy/, run by tests/test_deploy_hardening.py with .venv-deploy's Python
(it has PyYAML and jsonschema, which the runtime's .venv does not need). Prints one JSON object:
check name -> list of problems (empty when the check passes).

Usage: .venv-deploy/bin/python tests/_deploy_check.py REPOSITORY_ROOT
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(sys.argv[1]).resolve()
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SCHEMAS = ROOT / "tests" / "schemas"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule_v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice_v1beta1.json",
}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in docs(p)]


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for d in manifests()
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    if len(hits) != 1:
        raise LookupError(f"expected one {kind} {name or ''}, found {len(hits)}")
    return hits[0]


def schema_errors(doc: Any, schema_file: str) -> list[str]:
    schema = json.loads((SCHEMAS / schema_file).read_text())
    validator = jsonschema.Draft7Validator(schema)  # compose-spec and the CRDs: draft 7
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
            for e in validator.iter_errors(doc)]


def check_schemas() -> list[str]:
    """CRDs (which kubernetes-validate has no schema for) and compose.yaml against the schemas
    vendored in tests/schemas/; a mutated copy must fail, so the schemas are strict."""
    problems = []
    crds = [d for d in manifests() if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS]
    if sorted(d["kind"] for d in crds) != ["InferenceService", "PrometheusRule", "ServiceMonitor"]:
        problems.append(f"unexpected custom resources: {[d['kind'] for d in crds]}")
    for d in crds:
        schema = CRD_SCHEMAS[(d["apiVersion"], d["kind"])]
        problems += [f"{d['kind']}: {e}" for e in schema_errors(d, schema)]
        bad = copy.deepcopy(d)
        bad["spec"]["unknownField"] = 1
        if not schema_errors(bad, schema):
            problems.append(f"{schema} accepts an unknown spec field: not strict")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    problems += [f"compose.yaml: {e}" for e in schema_errors(compose, "compose-spec.json")]
    bad = copy.deepcopy(compose)
    bad["services"]["guard"]["unknownField"] = 1
    if not schema_errors(bad, "compose-spec.json"):
        problems.append("compose-spec.json accepts an unknown service field: not strict")
    return problems


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [("Deployment", find("Deployment", "oodguard")["spec"]["template"]["spec"]),
            ("InferenceService", find("InferenceService")["spec"]["predictor"])]


def check_pod_security() -> list[str]:
    """Pod Security Standards "restricted", plus what this project adds (no token, read-only
    root, resources, pinned tags, the bundle mounted read-only from an emptyDir)."""
    problems = []
    for owner, spec in pod_specs():
        sc = spec.get("securityContext", {})
        if sc.get("runAsNonRoot") is not True or not sc.get("runAsUser"):
            problems.append(f"{owner}: pod must set runAsNonRoot and a non-zero runAsUser")
        if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{owner}: seccompProfile RuntimeDefault expected")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{owner}: automountServiceAccountToken must be false")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                problems.append(f"{owner}: {key}")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if set(v) - {"name", "emptyDir", "secret", "configMap", "projected"}:
                problems.append(f"{owner}: volume {v['name']} is not an emptyDir/secret/configMap")
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{owner}/{c['name']}"
            csc = c.get("securityContext", {})
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem must be true")
            if csc.get("capabilities", {}).get("drop") != ["ALL"] or csc.get(
                    "capabilities", {}).get("add"):
                problems.append(f"{where}: capabilities must drop ALL and add none")
            if csc.get("privileged") or csc.get("runAsUser") == 0:
                problems.append(f"{where}: privileged or root")
            if not c.get("resources", {}).get("limits", {}).get("memory"):
                problems.append(f"{where}: memory limit missing")
            if not c.get("resources", {}).get("requests", {}).get("cpu"):
                problems.append(f"{where}: CPU request missing")
            tag = c["image"].rpartition(":")[2] if ":" in c["image"] else ""
            if not tag or tag == "latest":
                problems.append(f"{where}: image {c['image']} is not pinned by version")
        main = spec["containers"][0]
        mounts = {m["mountPath"]: m for m in main.get("volumeMounts", [])}
        bundle = mounts.get("/bundle")
        if not bundle or bundle.get("readOnly") is not True:
            problems.append(f"{owner}: the bundle must be mounted read-only at /bundle")
        elif "emptyDir" not in volumes.get(bundle["name"], {}):
            problems.append(f"{owner}: the bundle volume must be an emptyDir (filled by init)")
        inits = spec.get("initContainers", [])
        if not any(m["name"] == (bundle or {}).get("name") for i in inits
                   for m in i.get("volumeMounts", [])):
            problems.append(f"{owner}: no init container fills the bundle volume")
        if "/tmp" not in mounts:
            problems.append(f"{owner}: read-only root needs a writable /tmp")
    return problems


def check_wiring() -> list[str]:
    """Selectors, names and ports that must agree across the manifests."""
    problems = []
    dep = find("Deployment", "oodguard")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    if "replicas" in dep["spec"]:
        problems.append("Deployment sets replicas: the HPA owns the count")
    pod = dep["spec"]["template"]["spec"]
    sa = find("ServiceAccount", pod["serviceAccountName"])
    if sa.get("automountServiceAccountToken") is not False:
        problems.append("ServiceAccount mounts its token")
    ports = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}

    def selects(selector: dict[str, Any], target: dict[str, str]) -> bool:
        return all(target.get(k) == v for k, v in selector.get("matchLabels", selector).items()
                   if k != "matchExpressions")

    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for d in (x for x in manifests() if x["kind"] == kind):
            sel = d["spec"].get("selector") or d["spec"].get("podSelector")
            if not selects(sel, labels):
                problems.append(f"{kind} {d['metadata']['name']} does not select the pods")
            if kind == "Service" and any(p["targetPort"] not in ports for p in d["spec"]["ports"]):
                problems.append(f"Service {d['metadata']['name']}: targetPort not a pod port")
    hpa = find("HorizontalPodAutoscaler")
    if hpa["spec"]["scaleTargetRef"] != {"apiVersion": "apps/v1", "kind": "Deployment",
                                         "name": "oodguard"}:
        problems.append("HPA does not scale the Deployment")
    if find("PodDisruptionBudget")["spec"].get("minAvailable", 0) >= hpa["spec"]["minReplicas"]:
        problems.append("PDB minAvailable must be below the HPA's minReplicas (drains would stall)")
    sm = find("ServiceMonitor")
    services = [s for s in manifests() if s["kind"] == "Service"
                and selects(sm["spec"]["selector"], s["metadata"]["labels"])
                and not any(e["key"] in s["metadata"]["labels"]
                            for e in sm["spec"]["selector"].get("matchExpressions", [])
                            if e["operator"] == "DoesNotExist")]
    if [s["metadata"]["name"] for s in services] != ["oodguard"]:
        problems.append(f"ServiceMonitor selects {[s['metadata']['name'] for s in services]}")
    elif {e["port"] for e in sm["spec"]["endpoints"]} - {
            p["name"] for p in services[0]["spec"]["ports"]}:
        problems.append("ServiceMonitor scrapes a port the Service does not name")
    headless = find("Service", "oodguard-pods")
    scrape = yaml.safe_load((K8S / "prometheus-scrape.yml").read_text())
    names = [n for job in scrape["scrape_configs"] for sd in job.get("dns_sd_configs", [])
             for n in sd["names"]]
    want = f"oodguard-pods.{headless['metadata']['namespace']}.svc.cluster.local"
    if names != [want] or headless["spec"].get("clusterIP") != "None":
        problems.append(f"prometheus-scrape.yml should discover {want} (headless): {names}")
    namespaces = {d["metadata"].get("namespace") for d in manifests() if d["kind"] != "Namespace"}
    if namespaces != {find("Namespace")["metadata"]["name"]}:
        problems.append(f"resources in namespaces {namespaces}")
    if find("Namespace")["metadata"]["labels"].get(
            "pod-security.kubernetes.io/enforce") != "restricted":
        problems.append("the namespace does not enforce Pod Security restricted")
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        if not (K8S / res).is_file():
            problems.append(f"kustomization.yaml names missing {res}")
    images = {c["image"].partition(":")[0] for _, s in pod_specs()
              for c in s.get("initContainers", []) + s["containers"]}
    if images != {i["name"] for i in kust["images"]}:
        problems.append(f"kustomization.yaml images {kust['images']} vs manifests {images}")
    return problems


def check_rule() -> list[str]:
    """The PrometheusRule carries exactly alerts.yml's groups."""
    rule = find("PrometheusRule")
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [] if rule["spec"] == alerts else ["PrometheusRule spec differs from alerts.yml"]


def check_compose() -> list[str]:
    """Every file compose.yaml mounts exists (the bundle aside: the demo writes it), Grafana's
    provisioning names the dashboard folder it mounts and the data source the dashboard uses."""
    problems = []
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if src.startswith("${OODGUARD_BUNDLE_DIR"):
                continue
            if not (DEPLOY / src).exists():
                problems.append(f"{name}: mounts missing {src}")
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    dash_dir = mounts.get("./grafana")
    providers = docs(DEPLOY / "compose" / "grafana" / "dashboards" / "oodguard.yaml")[0]
    if [p["options"]["path"] for p in providers["providers"]] != [dash_dir]:
        problems.append("the dashboard provider does not read the mounted deploy/grafana")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    if not (DEPLOY / "grafana" / Path(home).name).is_file() or not home.startswith(dash_dir):
        problems.append(f"home dashboard {home} is not a shipped dashboard")
    ds = docs(DEPLOY / "compose" / "grafana" / "datasources" / "prometheus.yaml")[0]
    if [(d["type"], d.get("isDefault")) for d in ds["datasources"]] != [("prometheus", True)]:
        problems.append("one default Prometheus data source expected")
    if compose["services"]["guard"]["build"]["dockerfile"] != "deploy/docker/Dockerfile":
        problems.append("guard is not built from deploy/docker/Dockerfile")
    return problems


CHECKS = {"schemas": check_schemas, "pod_security": check_pod_security,
          "wiring": check_wiring, "rule": check_rule, "compose": check_compose}

if __name__ == "__main__":
    out = {}
    for name, fn in CHECKS.items():
        try:
            out[name] = fn()
        except Exception as err:  # noqa: BLE001 - reported to the test, not hidden
            out[name] = [f"{type(err).__name__}: {err}"]
    print(json.dumps(out))
