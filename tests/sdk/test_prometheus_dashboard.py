"""The Grafana dashboard (infra/grafana/gateway.json) against a real Prometheus scraping a real
gateway: every panel's query is valid PromQL, names metrics the gateway exports, and, for the
panels the traffic here exercises, returns data (checked with `promtool query instant`).

Needs Debian's `prometheus` package (prometheus and promtool; tests/sdk/run installs it) and
grafana-foundation-sdk (tests/sdk/requirements.txt) for the dashboard's own check.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from conftest import REPO, Stack, prometheus_scraping

DASHBOARD = REPO / "infra" / "grafana" / "dashboard.py"
TELEMETRY = REPO / "shared" / "src" / "telemetry" / "mod.rs"
SCRAPE_INTERVAL_S = 1
QUERY_TIMEOUT_S = 30

# Panels whose queries must return data after the traffic below: every panel but the batch and
# guard ones (their traffic is tested in their own files; here their queries need only be valid).
MUST_HAVE_DATA = {
    "Requests per second by status",
    "Latency p50 / p95 (whole response)",
    "Time to first token p95 (streams)",
    "Gateway overhead p95",
    "Provider attempts by outcome",
    "Broken streams",
    "Cache hit rate",
    "Cache lookups by result",
    "Tokens per second by model",
    "Provider cost per hour by model",
}


def _panel_queries() -> list[tuple[str, str]]:
    result = subprocess.run(
        [sys.executable, str(DASHBOARD), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    queries = [tuple(line.split("\t", 1)) for line in result.stdout.splitlines()]
    assert len(queries) >= len(MUST_HAVE_DATA)
    return queries


def _query(prometheus_url: str, expr: str) -> list:
    # Grafana fills $__rate_interval; a minute spans many 1 s scrapes.
    expr = expr.replace("$__rate_interval", "1m")
    result = subprocess.run(
        ["promtool", "query", "instant", "-o", "json", prometheus_url, expr],
        capture_output=True,
        text=True,
        timeout=QUERY_TIMEOUT_S,
    )
    assert result.returncode == 0, f"{expr}: {result.stderr}"
    return json.loads(result.stdout or "[]")


def _traffic(client: openai.OpenAI) -> None:
    for _ in range(2):  # temperature 0: cacheable, and the second is a hit
        client.chat.completions.create(
            model="mock", temperature=0,
            messages=[{"role": "user", "content": "dashboard traffic"}],
        )
    with client.chat.completions.create(
        model="mock", stream=True, messages=[{"role": "user", "content": "a dashboard stream"}]
    ) as stream:
        assert any(chunk.choices for chunk in stream)
    with pytest.raises(openai.APIError):
        with client.chat.completions.create(
            model="upstream-cut", stream=True,
            messages=[{"role": "user", "content": "a stream that breaks"}],
        ) as stream:
            for _ in stream:
                pass
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="mock", messages=[])


def test_every_dashboard_query_runs_on_a_real_scrape(stack: Stack, make_client, tmp_path: Path):
    for tool in ("prometheus", "promtool"):
        assert shutil.which(tool), f"{tool} not installed (tests/sdk/run installs Debian's prometheus)"
    queries = _panel_queries()
    assert MUST_HAVE_DATA <= {title for title, _ in queries}

    scraper = stack.create_key("prometheus", "--scopes", "metrics")
    # Families without samples are not in a scrape: names are checked against the registry.
    registered = {
        f"gateway_{name}"
        for name in re.findall(r'registry\.register\(\s*"([a-z_]+)"', TELEMETRY.read_text())
    }
    for title, expr in queries:
        for name in re.findall(r"\b(gateway_[a-z_]+)", expr):
            family = re.sub(r"_(total|bucket|sum|count)$", "", name)
            assert family in registered, f"{title}: {name} is not a metric the gateway registers"

    with prometheus_scraping(stack, scraper.secret, tmp_path, SCRAPE_INTERVAL_S) as prometheus_url:
        # Samples before and after the traffic, so rate() sees it.
        time.sleep(3 * SCRAPE_INTERVAL_S)
        _traffic(make_client(scraper_less_key(stack)))
        time.sleep(4 * SCRAPE_INTERVAL_S)
        exposition = _scrape(stack, scraper.secret)
        lint = subprocess.run(
            ["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True,
            timeout=QUERY_TIMEOUT_S,
        )
        # promtool exits 3 for lint findings (style), 1 for an exposition it cannot parse.
        assert lint.returncode in (0, 3), lint.stderr
        empty = []
        for title, expr in queries:
            series = _query(prometheus_url, expr)
            if title in MUST_HAVE_DATA and not series:
                empty.append(f"{title}: {expr}")
        assert not empty, "panels without data after the traffic:\n" + "\n".join(empty)


def _scrape(stack: Stack, secret: str) -> str:
    request = urllib.request.Request(
        f"{stack.gateway_url}/metrics", headers={"Authorization": f"Bearer {secret}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def scraper_less_key(stack: Stack) -> str:
    return stack.create_key("dashboard-traffic").secret
