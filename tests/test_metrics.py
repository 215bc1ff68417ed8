"""``/metrics`` of a live server: the gRPC series, the Select series by strategy (counts
equal to the calls made), errors by code and reason, the process collectors, and the
Grafana dashboard in ``deploy/grafana`` reading only series the server exposes."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from assay.client import AssayError, Client
from assay.server.wiring.app import start
from assay.server.wiring.config import ServerConfig

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "assay.json"
PROBS = np.random.default_rng(7).dirichlet(np.ones(3), size=40).astype(np.float32)
SERVICE = "assay.v1.AssayService"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode(), response.headers["Content-Type"]


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples, name: str, **labels: str) -> float:
    """The one sample ``name`` whose labels include ``labels`` (0 when there is none)."""
    found = [v for n, ls, v in samples if n == name and labels.items() <= ls.items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """A server that answered three Selects (two inline, one from a pool with 3 labeled
    items), an upload and three failing calls; its /metrics text, and what the calls said."""
    port = _free_port()
    srv = start(ServerConfig(address="127.0.0.1:0", data_dir=str(tmp_path_factory.mktemp("m")),
                             grace_seconds=0.5, warmup=False, metrics_port=port))
    try:
        seen = {}
        with Client(f"127.0.0.1:{srv.port}", timeout=30, retries=0) as c:
            seen["inline"] = [c.select("entropy", 2, probs=PROBS),
                              c.select("entropy", 3, probs=PROBS, exclude=np.arange(5))]
            c.create_pool("p")
            c.append("p", probs=PROBS)
            c.label("p", [0, 1, 2], [0, 1, 2])
            seen["pool"] = c.select("margin", 4, pool="p")
            for name, call in (("absent", lambda: c.get_pool("absent")),
                               ("budget", lambda: c.select("entropy", 100, probs=PROBS)),
                               ("unknown", lambda: c.select("no-such-strategy", 1, probs=PROBS))):
                with pytest.raises(AssayError) as err:
                    call()
                seen[name] = err.value
        text, content_type = _scrape(port)
        open_text, open_type = _scrape(port, "application/openmetrics-text; version=1.0.0")
        yield {"text": text, "samples": _samples(text), "content_type": content_type,
               "open_text": open_text, "open_type": open_type, "seen": seen, "server": srv}
    finally:
        srv.stop(0)


def test_grpc_series_keep_their_names_and_labels(scraped):
    s = scraped["samples"]
    assert scraped["content_type"].startswith("text/plain")
    assert _value(s, "grpc_server_handled_total", grpc_service=SERVICE, grpc_method="Select",
                  grpc_code="OK") == 3
    assert _value(s, "grpc_server_handled_total", grpc_method="GetPool",
                  grpc_code="NOT_FOUND") == 1
    assert _value(s, "grpc_server_handling_seconds_count", grpc_service=SERVICE,
                  grpc_method="Select") == 5
    assert _value(s, "grpc_server_handling_seconds_bucket", grpc_method="Select",
                  le="+Inf") == 5
    assert _value(s, "assay_received_bytes_total") == PROBS.nbytes


def test_select_series_by_strategy_count_the_calls_made(scraped):
    s, seen = scraped["samples"], scraped["seen"]
    backend = seen["inline"][0].backend
    assert {x.backend for x in seen["inline"]} == {backend}
    entropy = {"strategy": "entropy", "backend": backend}
    assert _value(s, "assay_select_seconds_count", **entropy) == 2
    assert _value(s, "assay_select_seconds_sum", **entropy) > 0
    assert _value(s, "assay_select_items_scored_total", **entropy) == 40 + 35
    assert _value(s, "assay_select_read_bytes_total", **entropy) == 2 * PROBS.nbytes
    assert _value(s, "assay_select_budget_count", strategy="entropy") == 2
    assert _value(s, "assay_select_budget_sum", strategy="entropy") == 2 + 3
    assert _value(s, "assay_select_budget_bucket", strategy="entropy", le="2.0") == 1
    assert _value(s, "assay_select_budget_bucket", strategy="entropy", le="5.0") == 2
    assert _value(s, "assay_kernel_seconds_total", **entropy) >= 0
    margin = {"strategy": "margin", "backend": seen["pool"].backend}
    assert _value(s, "assay_select_seconds_count", **margin) == 1
    assert _value(s, "assay_select_items_scored_total", **margin) == 40 - 3
    assert _value(s, "assay_select_read_bytes_total", **margin) == PROBS.nbytes
    # Failed Selects count as errors only: a name a caller made up never becomes a label.
    assert not [ls for _, ls, _ in s if ls.get("strategy") == "no-such-strategy"]


def test_errors_are_counted_by_code_and_reason(scraped):
    s, seen = scraped["samples"], scraped["seen"]
    for name, method in (("absent", "GetPool"), ("budget", "Select"), ("unknown", "Select")):
        error = seen[name]
        assert error.reason, name
        assert _value(s, "assay_rpc_errors_total", grpc_service=SERVICE, grpc_method=method,
                      grpc_code=error.code.name, reason=error.reason) == 1, (name, error)
    errors = sum(v for n, _, v in s if n == "assay_rpc_errors_total")
    assert errors == 3


def test_process_metrics_and_openmetrics_come_from_the_library(scraped):
    names = {n for n, _, _ in scraped["samples"]}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
            "process_start_time_seconds", "python_info",
            "python_gc_collections_total"} <= names
    assert not [n for n in names if n.endswith("_created")]
    assert scraped["open_type"].startswith("application/openmetrics-text")
    assert scraped["open_text"].endswith("# EOF\n")


def test_each_server_has_its_own_registry(scraped, server_factory):
    other = server_factory()
    with Client(f"127.0.0.1:{other.port}", timeout=30) as c:
        c.list_strategies()
    text = other.metrics.render()
    assert "assay_select_seconds_count" not in text
    assert 'grpc_method="ListStrategies"' in text
    assert 'grpc_method="ListStrategies"' not in scraped["text"]


# -- the Grafana dashboard --------------------------------------------------------------------

_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}


def _metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", expr):
        if not expr[m.end():].lstrip().startswith("(") and m.group() not in _NOT_METRICS:
            names.add(m.group())
    return names


def _grouping(expr: str) -> set[str]:
    return {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr)
            for label in group.split(",")} - {""}


def test_metric_names_of_an_expression():
    assert _metric_names('histogram_quantile(0.5, sum by (le, strategy) (rate('
                         'a_b_bucket{instance=~"$i"}[5m]))) / sum(rate(c_total[1m]))') == \
        {"a_b_bucket", "c_total"}


def test_the_dashboard_reads_only_series_the_server_exposes(scraped):
    dashboard = json.loads(DASHBOARD.read_text())
    labels: dict[str, set[str]] = {}
    for name, ls, _ in scraped["samples"]:
        labels.setdefault(name, set()).update(ls)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    read = set()
    for expr in exprs:
        names = _metric_names(expr)
        assert names, expr
        missing = names - labels.keys()
        assert not missing, (missing, expr)
        read |= names
        # Prometheus adds instance and job to every scraped series.
        known = set().union(*(labels[n] for n in names)) | {"instance", "job"}
        assert _grouping(expr) <= known, (expr, known)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["definition"])
            assert metric and metric.group(1) in labels, variable["definition"]
    # Every Select series is on the dashboard.
    assert {"assay_select_seconds_bucket", "assay_select_items_scored_total",
            "assay_select_read_bytes_total", "assay_select_budget_sum",
            "assay_rpc_errors_total", "assay_kernel_seconds_total"} <= read
