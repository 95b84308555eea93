"""The shipped alert rules on a fresh process's real exposition.

A fresh ``oodguard serve`` is scraped before it has seen a request; every series of that scrape
becomes a promtool ``input_series`` holding its scraped value, and each case appends events to
it (one failure, refusals, a 503, slow calls…). A series the scrape lacks can only start at its
first event (``_`` before), as it would in Prometheus, so if the exporter stopped starting a
counter at 0 the "fires on the first event" cases below would fail. Each alert also has a quiet
case, and one case sends a real hostile request (a claimed 10**9 rows of the wrong shape,
carrying 5 values) to the server and replays the refusal count it really caused.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest
from _serving import serving, tool
from prometheus_client.parser import text_string_to_metric_families

from oodguard.metrics import DROP_REASONS, FAILURE_KINDS, HTTP_REFUSAL_REASONS, REFUSAL_REASONS
from oodguard.serve import ServeConfig

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"
MINUTES = 40  # samples at 0m, 1m, … 40m
G = "g"
Key = tuple[str, tuple[tuple[str, str], ...]]


def scrape(url: str) -> dict[Key, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if not s.name.endswith("_created")  # timestamps, read by no rule
    }


@pytest.fixture(scope="module")
def exposition(bundle) -> dict[str, dict[Key, float]]:  # type: ignore[no-untyped-def]
    """The fresh server's scrape, and the scrape after one hostile request."""
    with serving(bundle, "--name", G) as (url, _):
        fresh = scrape(url)
        hostile = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [10**9, 5],
                               "data": [0.0] * 5}]}
        r = httpx.post(url + f"/v2/models/{G}/infer", json=hostile, timeout=10)
        assert r.status_code == 400 and r.json()["reason"] == "shape", r.text
        after = scrape(url)
    return {"fresh": fresh, "after_hostile": after}


def key(name: str, **labels: str) -> Key:
    return name, tuple(sorted({"guard": G, **labels}.items()))


def series(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    return name + "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in labels) + "}"


def input_series(base: Mapping[Key, float], events: Mapping[Key, Mapping[int, float]]
                 ) -> list[dict[str, str]]:
    """Every scraped series at its scraped value, plus ``events[key][minute] = increment``
    (cumulative from that minute on). A key the scrape lacks is absent (``_``) until its first
    event, as a series that a process creates on first use."""
    out = []
    for k in sorted(set(base) | set(events)):
        inc = events.get(k, {})
        value = base.get(k)
        values = []
        for t in range(MINUTES + 1):
            if t in inc:
                value = (value or 0.0) + inc[t]
            values.append("_" if value is None else repr(float(value)))
        out.append({"series": series(*k), "values": " ".join(values)})
    return out


def every(minutes: range, amount: float) -> dict[int, float]:
    return {t: amount for t in minutes}


def firing(alert: str, at: int, count: int, state: str = "firing") -> dict[str, object]:
    return {"expr": f'count(ALERTS{{alertname="{alert}",alertstate="{state}"}})',
            "eval_time": f"{at}m", "exp_samples": [{"value": count}] if count else []}


def promtool_test(tmp_path: Path, cases: list[dict[str, object]]) -> None:
    doc = {"rule_files": [str(RULES)], "evaluation_interval": "1m",
           "tests": [{"interval": "1m", **c} for c in cases]}
    path = tmp_path / "alerts_test.yml"
    path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    out = subprocess.run([tool("promtool"), "test", "rules", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def case(name: str, base: Mapping[Key, float], events: Mapping[Key, Mapping[int, float]],
         checks: list[dict[str, object]], extra: list[dict[str, str]] | None = None
         ) -> dict[str, object]:
    return {"name": name, "input_series": input_series(base, events) + (extra or []),
            "promql_expr_test": checks}


# -- the exposition itself ------------------------------------------------------------------
def test_a_fresh_process_exports_every_counter_a_rule_reads_at_zero(exposition) -> None:
    fresh = exposition["fresh"]
    want = (
        [key("oodguard_inputs_total", verdict=v) for v in ("in", "ood")]
        + [key("oodguard_inputs_refused_total", reason=r)
           for r in (*REFUSAL_REASONS, *HTTP_REFUSAL_REASONS)]
        + [key("oodguard_guard_failures_total", kind=k) for k in FAILURE_KINDS]
        + [key("oodguard_http_requests_dropped_total", reason=r) for r in DROP_REASONS]
        + [key("oodguard_guard_duration_seconds_count", stage=s)
           for s in ("engine", "scoring", "total")]
    )
    assert {k: fresh.get(k) for k in want} == dict.fromkeys(want, 0.0)


def test_one_hostile_request_counts_the_rows_it_carried(exposition) -> None:
    refused = key("oodguard_inputs_refused_total", reason="shape")
    grew = {k: v - exposition["fresh"].get(k, 0.0)
            for k, v in exposition["after_hostile"].items()
            if k[0].startswith("oodguard_inputs") and v != exposition["fresh"].get(k, 0.0)}
    # 5 values carried: at least one row counts; never the 10**9 claimed, nor a capped 4096
    assert grew == {refused: 1}


# -- each alert fires on the first event; a quiet case for each -------------------------------
@pytest.mark.parametrize("kind", FAILURE_KINDS)
def test_the_first_guard_failure_fires(exposition, tmp_path, kind) -> None:
    base = exposition["fresh"]
    one = {key("oodguard_guard_failures_total", kind=kind): {5: 1.0}}
    checks = [firing("OODGuardFailures", 4, 0), firing("OODGuardFailures", 5, 1),
              firing("OODGuardFailures", 9, 1), firing("OODGuardFailures", 11, 0)]
    promtool_test(tmp_path, [
        case(f"first {kind} failure", base, one, checks),
        case("no failure: quiet", base, {}, [firing("OODGuardFailures", t, 0)
                                             for t in (5, 20, 40)]),
    ])


def test_without_a_zero_series_the_first_failure_would_not_fire(exposition, tmp_path) -> None:
    """Why the counters start at 0: the same event on a series that appears with it (what the
    exporter did before) leaves ``increase`` empty and the alert silent."""
    k = key("oodguard_guard_failures_total", kind="engine_error")
    base = {s: v for s, v in exposition["fresh"].items() if s != k}
    promtool_test(tmp_path, [case("series born at 1", base, {k: {5: 1.0}},
                                  [firing("OODGuardFailures", t, 0) for t in (5, 6, 9)])])


def test_the_first_overloaded_503_fires(exposition, tmp_path) -> None:
    base = exposition["fresh"]
    drop = {key("oodguard_http_requests_dropped_total", reason="overloaded"): {5: 1.0}}
    others = {key("oodguard_http_requests_dropped_total", reason=r): every(range(1, 41), 3.0)
              for r in DROP_REASONS if r != "overloaded"}
    promtool_test(tmp_path, [
        case("first 503", base, drop, [firing("OODGuardOverloaded", 4, 0),
                                       firing("OODGuardOverloaded", 5, 1),
                                       firing("OODGuardOverloaded", 11, 0)]),
        case("401s, timeouts, disconnects: quiet", base, others,
             [firing("OODGuardOverloaded", t, 0) for t in (5, 20, 40)]),
    ])


def test_refusals_from_the_first_request_fire_after_ten_minutes(exposition, tmp_path) -> None:
    base = exposition["fresh"]
    traffic = {key("oodguard_inputs_total", verdict="in"): every(range(3, 41), 90.0),
               key("oodguard_inputs_refused_total", reason="shape"): every(range(3, 41), 10.0)}
    # a client that sends only the wrong shape: no input is ever scored
    all_refused = {key("oodguard_inputs_refused_total", reason="rank"): every(range(3, 41), 1.0)}
    quiet = {key("oodguard_inputs_total", verdict="in"): every(range(3, 41), 98.0),
             key("oodguard_inputs_refused_total", reason="non_finite"): every(range(3, 41), 2.0)}
    promtool_test(tmp_path, [
        case("10% refused", base, traffic, [firing("OODGuardRefusals", 3, 1, "pending"),
                                            firing("OODGuardRefusals", 12, 0),
                                            firing("OODGuardRefusals", 13, 1)]),
        case("every input refused", base, all_refused, [firing("OODGuardRefusals", 13, 1)]),
        case("2% refused: quiet", base, quiet, [firing("OODGuardRefusals", t, 0, s)
                                                for t in (5, 20, 40)
                                                for s in ("pending", "firing")]),
    ])


def test_one_hostile_request_cannot_fire_the_refusal_alert(exposition, tmp_path) -> None:
    """The refusal count one hostile request really caused (the rows it carried), replayed
    at minute 10 on a guard scoring 100 inputs a minute, and the most any one request can
    cause (``max_request_rows``, a request that really carries that many rows): the first
    leaves the ratio under 5% (the alert is not even pending); the second lifts it above 5%
    (pending, so the case is not vacuous) but only for the rule's 5-minute window, shorter
    than its ``for: 10m``; the alert never fires."""
    fresh, after = exposition["fresh"], exposition["after_hostile"]
    bumps = {k: {10: after[k] - fresh.get(k, 0.0)} for k in after
             if k[0] == "oodguard_inputs_refused_total" and after[k] != fresh.get(k, 0.0)}
    assert bumps
    events = {key("oodguard_inputs_total", verdict="in"): every(range(1, 41), 95.0),
              key("oodguard_inputs_total", verdict="ood"): every(range(1, 41), 5.0), **bumps}
    quiet = [firing("OODGuardRefusals", t, 0, state) for t in range(0, 41)
             for state in ("pending", "firing")]
    largest = {**events, **{k: {10: float(ServeConfig().max_request_rows)} for k in bumps}}
    checks = [firing("OODGuardRefusals", 11, 1, "pending")]
    checks += [firing("OODGuardRefusals", t, 0) for t in range(0, 41)]
    promtool_test(tmp_path, [case("one hostile request", fresh, events, quiet),
                             case("one request of max_request_rows bad rows", fresh, largest,
                                  checks)])


def test_a_high_ood_fraction_fires_and_alpha_level_traffic_is_quiet(exposition,
                                                                    tmp_path) -> None:
    base = exposition["fresh"]

    def traffic(ood: float) -> dict[Key, dict[int, float]]:
        return {key("oodguard_inputs_total", verdict="ood"): every(range(2, 41), ood),
                key("oodguard_inputs_total", verdict="in"): every(range(2, 41), 100 - ood)}

    promtool_test(tmp_path, [
        case("30% OOD", base, traffic(30.0), [firing("OODGuardHighOODFraction", 11, 0),
                                              firing("OODGuardHighOODFraction", 13, 1)]),
        case("5% OOD: quiet", base, traffic(5.0),
             [firing("OODGuardHighOODFraction", t, 0, s) for t in (5, 20, 40)
              for s in ("pending", "firing")]),
    ])


def test_a_slow_guard_fires_and_a_fast_one_is_quiet(exposition, tmp_path) -> None:
    base = exposition["fresh"]
    buckets = [k for k in base if k[0] == "oodguard_guard_duration_seconds_bucket"
               and dict(k[1])["stage"] == "total"]
    assert len(buckets) > 10  # the real bucket layout, +Inf included

    def calls(seconds: float) -> dict[Key, dict[int, float]]:
        ev = {k: every(range(2, 41), 10.0) for k in buckets
              if float(dict(k[1])["le"]) >= seconds}
        ev[key("oodguard_guard_duration_seconds_count", stage="total")] = every(range(2, 41),
                                                                                10.0)
        ev[key("oodguard_guard_duration_seconds_sum", stage="total")] = every(range(2, 41),
                                                                              10 * seconds)
        return ev

    promtool_test(tmp_path, [
        case("calls of 2 s", base, calls(2.0), [firing("OODGuardSlow", 11, 0),
                                                firing("OODGuardSlow", 13, 1)]),
        case("calls of 1 ms: quiet", base, calls(0.001),
             [firing("OODGuardSlow", t, 0, s) for t in (5, 20, 40)
              for s in ("pending", "firing")]),
    ])


def test_drift_fires_on_the_replicas_mean_martingale_and_calm_replicas_are_quiet(
        exposition, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The fresh scrape's drift series (evidence 0, the real threshold) as replica a, a copy as
    replica b: a alone past the threshold is not enough; the mean of the two martingales is."""
    base = exposition["fresh"]
    evidence = key("oodguard_drift_evidence_log10")
    threshold = key("oodguard_drift_threshold_log10")
    start, limit = base[evidence], base[threshold]
    assert start <= 0.0 and limit > 1.0  # a monitor starts at most at 1 (log10 0)

    def replica(name: str, k: Key) -> Key:
        return k[0], tuple(sorted((*k[1], ("instance", name))))

    two = {replica(r, k): v for k, v in base.items() for r in ("a", "b")
           if k in (evidence, threshold)}
    # events add to the scraped value: a goes to 10^(limit + 0.1) ≈ 1.26/ε', then far past
    rise = {replica("a", evidence): {5: limit + 0.1 - start, 10: 0.5}}
    promtool_test(tmp_path, [
        case("a past the threshold, b calm: the mean is not", two, rise,
             [firing("OODGuardDrift", t, 0) for t in (4, 6, 9)]),
        case("a far past it: the mean crosses", two,
             {replica("a", evidence): {5: limit + 0.5 - start}},
             [firing("OODGuardDrift", 4, 0), firing("OODGuardDrift", 5, 1)]),
        case("calm: quiet", two, {}, [firing("OODGuardDrift", t, 0) for t in (5, 20, 40)]),
    ])


def test_a_target_down_fires_and_an_up_one_is_quiet(exposition, tmp_path) -> None:
    """``up`` is Prometheus's own series (not in the exposition), added for this one."""
    base = exposition["fresh"]

    def up(values: str) -> list[dict[str, str]]:
        return [{"series": 'up{job="oodguard",instance="10.0.0.1:8000"}', "values": values}]

    promtool_test(tmp_path, [
        case("down from 5m", base, {}, [firing("OODGuardDown", 6, 0),
                                        firing("OODGuardDown", 7, 1)],
             extra=up("1 1 1 1 1 " + "0 " * 36)),
        case("up: quiet", base, {}, [firing("OODGuardDown", t, 0) for t in (5, 20, 40)],
             extra=up("1+0x40")),
    ])


def test_rules_and_dashboard_read_only_series_a_fresh_process_exports(exposition) -> None:
    """Every metric the rules and the Grafana dashboard name, with every exact label value they
    match on (``verdict="ood"``, ``stage="total"``, ``reason="overloaded"``, ``le="0.01"``…),
    is a series of the fresh scrape: no panel shows "no data" and no rule reads nothing before
    the first event."""
    fresh = exposition["fresh"]
    dashboard = json.loads((RULES.parents[1] / "grafana" / "oodguard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    text = RULES.read_text() + "\n" + "\n".join(exprs)
    selectors = re.findall(r"(?<![:\w])(oodguard_[a-z0-9_]+)(\{[^}]*\})?", text)
    assert len(selectors) > 15
    for name, matchers in selectors:
        have = [dict(labels) for n, labels in fresh if n == name]
        assert have, f"{name} is not in a fresh process's /metrics"
        for label, value in re.findall(r'(\w+)="([^"]*)"', matchers or ""):
            assert any(h.get(label) == value for h in have), f'{name}{{{label}="{value}"}}'
