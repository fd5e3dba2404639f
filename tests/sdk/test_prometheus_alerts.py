"""The alert rules (infra/prometheus/alerts.yml): their promtool unit tests pass, and on a real
Prometheus scraping a real gateway-local none fires on healthy traffic, while each fault the
traffic here can cause fires its alert: slow first tokens, broken streams, cache misses, cost.

The rules are rendered with short windows and `for:` so this takes seconds; their thresholds are
the committed ones. Gateway overhead cannot be slowed from outside the process: its rule is
covered by the unit tests (and checked quiet here). Needs Debian's `prometheus` package
(tests/sdk/run installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from conftest import REPO, Stack, prometheus_scraping

RULES = REPO / "infra" / "prometheus" / "alerts.yml"
RULES_TEST = REPO / "infra" / "prometheus" / "alerts_test.yml"
INTERVAL_S = 1
# Every rate window of the rules becomes this: long enough for the traffic below and a few
# scrapes, short enough that the test takes seconds.
WINDOW_S = 60
ALERT_TIMEOUT_S = 30
ALERTS = {
    "GatewayTimeToFirstTokenP95High",
    "GatewayOverheadP95High",
    "GatewayErrorRateHigh",
    "GatewayCacheHitRateLow",
    "GatewayCostPerHourHigh",
}
# All but the overhead alert, which no request from outside can drive.
FAULT_ALERTS = ALERTS - {"GatewayOverheadP95High"}


def _render_rules(target: Path) -> None:
    text = RULES.read_text()
    windows = re.findall(r"\[(\d+[smh])\]", text)
    assert windows, "no rate windows found in alerts.yml"
    text = re.sub(r"\[\d+[smh]\]", f"[{WINDOW_S}s]", text)
    text = re.sub(r"^(\s+for:) \S+$", rf"\1 {INTERVAL_S}s", text, flags=re.MULTILINE)
    target.write_text(text)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def _alerts(prometheus_url: str) -> dict[str, str]:
    return {
        alert["labels"]["alertname"]: alert["state"]
        for alert in _get(f"{prometheus_url}/api/v1/alerts")["alerts"]
    }


def _wait_scraped(prometheus_url: str) -> None:
    """Prometheus hands its scrapers their targets some seconds after it is ready."""
    deadline = time.monotonic() + ALERT_TIMEOUT_S
    while time.monotonic() < deadline:
        targets = _get(f"{prometheus_url}/api/v1/targets")["activeTargets"]
        if targets and all(target["health"] == "up" for target in targets):
            return
        time.sleep(0.2)
    raise AssertionError(f"the gateway was not scraped in {ALERT_TIMEOUT_S}s: {targets}")


def _value(prometheus_url: str, expr: str) -> float:
    query = urllib.parse.urlencode({"query": expr})
    result = _get(f"{prometheus_url}/api/v1/query?{query}")["result"]
    return float(result[0]["value"][1]) if result else 0.0


def _broken_stream(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError):
        with client.chat.completions.create(
            model="upstream-cut-alerts", stream=True,
            messages=[{"role": "user", "content": "a stream that breaks"}],
        ) as stream:
            for _ in stream:
                pass


def _start_series(client: openai.OpenAI) -> None:
    """A counter's first sample is its start, so a series born during the window would hide the
    traffic that created it: one request of each kind before Prometheus starts, as on a gateway
    that has been up a while."""
    for _ in range(2):  # a miss, then a hit
        client.chat.completions.create(
            model="mock", temperature=0, messages=[{"role": "user", "content": "warm-up"}]
        )
    client.chat.completions.create(model="pricey", messages=[{"role": "user", "content": "hi"}])
    _broken_stream(client)


def _window_totals(prometheus_url: str) -> dict[str, float]:
    """What the rules saw, for a failure's message."""
    return {
        series: _value(prometheus_url, f"sum(increase({series}[{WINDOW_S}s]))")
        for series in (
            "gateway_requests_total", 'gateway_requests_total{status=~"5.."}',
            "gateway_broken_streams_total", 'gateway_cache_total{result="HIT"}',
            'gateway_cache_total{result="MISS"}', "gateway_cost_usd_total",
            'gateway_time_to_first_token_seconds_bucket{le="2.5"}',
            'gateway_time_to_first_token_seconds_bucket{le="+Inf"}',
        )
    }


def _healthy_traffic(client: openai.OpenAI) -> None:
    # Twenty cacheable requests (1 miss, 19 hits) and three fast streams: the error rate's and the
    # cache's minimum volumes are reached, so their quiet means something.
    for _ in range(20):
        client.chat.completions.create(
            model="mock", temperature=0, messages=[{"role": "user", "content": "healthy alerts"}]
        )
    for _ in range(3):
        with client.chat.completions.create(
            model="mock", stream=True, messages=[{"role": "user", "content": "a healthy stream"}]
        ) as stream:
            assert any(chunk.choices for chunk in stream)


def _slow_stream(client: openai.OpenAI) -> None:
    with client.chat.completions.create(
        model="slow-first-token", stream=True, messages=[{"role": "user", "content": "slow"}]
    ) as stream:
        assert any(chunk.choices for chunk in stream)


def _fault_traffic(client: openai.OpenAI) -> None:
    with ThreadPoolExecutor(max_workers=6) as pool:
        slow = [pool.submit(_slow_stream, client) for _ in range(6)]
        for _ in range(25):  # broken after their first token: failures answered 200
            _broken_stream(client)
        for i in range(40):  # cacheable but never repeated: misses only
            client.chat.completions.create(
                model="mock", temperature=0, messages=[{"role": "user", "content": f"miss {i}"}]
            )
        for _ in range(4):  # about 20 tokens at 1 USD each
            client.chat.completions.create(
                model="pricey", messages=[{"role": "user", "content": "an expensive question"}]
            )
        for future in slow:
            future.result(timeout=30)


def test_alert_rules_unit_tests():
    assert shutil.which("promtool"), "promtool not installed (tests/sdk/run installs Debian's prometheus)"
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_alerts_quiet_when_healthy_and_fire_on_faults(stack: Stack, make_client, tmp_path: Path):
    assert shutil.which("prometheus"), "prometheus not installed (tests/sdk/run installs it)"
    scraper = stack.create_key("alerts-scraper", "--scopes", "metrics")
    client = make_client(stack.create_key("alerts-traffic").secret)

    _start_series(client)
    rules = tmp_path / "alerts.yml"
    _render_rules(rules)
    with prometheus_scraping(stack, scraper.secret, tmp_path, INTERVAL_S, rules) as prometheus_url:
        groups = _get(f"{prometheus_url}/api/v1/rules")["groups"]
        assert {rule["name"] for group in groups for rule in group["rules"]} == ALERTS

        # Healthy: samples before and after the traffic, then a few evaluations.
        _wait_scraped(prometheus_url)
        time.sleep(2 * INTERVAL_S)
        _healthy_traffic(client)
        time.sleep(5 * INTERVAL_S)
        window = f"[{WINDOW_S}s]"
        assert _value(prometheus_url, f"sum(increase(gateway_requests_total{window}))") >= 20
        assert _value(prometheus_url, f'sum(increase(gateway_cache_total{{result=~"HIT|MISS"}}{window}))') >= 10
        assert _alerts(prometheus_url) == {}, "alerts on healthy traffic"
        for group in _get(f"{prometheus_url}/api/v1/rules")["groups"]:
            for rule in group["rules"]:
                assert rule["health"] == "ok", rule

        started = time.monotonic()
        _fault_traffic(client)
        traffic_s = time.monotonic() - started
        # Each alert resolves once its faults leave the window: collect every one seen firing.
        fired: set[str] = set()
        deadline = time.monotonic() + ALERT_TIMEOUT_S
        while time.monotonic() < deadline and not fired >= FAULT_ALERTS:
            fired |= {name for name, state in _alerts(prometheus_url).items() if state == "firing"}
            time.sleep(INTERVAL_S)
        assert fired == FAULT_ALERTS, (
            f"{sorted(fired)} fired in {time.monotonic() - started:.1f}s after the faults began, "
            f"which took {traffic_s:.1f}s; in the window: {_window_totals(prometheus_url)}"
        )
