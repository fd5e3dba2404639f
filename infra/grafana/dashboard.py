"""The Grafana dashboard for the Prometheus metrics of the local or container run.

Built with Grafana's own typed builders (grafana-foundation-sdk), so a panel or query that does
not fit Grafana's dashboard schema fails here rather than on import. `dashboard.py` writes
`gateway.json` beside it; `dashboard.py --check` fails when the committed JSON differs from what
this file builds, and prints every panel query (one per line, `title<TAB>expr`) for the
Prometheus check in infra/grafana/check.
"""

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, Dashboard

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "gateway.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

# (row, [(title, unit, description, [(expr, legend)])])
ROWS = [
    (
        "Traffic",
        [
            ("Requests per second by status", "reqps",
             "Every answered request, by HTTP status.",
             [('sum by (status) (rate(gateway_requests_total[$__rate_interval]))', "{{status}}")]),
            ("Latency p50 / p95 (whole response)", "s",
             "Until the last byte; streams included, so it carries the provider's generation time.",
             [('histogram_quantile(0.5, sum by (le) (rate(gateway_request_duration_seconds_bucket[$__rate_interval])))', "p50"),
              ('histogram_quantile(0.95, sum by (le) (rate(gateway_request_duration_seconds_bucket[$__rate_interval])))', "p95")]),
            ("Time to first token p95 (streams)", "s",
             "What a streaming user waits before the first token.",
             [('histogram_quantile(0.95, sum by (le) (rate(gateway_time_to_first_token_seconds_bucket[$__rate_interval])))', "p95")]),
            ("Gateway overhead p95", "s",
             "Time spent in the gateway itself: latency minus the provider's part.",
             [('histogram_quantile(0.95, sum by (le) (rate(gateway_overhead_seconds_bucket[$__rate_interval])))', "p95")]),
        ],
    ),
    (
        "Providers",
        [
            ("Provider attempts by outcome", "reqps",
             "Every call to a provider, by provider kind and outcome (ok or the error class).",
             [('sum by (provider, outcome) (rate(gateway_provider_attempts_total[$__rate_interval]))', "{{provider}} {{outcome}}")]),
            ("Retries and fallbacks", "short",
             "Retries of a deployment by reason; moves to a fallback model by reason.",
             [('sum by (reason) (increase(gateway_retries_total[$__rate_interval]))', "retry {{reason}}"),
              ('sum by (from, to, reason) (increase(gateway_fallbacks_total[$__rate_interval]))', "fallback {{from}} -> {{to}} ({{reason}})")]),
            ("Circuit breaker transitions", "short",
             "State changes of each deployment's breaker (open, half_open, closed).",
             [('sum by (deployment, state) (increase(gateway_breaker_transitions_total[$__rate_interval]))', "{{deployment}} {{state}}")]),
            ("Broken streams", "short",
             "Streams that failed after their first token reached the client, by reason.",
             [('sum by (reason) (increase(gateway_broken_streams_total[$__rate_interval]))', "{{reason}}")]),
        ],
    ),
    (
        "Cache, tokens and cost",
        [
            ("Cache hit rate", "percentunit",
             "Hits over cacheable lookups (BYPASS excluded).",
             [('sum(rate(gateway_cache_total{result="HIT"}[$__rate_interval])) / sum(rate(gateway_cache_total{result=~"HIT|MISS"}[$__rate_interval]))', "hit rate")]),
            ("Cache lookups by result", "reqps",
             "HIT, MISS, BYPASS, and ERROR when the cache store failed (the request went on).",
             [('sum by (result) (rate(gateway_cache_total[$__rate_interval]))', "{{result}}")]),
            ("Tokens per second by model", "short",
             "Input and output tokens billed, by the model that answered.",
             [('sum by (model, direction) (rate(gateway_tokens_total[$__rate_interval]))', "{{model}} {{direction}}")]),
            ("Provider cost per hour by model", "currencyUSD",
             "Spend at the configured prices, extrapolated to an hour.",
             [('sum by (model) (rate(gateway_cost_usd_total[$__rate_interval])) * 3600', "{{model}}")]),
        ],
    ),
    (
        "Batch and guards",
        [
            ("Batch items by outcome", "short",
             "completed, failed, deferred (rate-limited, re-sent later), retried, dead_lettered.",
             [('sum by (result) (increase(gateway_batch_items_total[$__rate_interval]))', "{{result}}")]),
            ("Prompt-injection findings", "short",
             "By source (user, tool, retrieved), rule and the policy's action.",
             [('sum by (source, rule, action) (increase(gateway_guard_findings_total[$__rate_interval]))', "{{source}} {{rule}} {{action}}"),
              ('sum by (rule) (increase(gateway_rag_dropped_chunks_total[$__rate_interval]))', "dropped chunk {{rule}}")]),
            ("Personal data found", "short",
             "By kind and the policy's action (flag, redact, block).",
             [('sum by (kind, action) (increase(gateway_pii_findings_total[$__rate_interval]))', "{{kind}} {{action}}")]),
            ("Output validation", "short",
             "Answers checked against a response_format schema: valid, retried_valid, invalid.",
             [('sum by (model, result) (increase(gateway_output_validation_total[$__rate_interval]))', "{{model}} {{result}}")]),
        ],
    ),
]


def build() -> Dashboard:
    board = (
        dashboard.Dashboard("AI gateway")
        .uid("ai-gateway")
        .description("Prometheus metrics of gateway-local (the /metrics endpoint).")
        .tags(["ai-gateway"])
        .time("now-1h", "now")
        .refresh("30s")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
    )
    for row_title, panels in ROWS:
        board = board.with_row(dashboard.Row(row_title))
        for title, unit, description, queries in panels:
            panel = (
                (stat.Panel() if unit == "percentunit" else timeseries.Panel())
                .title(title)
                .description(description)
                .unit(unit)
                .datasource(DATASOURCE)
                .height(8)
                .span(6)
            )
            for ref, (expr, legend) in zip("ABCDEFGH", queries):
                panel = panel.with_target(
                    prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
                )
            board = board.with_panel(panel)
    return board.build()


def to_json(board: Dashboard) -> str:
    return json.dumps(board, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def queries(board: dict) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def main() -> int:
    text = to_json(build())
    if sys.argv[1:] != ["--check"]:
        OUTPUT.write_text(text)
        return 0
    committed = OUTPUT.read_text()
    if committed != text:
        print(f"{OUTPUT.name} differs from what dashboard.py builds: run infra/grafana/dashboard.py",
              file=sys.stderr)
        return 1
    # A round trip through Grafana's model: every field known, every type right.
    parsed = Dashboard.from_json(json.loads(committed))
    if to_json(parsed) != committed:
        print(f"{OUTPUT.name} does not round-trip through Grafana's Dashboard model", file=sys.stderr)
        return 1
    for title, expr in queries(json.loads(committed)):
        print(f"{title}\t{expr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
