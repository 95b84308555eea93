"""deploy/: promtool checks the config and the alert rules (with their unit tests); the
dashboard's and rules' PromQL parse and name only metrics the guard exports; the manifests
probe routes the server has."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
from _serving import tool

from oodguard.drift import DriftMonitor
from oodguard.metrics import GuardMetrics, new_registry, render_latest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def promtool(*args: str | Path) -> str:
    out = subprocess.run([tool("promtool"), *map(str, args)], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_prometheus_config_and_rules_pass_promtool() -> None:
    assert "SUCCESS" in promtool("check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    assert "SUCCESS: 8 rules found" in promtool("check", "rules",
                                                 DEPLOY / "prometheus" / "alerts.yml")


def test_alert_rules_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("test", "rules", DEPLOY / "prometheus" / "alerts_test.yml")


def exported_names() -> set[str]:
    """Every sample name one guard's metrics expose (after one call, so all series exist)."""
    reg = new_registry()
    m = GuardMetrics(reg, "g", score_scale=(0.0, 1.0), threshold=1.0,
                     info={"sha256": "0" * 64, "calibration_sha256": "1" * 64, "schema": "1",
                           "version": "0", "steps": "8", "alpha": "0.05"})
    m.init_http()
    m.observe_check(np.array([0.5]), np.array([0.5]), 0, engine_s=0.001, scoring_s=0.001,
                    total_s=0.002)
    m.observe_refused("shape")
    m.observe_failure("RuntimeError")
    m.observe_model(0.01)
    m.watch_drift(DriftMonitor(100, 0.05))
    text = render_latest(reg)[0].decode()
    return {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if not ln.startswith("#")}


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "oodguard.json").read_text())
    assert dash["uid"] == "oodguard" and {v["name"] for v in dash["templating"]["list"]} == {
        "datasource", "guard"}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_dashboard_and_rules_use_only_exported_metrics() -> None:
    names = exported_names()
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    exprs = dashboard_exprs()
    used = set(re.findall(r"\boodguard_[a-z0-9_]+", rules + "\n".join(exprs)))
    used -= {"oodguard_ood_fraction"}  # the recording rule's own name
    assert used and used <= names, used - names


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    # promtool parses PromQL in rule files, so each panel query becomes a recording rule
    # (Grafana's variables replaced by what Grafana would substitute).
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "1m").replace("$guard", ".*")
        lines += [f"      - record: dashboard:panel_{i}", f"        expr: {json.dumps(concrete)}"]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text("\n".join(lines) + "\n")
    assert f"SUCCESS: {len(dashboard_exprs())} rules found" in promtool("check", "rules", path)


def test_manifests_probe_server_routes_and_images_serve_on_the_exposed_port() -> None:
    from oodguard.serve import ServeConfig, create_app

    class _Guard:  # create_app only reads these to build routes
        name = "default"
        metrics = None
        check = staticmethod(lambda x: x)

    app = create_app(_Guard(), ServeConfig())  # type: ignore[arg-type]
    paths = {getattr(r, "path", None) for r in app.routes}
    for manifest in ("oodguard.yaml", "kserve.yaml"):
        k8s = (DEPLOY / "kubernetes" / manifest).read_text()
        probes = set(re.findall(r"path: (/v2\S+)", k8s))
        assert probes == {"/v2/health/live", "/v2/health/ready"} and probes <= paths, manifest
        assert "containerPort: 8000" in k8s and "--token-env" in k8s
    for name in ("Dockerfile", "Dockerfile.gpu"):
        docker = (DEPLOY / "docker" / name).read_text()
        assert "--port 8000" in docker and "EXPOSE 8000" in docker, name
        assert "/v2/health/ready" in docker and "/v2/health/ready" in paths


def test_deployment_drains_before_the_kill() -> None:
    """preStop sleeps (endpoint removal races with SIGTERM) and the grace period covers the
    sleep plus the server's drain timeout, so in-flight requests finish before SIGKILL."""
    for manifest in ("oodguard.yaml", "kserve.yaml"):
        check_drain((DEPLOY / "kubernetes" / manifest).read_text())


def check_drain(k8s: str) -> None:
    sleep = re.search(r'preStop:\s+exec:\s+command: \["sleep", "(\d+)"\]', k8s)
    grace = re.search(r"terminationGracePeriodSeconds: (\d+)", k8s)
    drain = re.search(r'"--graceful-timeout-s", "(\d+)"', k8s)
    assert sleep and grace and drain, "preStop sleep, grace period and drain timeout expected"
    assert 0 < int(sleep.group(1)) and int(grace.group(1)) > int(sleep.group(1)) + int(
        drain.group(1))
