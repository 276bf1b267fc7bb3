"""The Grafana dashboard and the alerting rules ask only for series the gateway exports.

Every panel query, template-variable query and rule expression is parsed with a real PromQL
parser (promql-parser), and every selector's metric name must be one a real
``gateway.metrics.Metrics()`` registry exposes (plus the process_* families), with label
names it carries and, for the closed label sets of the metric reference, values it can have.
The rules also pass promtool, every alert is unit-tested there, and every alert's runbook_url
points at a runbook in docs/operations.md.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import ProcessCollector
from prometheus_client.metrics import MetricWrapperBase

from gateway.metrics import Metrics
from tests.deploy.markdown_doc import headings
from tests.deploy.tools import DEPLOY, OPERATIONS_MD, ROOT

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gateway.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"

# Sample names of each metric type (``*_created`` is switched off in gateway/metrics.py).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("", "_sum", "_count"), "info": ("_info",)}
# Labels Prometheus attaches to every scraped series (the target's).
TARGET_LABELS = frozenset({"job", "instance"})
# Series Prometheus itself writes for each scrape target; only the rules may use them.
SCRAPE_SERIES = {"up": TARGET_LABELS}
# The closed label values of the metric reference (docs/operations.md#metrics).
CLOSED_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("gateway_requests_total", "source"): frozenset({"gateway", "upstream"}),
    ("gateway_upstream_requests_total", "outcome"):
        frozenset({"ok", "http_error", "timeout", "connect_error", "reset", "circuit_open"}),
    ("gateway_steps_total", "outcome"): frozenset({"ok", "failed", "fallback", "skipped"}),
    ("gateway_auth_failures_total", "reason"): frozenset({"missing", "invalid", "expired"}),
    ("gateway_ratelimit_decisions_total", "decision"):
        frozenset({"allowed", "limited", "store_error_allowed", "store_error_denied", "local_fallback"}),
    ("gateway_circuit_breaker_state", "state"): frozenset({"closed", "open", "half_open"}),
    ("gateway_config_reloads_total", "result"): frozenset({"success", "failure"}),
    ("gateway_cache_requests_total", "result"): frozenset({"hit", "miss", "stale", "bypass"}),
}


@cache
def exported() -> dict[str, frozenset[str]]:
    """Every sample name the gateway exposes, with the label names it can carry."""
    metrics = Metrics()
    declared = {m._name: frozenset(m._labelnames) for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    families = [*metrics.registry.collect(), *ProcessCollector(registry=None).collect()]
    names: dict[str, frozenset[str]] = {}
    for family in families:
        labels = declared.get(family.name, frozenset()) | TARGET_LABELS
        if family.name.startswith("process_"):
            labels |= {"worker"}  # one series per worker with workers > 1
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else frozenset())
        for sample in family.samples:  # what the registry really renders, should it differ
            names.setdefault(sample.name, labels | frozenset(sample.labels))
    return names


@cache
def scrape_job() -> str:
    config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    (job,) = [c["job_name"] for c in config["scrape_configs"]]
    return str(job)


def selectors(expr: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(expr, visit)
    return found


def metric_problems(query: str, *, scrape_series: bool = False) -> list[str]:
    """What is wrong with ``query``: not PromQL, or a name, label or value the gateway never exports."""
    try:
        expr = promql_parser.parse(query)
    except ValueError as error:
        return [f"not PromQL ({error})"]
    known = dict(exported())
    if scrape_series:
        known.update(SCRAPE_SERIES)
    problems = []
    for selector in selectors(expr):
        matchers = list(selector.matchers.matchers)
        name = selector.name
        for m in matchers:
            if m.name == "__name__":
                if m.op != promql_parser.MatchOp.Equal:
                    problems.append(f"{selector}: a metric name by regex cannot be checked")
                name = m.value
        if name is None or name not in known:
            problems.append(f"{selector}: {name!r} is not a metric the gateway exports")
            continue
        for m in matchers:
            if m.name == "__name__":
                continue
            if m.name not in known[name]:
                problems.append(f"{selector}: {name} has no label {m.name!r} (it has {sorted(known[name])})")
            allowed = CLOSED_VALUES.get((name, m.name))
            if m.name == "job":
                allowed = frozenset({scrape_job()})
            if allowed is None or m.op in (promql_parser.MatchOp.NotEqual, promql_parser.MatchOp.NotRe):
                continue
            values = set(m.value.split("|")) if m.op == promql_parser.MatchOp.Re else {m.value}
            if not values <= allowed:
                problems.append(f"{selector}: {m.name} is never {sorted(values - allowed)} "
                                f"(it is one of {sorted(allowed)})")
    return problems


# ----------------------------------------------------------------------------- the dashboard

def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # a collapsed row holds its panels


GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def as_promql(query: str) -> str:
    """A Grafana query with its variables filled in as Grafana would (any value will do)."""
    return GRAFANA_VARIABLE.sub("x", GRAFANA_INTERVALS.sub("5m", query))


def variable_query(variable: dict[str, Any]) -> str:
    """The PromQL inside a query variable: ``label_values(SELECTOR, label)`` or ``query_result(EXPR)``."""
    query = variable["query"]
    text = str(query["query"] if isinstance(query, dict) else query)
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", text, re.S) or \
        re.fullmatch(r"\s*query_result\((.*)\)\s*", text, re.S)
    if match is None:
        raise AssertionError(f"variable {variable['name']}: unsupported query {text!r}")
    return match.group(1)


def dashboard_queries() -> list[tuple[str, str]]:
    """``(where, query)`` for every panel target and every query variable."""
    board = dashboard()
    found = [(f"panel {p['id']} {p.get('title')!r} {t['refId']}", str(t["expr"]))
             for p in all_panels(board["panels"]) for t in p.get("targets", [])]
    found += [(f"variable {v['name']}", variable_query(v))
              for v in board["templating"]["list"] if v["type"] == "query"]
    return found


QUERIES = dashboard_queries()


def test_the_exported_set_comes_from_the_registry() -> None:
    names = exported()
    for name in ("gateway_requests_total", "gateway_request_duration_seconds_bucket", "gateway_cache_requests_total",
                 "gateway_request_size_bytes_sum", "gateway_build_info", "process_resident_memory_bytes",
                 "process_cpu_seconds_total", "process_open_fds"):
        assert name in names, name
    assert "gateway_requests" not in names  # a counter is only ever exposed with _total
    assert names["gateway_upstream_requests_total"] >= {"route", "upstream", "code", "outcome", "job"}
    assert "le" in names["gateway_request_duration_seconds_bucket"]


@pytest.mark.parametrize(("query", "problem"), [
    ("rate(gateway_request_total[5m])", "'gateway_request_total' is not a metric"),
    ("gateway_requests_total{upstream=\"users\"}", "no label 'upstream'"),
    ("gateway_circuit_breaker_state{state=\"half-open\"}", "state is never ['half-open']"),
    ("up == 0", "'up' is not a metric"),
    ("rate(gateway_requests_total)", "not PromQL"),
])
def test_the_checker_catches_what_the_gateway_does_not_export(query: str, problem: str) -> None:
    problems = metric_problems(query)
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(("where", "query"), QUERIES, ids=[w for w, _ in QUERIES])
def test_dashboard_query_uses_only_exported_metrics(where: str, query: str) -> None:
    assert metric_problems(as_promql(query)) == [], f"{where}: {query}"


def test_dashboard_shows_every_family_an_operator_needs() -> None:
    used = {s.name for _, q in QUERIES for s in selectors(promql_parser.parse(as_promql(q)))}
    wanted = {
        "gateway_requests_total", "gateway_request_duration_seconds_bucket", "gateway_upstream_requests_total",
        "gateway_upstream_request_duration_seconds_bucket", "gateway_circuit_breaker_state",
        "gateway_ratelimit_decisions_total", "gateway_steps_total", "gateway_cache_requests_total",
        "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
        "gateway_request_size_bytes_bucket", "gateway_response_size_bytes_bucket",
    }
    assert wanted <= used, sorted(wanted - used)


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    panels = list(all_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert x >= 0 and x + w <= 24 and y >= 0, panel["title"]
        taken = {(col, line) for col in range(x, x + w) for line in range(y, y + h)}
        assert not taken & cells, f"panel {panel['title']!r} overlaps another"
        cells |= taken
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            used = {a or b or c for a, b, c in GRAFANA_VARIABLE.findall(target["expr"])} - {"__rate_interval"}
            assert used <= set(variables), f"{panel['title']}: undefined variables {used - set(variables)}"


# ----------------------------------------------------------------------------- the rules

def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


ALERTS = [r for r in rules() if "alert" in r]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: str(r.get("alert") or r.get("record")))
def test_rule_expression_uses_only_exported_metrics(rule: dict[str, Any]) -> None:
    assert metric_problems(str(rule["expr"]), scrape_series=True) == [], rule["expr"]


def test_every_alert_is_unit_tested_firing() -> None:
    suite = yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))
    fired: dict[str, list[dict[str, Any]]] = {}
    for test in suite["tests"]:
        for case in test.get("alert_rule_test", []):
            fired.setdefault(case["alertname"], []).extend(case["exp_alerts"] or [])
    untested = [a["alert"] for a in ALERTS if not fired.get(a["alert"])]
    assert untested == [], f"alerts no test expects to fire: {untested}"
    for alert in ALERTS:
        for expected in fired[alert["alert"]]:
            assert expected["exp_annotations"]["runbook_url"] == alert["annotations"]["runbook_url"]


def runbooks() -> dict[str, str]:
    """anchor -> the runbook's text, for each sub-section of "Alerts and runbooks"."""
    found = headings(OPERATIONS_MD)
    lines = OPERATIONS_MD.read_text(encoding="utf-8").splitlines()
    (section,) = [i for i, h in enumerate(found) if h.level == 2 and h.text == "Alerts and runbooks"]
    books: dict[str, str] = {}
    for i in range(section + 1, len(found)):
        heading = found[i]
        if heading.level <= 2:
            break
        end = found[i + 1].line - 1 if i + 1 < len(found) else len(lines)
        books[heading.anchor] = "\n".join(lines[heading.line:end])
        assert heading.anchor == heading.text.lower(), heading  # named exactly after its alert
    return books


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: str(a["alert"]))
def test_alert_links_a_runbook_that_exists(alert: dict[str, Any]) -> None:
    url = alert["annotations"]["runbook_url"]
    path, _, anchor = url.partition("#")
    assert (ROOT / path).resolve() == OPERATIONS_MD.resolve(), url
    books = runbooks()
    assert anchor in books, f"{url}: no such heading under 'Alerts and runbooks'"
    assert anchor == alert["alert"].lower()
    for part in ("**What it means.**", "**First checks.**", "**Fixes.**"):
        assert part in books[anchor], f"runbook {alert['alert']} lacks {part}"


def test_every_runbook_belongs_to_an_alert() -> None:
    assert set(runbooks()) == {a["alert"].lower() for a in ALERTS}


def run(command: list[str], cwd: Path = ROOT) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_checks_the_rules_and_the_scrape_config(promtool: str) -> None:
    assert f"SUCCESS: {len(rules())} rules found" in run([promtool, "check", "rules", str(RULES)])
    out = run([promtool, "check", "config", str(PROMETHEUS_YML)])
    assert "is valid prometheus config file syntax" in out and "rules.yml" in out


def test_promtool_unit_tests_pass(promtool: str) -> None:
    out = run([promtool, "test", "rules", str(RULES_TEST)])
    assert "SUCCESS" in out and "FAILED" not in out
