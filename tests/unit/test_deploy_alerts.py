"""deploy/prometheus: alert rules are well-formed PromQL over metrics the services export.

PromQL is parsed with promql-parser (PyPI; the Rust parser used by GreptimeDB)
when installed. No Prometheus runs here, so ``promtool check rules`` is not
run; the structure it checks (groups, alert, expr, for, labels) is checked below.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
OPERATIONS = ROOT / "docs/operations.md"
# Which module registers each family of heatmap_* metrics.
OWNERS = {
    "heatmap_rpc_": ROOT / "heatmap/grpc_server.py",
    "heatmap_gateway_": ROOT / "ingest_gateway/metrics.py",
    "heatmap_worker_": ROOT / "stream_workers/metrics.py",
    "heatmap_query_": ROOT / "query_api/metrics.py",
    "heatmap_screenshot_": ROOT / "query_api/metrics.py",
}
_SUFFIX = re.compile(r"_(total|bucket|count|sum|created)$")


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _ids(rules: list[dict[str, Any]]) -> list[str]:
    return [r["alert"] for r in rules]


def test_groups_and_alert_names_are_unique() -> None:
    data = yaml.safe_load(ALERTS.read_text())
    groups = [g["name"] for g in data["groups"]]
    assert len(groups) == len(set(groups))
    names = _ids(_rules())
    assert len(names) == len(set(names))


@pytest.mark.parametrize("rule", _rules(), ids=_ids(_rules()))
def test_rule_shape(rule: dict[str, Any]) -> None:
    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
    assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"])
    assert re.fullmatch(r"\d+[smh]", rule["for"])
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert {"summary", "description", "runbook"} <= set(rule["annotations"])


@pytest.mark.parametrize("rule", _rules(), ids=_ids(_rules()))
def test_expressions_parse_as_promql(rule: dict[str, Any]) -> None:
    promql = pytest.importorskip("promql_parser", reason="pip install promql-parser")
    promql.parse(rule["expr"])


def test_lag_and_errors_are_covered() -> None:
    exprs = " ".join(r["expr"] for r in _rules())
    for needed in (
        "kafka_consumergroup_lag",
        "heatmap_worker_consumer_lag",
        "heatmap_rpc_errors_total",
        "heatmap_worker_dead_letters_total",
        "heatmap_worker_clickhouse_failures_total",
        "heatmap_gateway_kafka_healthy",
    ):
        assert needed in exprs, needed


def test_heatmap_metrics_in_rules_are_registered_by_the_services() -> None:
    used = {m for r in _rules() for m in re.findall(r"\bheatmap_[a-z_]+\b", r["expr"])}
    assert used
    for metric in sorted(used):
        base = _SUFFIX.sub("", metric)
        owner = next(path for prefix, path in OWNERS.items() if base.startswith(prefix))
        if not owner.exists():
            continue  # that stage is not in this checkout yet
        assert f'"{base}"' in owner.read_text() or f'"{metric}"' in owner.read_text(), (
            f"{metric} is not registered in {owner.relative_to(ROOT)}"
        )


def test_scrape_jobs_match_the_rules() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"heatmap-gateway", "heatmap-query-api", "heatmap-worker", "heatmap-envoy"}
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_every_runbook_anchor_exists_in_the_operations_guide() -> None:
    if not OPERATIONS.exists():
        pytest.fail("docs/operations.md is missing")
    headings = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }
    for rule in _rules():
        runbook = rule["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/operations.md"
        assert anchor in headings, f"{rule['alert']}: no heading for #{anchor}"
