"""deploy/ hardening: every validator CI promises runs here, with 0 unexplained findings.

hadolint (all Dockerfiles), kubernetes-validate --strict (built-in kinds), the vendored CRD and
compose-spec schemas (ServiceMonitor, PrometheusRule, InferenceService, compose.yaml), checkov
(Kubernetes and Dockerfiles; each suppression carries its reason), promtool on the Kubernetes
and compose Prometheus configs; plus Pod Security "restricted" and the manifests' wiring
(tests/_deploy_check.py), the PrometheusRule rendered from alerts.yml without drift, the images'
pins against the tested ones, and the image's entrypoint and HEALTHCHECK run for real.

The validators live in .venv-deploy (requirements/deploy.txt, installed by scripts/setup.sh); a
missing one fails these tests, it never skips them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _serving import tool

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILES = sorted(p for p in (DEPLOY / "docker").glob("Dockerfile*")
                     if p.suffix != ".dockerignore")
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "InferenceService"}
# checkov findings suppressed in deploy/kubernetes/oodguard.yaml, each explained in a comment there.
SUPPRESSED = {"CKV_K8S_11", "CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"}


def deploy_tool(name: str) -> str:
    path = ROOT / ".venv-deploy" / "bin" / name
    if not path.exists():
        pytest.fail(f"{path} missing: bash scripts/setup.sh installs requirements/deploy.txt")
    return str(path)


def run(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env)


def test_dockerfiles_are_found() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.bundle", "Dockerfile.gpu"]


def test_hadolint_passes_on_every_dockerfile() -> None:
    out = run([deploy_tool("hadolint"), "--no-color", *map(str, DOCKERFILES)])
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_kubernetes_validate_strict_passes_and_skips_only_the_crds() -> None:
    out = run([deploy_tool("kubernetes-validate"), "--strict", *map(str, MANIFESTS)])
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    passed = re.findall(r"passed for resource (\S+)/", text)
    assert sorted(passed) == sorted(["namespace", "serviceaccount", "deployment", "service",
                                     "service", "poddisruptionbudget",
                                     "horizontalpodautoscaler", "networkpolicy"]), text
    # kubernetes-validate has no schemas for custom resources: it warns and passes them; they
    # are validated against the vendored CRD schemas below instead.
    unvalidated = set(re.findall(r"Couldn't find schema for kind (\w+)", text))
    assert unvalidated == CRD_KINDS, text


@pytest.fixture(scope="module")
def structural() -> dict[str, list[str]]:
    out = run([deploy_tool("python"), str(ROOT / "tests" / "_deploy_check.py"), str(ROOT)])
    assert out.returncode == 0, out.stdout + out.stderr
    result: dict[str, list[str]] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("check", ["schemas", "pod_security", "wiring", "rule", "compose"])
def test_manifests_structural(structural: dict[str, list[str]], check: str) -> None:
    assert structural[check] == []


def checkov_results() -> list[dict[str, Any]]:
    # --skip-download: no call home (CI has no network but the package registries).
    out = run([deploy_tool("checkov"), "-d", str(DEPLOY), "--framework", "kubernetes",
               "dockerfile", "--skip-download", "--output", "json"], timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    data = json.loads(out.stdout)
    return data if isinstance(data, list) else [data]


def test_checkov_finds_nothing_unexplained() -> None:
    results = {r["check_type"]: r for r in checkov_results()}
    assert set(results) == {"kubernetes", "dockerfile"}
    for kind, r in results.items():
        assert r["summary"]["failed"] == 0 and r["summary"]["parsing_errors"] == 0, (
            kind, [(c["check_id"], c["resource"]) for c in r["results"]["failed_checks"]])
        assert r["summary"]["passed"] > 40, r["summary"]
    skipped = results["kubernetes"]["results"]["skipped_checks"]
    assert {c["check_id"] for c in skipped} == SUPPRESSED
    assert not results["dockerfile"]["results"]["skipped_checks"]
    manifest = (K8S / "oodguard.yaml").read_text()
    for c in skipped:
        assert c["check_result"]["suppress_comment"].strip(), c["check_id"]
        # the reason at length, as a YAML comment next to the annotation
        assert re.search(rf"^\s+# {c['check_id']}: \S", manifest, re.M), c["check_id"]


def test_prometheus_configs_for_kubernetes_and_compose_pass_promtool() -> None:
    for path in (K8S / "prometheus-scrape.yml", DEPLOY / "compose" / "prometheus.yml"):
        out = run([tool("promtool"), "check", "config", str(path)], timeout=60)
        assert out.returncode == 0 and "SUCCESS" in out.stdout + out.stderr, (
            out.stdout + out.stderr)


def load_render() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_is_rendered_from_alerts_yml() -> None:
    out = run([sys.executable, str(DEPLOY / "render.py"), "--check"], timeout=60)
    assert out.returncode == 0, out.stderr
    render = load_render()
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    committed = (K8S / "prometheusrule.yaml").read_text()
    assert render.render(alerts) == committed
    # any change to the rules changes the rendering, so --check catches every drift
    assert render.render(alerts.replace("> 0.2", "> 0.3")) != committed
    with pytest.raises(ValueError, match="groups:"):
        render.render("# nothing here\n")


def pins(path: Path) -> dict[str, str]:
    """name -> version of a requirements file's `name==version` lines, following -r."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            found |= pins(path.parent / line[3:].strip())
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[\w,]+\])?==([\w.]+)", line)
        assert m, f"{path.name}: {line!r} is not pinned with =="
        found[m.group(1).lower().replace("_", "-")] = m.group(3)
    return found


def test_images_pin_the_versions_ci_tests() -> None:
    req = ROOT / "requirements"
    tested = pins(req / "ci.txt")
    cpu, gpu = pins(req / "image-cpu.txt"), pins(req / "image-gpu.txt")
    assert "onnxruntime-gpu" not in cpu and "onnxruntime" not in gpu  # never both
    for image in (cpu, gpu):
        assert not {"torch", "scikit-learn", "scipy"} & set(image)  # runtime only
        shared = set(image) & set(tested)
        assert {"numpy", "prometheus-client", "starlette", "uvicorn"} <= shared
        assert {k: image[k] for k in shared} == {k: tested[k] for k in shared}
    assert cpu["onnxruntime"] == tested["onnxruntime"]
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (DEPLOY / "docker" / name).read_text()
        suffix = "gpu" if name.endswith("gpu") else "cpu"
        assert f"--no-deps -r requirements/image-{suffix}.txt" in text and "pip check" in text
        assert re.findall(r"^FROM (\S+)", text, re.M) == ["python:3.11.14-slim-bookworm"] * 2
        assert "USER 10001:10001" in text and "HEALTHCHECK" in text
        ignore = (DEPLOY / "docker" / f"{name}.dockerignore").read_text()
        assert f"!requirements/image-{suffix}.txt" in ignore and ignore.lstrip("#\n ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def instruction(dockerfile: str, name: str) -> list[str]:
    """The JSON (exec form) arguments of ENTRYPOINT, or of HEALTHCHECK's CMD."""
    if name == "HEALTHCHECK":  # options on the first line, CMD on the continuation line
        m = re.search(r"^HEALTHCHECK[^\n]*\\\n\s+CMD (\[.*\])$", dockerfile, re.M)
    else:
        m = re.search(rf"^{name} (\[.*\])$", dockerfile, re.M)
    assert m, f"{name} in exec form expected"
    args: list[str] = json.loads(m.group(1))
    return args


def test_image_entrypoint_serves_the_bundle_and_healthcheck_follows_readiness(
        bundle: Path, tmp_path: Path) -> None:
    """What the image runs, run here: ENTRYPOINT with OODGUARD_BUNDLE pointing at a read-only
    copy of a bundle (as the init container leaves it), HEALTHCHECK's command until it
    succeeds, then SIGTERM: oodguard is the process (exec), drains and exits 0, and the
    health check fails afterwards."""
    docker = (DEPLOY / "docker" / "Dockerfile").read_text()
    port = str(free_port())
    entry = [a.replace("--port 8000", f"--port {port}").replace("0.0.0.0", "127.0.0.1")
             for a in instruction(docker, "ENTRYPOINT")]
    health = [a.replace(":8000/", f":{port}/") for a in instruction(docker, "HEALTHCHECK")]
    assert entry[:2] == ["sh", "-c"] and "exec oodguard serve" in entry[2]
    assert health[:2] == ["python", "-c"] and "/v2/health/ready" in health[2]
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    for f in copy.iterdir():
        f.chmod(stat.S_IRUSR | stat.S_IRGRP)
    copy.chmod(stat.S_IRUSR | stat.S_IXUSR)
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "OODGUARD_BUNDLE": str(copy),
           "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.Popen([*entry, *instruction(docker, "CMD")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health_cmd = [sys.executable, *health[1:]]
        deadline = time.monotonic() + 60
        while True:
            ok = subprocess.run(health_cmd, capture_output=True, timeout=10).returncode == 0
            if ok or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.2)
        if not ok:
            proc.kill()
            pytest.fail(f"health check never passed; server said: {proc.communicate()[0]}")
        proc.send_signal(signal.SIGTERM)  # to the shell's pid: exec made it oodguard's
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "oodguard serve: stopped" in out, out
        assert subprocess.run(health_cmd, capture_output=True, timeout=10).returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
