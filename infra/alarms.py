#!/usr/bin/env python3
"""Alarm tests: every CloudWatch alarm of infra/template.yaml fires on its fault and only on it.

No emulator evaluates alarms, so this file holds a small evaluator of the alarm definitions
(single metrics and metric math: FILL, IF, + - * /, comparisons; Sum, SampleCount, Average,
Minimum, Maximum, pNN; Period, EvaluationPeriods, DatapointsToAlarm, Threshold,
ComparisonOperator, TreatMissingData) and feeds it scenarios:

- the EMF lines a real `gateway-local` writes (with AWS_LAMBDA_FUNCTION_NAME set it writes the
  same lines as the chat Lambda function) while it answers a healthy run and each fault run
  against the mock provider (`mock-provider`, faults chosen by model name);
- the authorizer's failure line, from infra/emf/authorizer-failure.json, which a unit test of
  shared/src/telemetry checks is exactly what the code writes;
- for AWS-namespace metrics (Lambda Errors, DynamoDB throttle events, SQS message age), the
  datapoints the fault would produce, synthesized here (marked `synthesized` below).

Each scenario's data is repeated in every evaluated period (a fault that lasts). A scenario
names the alarms it must set off; every other alarm of the template must stay quiet.

Usage: infra/alarms.py [--bin-dir DIR] [--template PATH] [--keep-captures DIR]
Binaries: --bin-dir, else $GATEWAY_BIN_DIR, else $CARGO_TARGET_DIR/debug, else target/debug.
Runs with the infra venv's Python (aws-sam-translator parses the template). Exits non-zero when
an alarm misbehaves or the binaries are missing.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
START_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 60.0

# ------------------------------------------------------------------ metric data


@dataclass
class Data:
    """Datapoints of one period: (namespace, metric, dimensions) -> values."""

    series: dict = field(default_factory=dict)

    def add(self, namespace: str, metric: str, dimensions: dict, values: list) -> None:
        key = (namespace, metric, tuple(sorted(dimensions.items())))
        self.series.setdefault(key, []).extend(float(v) for v in values)

    def values(self, namespace: str, metric: str, dimensions: dict) -> list:
        # CloudWatch matches the exact set of dimensions.
        return self.series.get((namespace, metric, tuple(sorted(dimensions.items()))), [])


def emf_datapoints(line: str, data: Data) -> bool:
    """Adds the metrics of one EMF line; False for a line that is not EMF. Checks the line is
    valid EMF: each dimension and metric a directive names is a field of the line."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError:
        return False
    if not isinstance(doc, dict) or "_aws" not in doc:
        return False
    aws = doc["_aws"]
    assert isinstance(aws.get("Timestamp"), int), f"EMF line without a Timestamp: {line}"
    for directive in aws["CloudWatchMetrics"]:
        namespace = directive["Namespace"]
        for dimension_set in directive["Dimensions"]:
            assert len(dimension_set) <= 30, f"too many dimensions: {line}"
            missing = [d for d in dimension_set if d not in doc]
            assert not missing, f"EMF dimension(s) {missing} not in the line: {line}"
            dimensions = {d: str(doc[d]) for d in dimension_set}
            for metric in directive["Metrics"]:
                name = metric["Name"]
                assert name in doc, f"EMF metric {name} not in the line: {line}"
                value = doc[name]
                data.add(namespace, name, dimensions, value if isinstance(value, list) else [value])
    return True


def statistic(values: list, stat: str):
    if not values:
        return None
    if stat == "Sum":
        return sum(values)
    if stat == "SampleCount":
        return float(len(values))
    if stat == "Average":
        return sum(values) / len(values)
    if stat == "Maximum":
        return max(values)
    if stat == "Minimum":
        return min(values)
    match = re.fullmatch(r"p(\d+(?:\.\d+)?)", stat)
    if match:
        ordered = sorted(values)
        rank = math.ceil(float(match.group(1)) / 100 * len(ordered))
        return ordered[max(rank, 1) - 1]
    raise ValueError(f"unsupported statistic {stat}")


# ------------------------------------------------------------------ metric math


def evaluate_expression(text: str, values: dict):
    """One period's value of a metric math expression over `values` (id -> float or None)."""
    python = text.replace("&&", " and ").replace("||", " or ")
    python = re.sub(r"\bAND\b", " and ", python)
    python = re.sub(r"\bOR\b", " or ", python)
    tree = ast.parse(python, mode="eval")

    def number(v):
        return None if v is None else float(v)

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in values:
                raise KeyError(f"expression `{text}` refers to unknown id `{node.id}`")
            return number(values[node.id])
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = walk(node.operand)
            return None if v is None else -v
        if isinstance(node, ast.BinOp):
            a, b = walk(node.left), walk(node.right)
            if a is None or b is None:
                return None
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.Div):
                return None if b == 0 else a / b
            raise ValueError(f"unsupported operator in `{text}`")
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            a, b = walk(node.left), walk(node.comparators[0])
            if a is None or b is None:
                return None
            op = node.ops[0]
            result = {ast.Gt: a > b, ast.Lt: a < b, ast.GtE: a >= b, ast.LtE: a <= b,
                      ast.Eq: a == b, ast.NotEq: a != b}[type(op)]
            return 1.0 if result else 0.0
        if isinstance(node, ast.BoolOp):
            parts = [walk(v) for v in node.values]
            if any(p is None for p in parts):
                return None
            truth = all(parts) if isinstance(node.op, ast.And) else any(parts)
            return 1.0 if truth else 0.0
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name, args = node.func.id, node.args
            if name == "FILL":
                v = walk(args[0])
                return walk(args[1]) if v is None else v
            if name == "IF":
                condition = walk(args[0])
                if condition is None:
                    return None
                if condition != 0:
                    return walk(args[1])
                return walk(args[2]) if len(args) > 2 else None
            raise ValueError(f"unsupported function {name} in `{text}`")
        raise ValueError(f"unsupported syntax in `{text}`")

    return walk(tree)


# ------------------------------------------------------------------ alarms


@dataclass
class Alarm:
    name: str
    props: dict  # evaluated properties (intrinsics resolved)

    def check_definition(self) -> list:
        """What CloudWatch would refuse: at most 10 metrics and 10 expressions, one returned."""
        problems = []
        queries = self.props.get("Metrics")
        if not queries:
            return problems
        stats = [q for q in queries if "MetricStat" in q]
        expressions = [q for q in queries if "Expression" in q]
        if len(stats) > 10:
            problems.append(f"{self.name}: {len(stats)} metrics (CloudWatch allows 10)")
        if len(expressions) > 10:
            problems.append(f"{self.name}: {len(expressions)} expressions (CloudWatch allows 10)")
        returned = [q["Id"] for q in queries if q.get("ReturnData", True) in (True, "true")]
        if len(returned) != 1:
            problems.append(f"{self.name}: {len(returned)} queries return data (must be 1)")
        for q in queries:
            if not re.fullmatch(r"[a-z][A-Za-z0-9_]*", q["Id"]):
                problems.append(f"{self.name}: id `{q['Id']}` must start with a lowercase letter")
        return problems

    def period_value(self, data: Data):
        props = self.props
        if "Metrics" not in props:
            stat = props.get("ExtendedStatistic") or props["Statistic"]
            dims = {d["Name"]: d["Value"] for d in props.get("Dimensions", [])}
            return statistic(data.values(props["Namespace"], props["MetricName"], dims), stat)
        values, pending = {}, []
        for query in props["Metrics"]:
            if "MetricStat" in query:
                stat = query["MetricStat"]
                metric = stat["Metric"]
                dims = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
                values[query["Id"]] = statistic(
                    data.values(metric["Namespace"], metric["MetricName"], dims), stat["Stat"])
            else:
                pending.append(query)
        # Expressions may refer to each other: evaluate until every one has a value.
        returned = None
        for _ in range(len(pending) + 1):
            for query in list(pending):
                try:
                    values[query["Id"]] = evaluate_expression(query["Expression"], values)
                except KeyError:
                    continue
                pending.remove(query)
            if not pending:
                break
        if pending:
            raise ValueError(f"{self.name}: unresolvable expressions {[q['Id'] for q in pending]}")
        for query in props["Metrics"]:
            if query.get("ReturnData", True) in (True, "true"):
                returned = values[query["Id"]]
        return returned

    def fires(self, periods: list) -> tuple[bool, list]:
        """Whether the alarm is in ALARM after the last EvaluationPeriods periods of `periods`."""
        props = self.props
        evaluation = int(props["EvaluationPeriods"])
        needed = int(props.get("DatapointsToAlarm", evaluation))
        threshold = float(props["Threshold"])
        compare = {
            "GreaterThanThreshold": lambda v: v > threshold,
            "GreaterThanOrEqualToThreshold": lambda v: v >= threshold,
            "LessThanThreshold": lambda v: v < threshold,
            "LessThanOrEqualToThreshold": lambda v: v <= threshold,
        }[props["ComparisonOperator"]]
        missing = props.get("TreatMissingData", "missing")
        window = [self.period_value(data) for data in periods[-evaluation:]]
        breaching = 0
        for value in window:
            if value is None:
                breaching += missing == "breaching"
            else:
                breaching += compare(value)
        present = [v for v in window if v is not None]
        if not present and missing in ("missing", "ignore"):
            return False, window  # stays in its state: no alarm from nothing
        return breaching >= needed, window


def load_alarms(template_path: Path, overrides: dict) -> list:
    sys.path.insert(0, str(HERE))
    from contract import Template  # noqa: E402  (infra/contract.py)
    from samtranslator.yaml_helper import yaml_parse

    doc = yaml_parse(template_path.read_text(encoding="utf-8"))
    unknown = sorted(set(overrides) - set(doc.get("Parameters", {})))
    if unknown:
        raise SystemExit(f"alarms: unknown parameter(s) {unknown}")
    template = Template(doc, overrides)
    alarms = []
    for name, resource in doc["Resources"].items():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        condition = resource.get("Condition")
        if condition and not template.condition(condition):
            continue
        alarms.append(Alarm(name, template.eval(resource["Properties"])))
    return alarms, template


# ------------------------------------------------------------------ a real gateway


CONFIG = """\
[routing]
max_attempts = 2
backoff_base_ms = 10
backoff_max_ms = 20
breaker = {{ consecutive_failures = 1000, failure_rate = 1.0, window = 1000, min_requests = 1000, open_ms = 1000 }}

[providers.upstream]
kind = "openai"
base_url = "{mock_url}/v1"
api_key_env = "ALARMS_UPSTREAM_KEY"

[models.healthy]
deployments = [{{ provider = "upstream", model = "gpt-test" }}]
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.6 }}

[models.failing]
deployments = [{{ provider = "upstream", model = "fault:status=500" }}]

[models.cut]
deployments = [{{ provider = "upstream", model = "fault:tokens=20;cut_after=5" }}]

[models.slow-first-token]
deployments = [{{ provider = "upstream", model = "fault:first_token_ms={first_token_ms}" }}]
"""


class Gateway:
    """mock-provider and gateway-local (EMF on: AWS_LAMBDA_FUNCTION_NAME is the chat function's
    name in the template), in a temporary folder; stdout holds the EMF lines."""

    def __init__(self, bin_dir: Path, function_name: str, work: Path, first_token_ms: int):
        self.work = work
        self.processes = []
        try:
            self.start(bin_dir, function_name, first_token_ms)
        except BaseException:
            self.stop()
            raise

    def start(self, bin_dir: Path, function_name: str, first_token_ms: int):
        work = self.work
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GATEWAY_", "OPENAI_", "ANTHROPIC_", "MOCK_", "AWS_"))}
        env["RUST_LOG"] = "warn"
        mock, mock_address = self.spawn([str(bin_dir / "mock-provider"), "--listen", "127.0.0.1:0"],
                                         env, "mock", r"^listening on http://(\S+)$")
        config = work / "gateway.toml"
        config.write_text(CONFIG.format(mock_url=f"http://{mock_address}", first_token_ms=first_token_ms))
        data_dir = work / "data"
        data_dir.mkdir()
        env = dict(env, ALARMS_UPSTREAM_KEY="unused", AWS_LAMBDA_FUNCTION_NAME=function_name)
        created = subprocess.run([str(bin_dir / "gateway-local"), "keys", "create", "--name", "alarms",
                                  "--data-dir", str(data_dir)], env=env, capture_output=True,
                                 text=True, timeout=30, check=True)
        self.key = created.stdout.strip()
        gateway, address = self.spawn(
            [str(bin_dir / "gateway-local"), "--listen", "127.0.0.1:0", "--config", str(config),
             "--data-dir", str(data_dir)], env, "gateway", r"^AI gateway listening on http://(\S+) ")
        self.url = f"http://{address}"
        self.stdout = work / "gateway.stdout.log"

    def spawn(self, args, env, name, banner):
        out = open(self.work / f"{name}.stdout.log", "wb")
        err = open(self.work / f"{name}.stderr.log", "wb")
        process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                   cwd=self.work)
        self.processes.append(process)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            first = (self.work / f"{name}.stdout.log").read_text(errors="replace").partition("\n")
            if first[1]:
                match = re.search(banner, first[0])
                if not match:
                    raise RuntimeError(f"{name}: unexpected first line {first[0]!r}")
                return process, match.group(1)
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited: {(self.work / f'{name}.stderr.log').read_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"{name} did not start in {START_TIMEOUT_S} s")

    def stop(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)

    def chat(self, model: str, stream: bool = False, key: str | None = None, body: dict | None = None,
             prompt_bytes: int = 0) -> int:
        """One chat completion, read to its end; returns the status."""
        prompt = f"alarm test {os.urandom(8).hex()}" + " lorem" * (prompt_bytes // 6)
        payload = body if body is not None else {
            "model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]}
        request = urllib.request.Request(
            f"{self.url}/v1/chat/completions", data=json.dumps(payload).encode(), method="POST",
            headers={"Authorization": f"Bearer {key or self.key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                response.read()
                return response.status
        except urllib.error.HTTPError as error:
            error.read()
            return error.code

    def run(self, calls: list) -> tuple[list, list]:
        """Runs `calls` (kwargs of `chat`) eight at a time; returns the statuses and the EMF lines
        the gateway wrote meanwhile."""
        start = self.stdout.stat().st_size
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda kwargs: self.chat(**kwargs), calls))
        time.sleep(0.2)  # a stream's line is written as its body ends
        with open(self.stdout, "rb") as out:
            out.seek(start)
            lines = out.read().decode().splitlines()
        return statuses, lines


# ------------------------------------------------------------------ scenarios


@dataclass
class Scenario:
    name: str
    expect: set  # the alarms that must fire; every other one must stay quiet
    lines: list = field(default_factory=list)  # EMF lines of one period
    synthesized: list = field(default_factory=list)  # (namespace, metric, dims, values)

    def period(self) -> Data:
        data = Data()
        for line in self.lines:
            emf_datapoints(line, data)
        for namespace, metric, dims, values in self.synthesized:
            data.add(namespace, metric, dims, values)
        return data


def healthy_aws(template, rejected_keys: int) -> list:
    """Synthesized: what AWS reports for a healthy period. Each rejected key is an authorizer
    invocation that failed with "Unauthorized", a Lambda error of the authorizer."""
    fn = lambda lid: {"FunctionName": template.ref(lid)}  # noqa: E731
    table = lambda lid: {"TableName": template.ref(lid)}  # noqa: E731
    queue = lambda lid: {"QueueName": template.getatt(lid, "QueueName")}  # noqa: E731
    points = [("AWS/Lambda", "Errors", fn("AuthorizerFunction"), [rejected_keys])]
    for lid in ("ChatFunction", "AdminFunction", "IngestFunction", "BatchFunction"):
        points.append(("AWS/Lambda", "Errors", fn(lid), [0]))
    for lid in ("KeysTable", "LimitsTable", "CacheTable", "ResponsesTable", "AuditTable", "BatchTable",
                "CollectionsTable"):
        points.append(("AWS/DynamoDB", "ReadThrottleEvents", table(lid), [0]))
        points.append(("AWS/DynamoDB", "WriteThrottleEvents", table(lid), [0]))
    points.append(("AWS/SQS", "ApproximateAgeOfOldestMessage", queue("BatchQueue"), [40]))
    points.append(("AWS/SQS", "ApproximateAgeOfOldestMessage", queue("IngestQueue"), [5]))
    return points


def scenarios(gateway: Gateway, template) -> list:
    healthy_calls = ([dict(model="healthy")] * 16 + [dict(model="healthy", stream=True)] * 6
                     + [dict(model="healthy", key="gw-not-a-key")] * 3
                     + [dict(model="healthy", body={"model": "healthy"})] * 2
                     + [dict(model="no-such-model")] * 2)
    statuses, healthy = gateway.run(healthy_calls)
    assert statuses.count(200) == 22 and statuses.count(401) == 3, f"healthy run answered {statuses}"
    assert sum(400 <= s < 500 for s in statuses) == 7, f"healthy run answered {statuses}"

    statuses, failing = gateway.run([dict(model="healthy")] * 20 + [dict(model="failing")] * 3)
    assert statuses.count(200) == 20 and all(s >= 500 for s in statuses[20:]), statuses
    statuses, cut = gateway.run([dict(model="healthy")] * 20 + [dict(model="cut", stream=True)] * 3)
    assert statuses == [200] * 23, f"cut streams answer 200 before they break: {statuses}"
    statuses, quiet = gateway.run([dict(model="healthy")] * 4 + [dict(model="failing")] * 3)
    statuses, slow_first = gateway.run([dict(model="slow-first-token", stream=True)] * 20)
    assert statuses == [200] * 20, statuses
    statuses, slow_gateway = gateway.run([dict(model="healthy", prompt_bytes=SLOW_PROMPT_BYTES)] * 10)
    assert statuses == [200] * 10, statuses

    authorizer_failure = json.loads((HERE / "emf" / "authorizer-failure.json").read_text())
    authorizer_failure["FunctionName"] = template.ref("AuthorizerFunction")
    authorizer_failure["_aws"]["Timestamp"] = int(time.time() * 1000)

    base = healthy_aws(template, rejected_keys=3)

    def replaced(points, namespace, metric, dims, values):
        return [p for p in points if p[:3] != (namespace, metric, dims)] + [(namespace, metric, dims, values)]

    fn = lambda lid: {"FunctionName": template.ref(lid)}  # noqa: E731
    table = lambda lid: {"TableName": template.ref(lid)}  # noqa: E731
    queue = lambda lid: {"QueueName": template.getatt(lid, "QueueName")}  # noqa: E731
    return [
        Scenario("healthy run (client 4xx, rejected keys)", set(), healthy, base),
        Scenario("provider failures (5xx answered)", {"ErrorRateAlarm"}, failing, base),
        Scenario("streams broken after the first token (answered 200)", {"ErrorRateAlarm"}, cut, base),
        Scenario("failures below the minimum request count", set(), quiet, base),
        Scenario("slow first token", {"TimeToFirstTokenP95Alarm"}, slow_first, base),
        Scenario("slow gateway (large prompts)", {"GatewayOverheadP95Alarm"}, slow_gateway, base),
        Scenario("authorizer cannot reach the key store", {"AuthorizerFailuresAlarm"},
                 healthy + [json.dumps(authorizer_failure)] * 2,
                 # synthesized: each failure is also a Lambda error of the authorizer
                 replaced(base, "AWS/Lambda", "Errors", fn("AuthorizerFunction"), [5])),
        Scenario("chat function crashed (synthesized Lambda Errors)", {"LambdaErrorsAlarm"}, healthy,
                 replaced(base, "AWS/Lambda", "Errors", fn("ChatFunction"), [1])),
        Scenario("limits table throttled (synthesized)", {"DynamoDbThrottlesAlarm"}, healthy,
                 replaced(base, "AWS/DynamoDB", "WriteThrottleEvents", table("LimitsTable"), [25])),
        Scenario("audit table throttled (synthesized)", {"DynamoDbBackgroundThrottlesAlarm"}, healthy,
                 replaced(base, "AWS/DynamoDB", "WriteThrottleEvents", table("AuditTable"), [25])),
        Scenario("batch queue backlog (synthesized)", {"BatchQueueAgeAlarm"}, healthy,
                 replaced(base, "AWS/SQS", "ApproximateAgeOfOldestMessage", queue("BatchQueue"), [7200])),
        Scenario("ingest queue backlog (synthesized)", {"IngestQueueAgeAlarm"}, healthy,
                 replaced(base, "AWS/SQS", "ApproximateAgeOfOldestMessage", queue("IngestQueue"), [1800])),
    ]


# A prompt this large keeps the gateway itself busy (parsing, token estimate, guards) for longer
# than the overhead threshold the test sets, while the mock provider answers at once.
SLOW_PROMPT_BYTES = 400_000

# The template's defaults but for the overhead threshold. The gateway here is a debug build on a
# machine whose load varies: its healthy p95 overhead was 130 ms idle and 1.3 s under load
# (release on Lambda: milliseconds), and on 400 KB prompts 1.4 s idle and 12 s under load. No
# fixed threshold sits between the two in both cases, so the test sets it to a multiple of the
# healthy run's p95 measured in the same run: the slow run must exceed it by that factor.
OVERHEAD_THRESHOLD_TIMES_HEALTHY = 3
OVERHEAD_THRESHOLD_FLOOR_MS = 50


def overhead_parameters(healthy_lines: list) -> dict:
    overheads = sorted(json.loads(line)["GatewayOverhead"] for line in healthy_lines
                       if line.startswith("{") and "GatewayOverhead" in json.loads(line))
    assert overheads, "the healthy run wrote no GatewayOverhead"
    p95 = overheads[min(len(overheads) - 1, math.ceil(0.95 * len(overheads)) - 1)]
    threshold = max(OVERHEAD_THRESHOLD_FLOOR_MS, math.ceil(OVERHEAD_THRESHOLD_TIMES_HEALTHY * p95))
    print(f"  healthy p95 GatewayOverhead {p95:.1f} ms: GatewayOverheadP95ThresholdMs={threshold}")
    return {"GatewayOverheadP95ThresholdMs": str(threshold)}


def binaries_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    if os.environ.get("GATEWAY_BIN_DIR"):
        return Path(os.environ["GATEWAY_BIN_DIR"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "debug"
    return ROOT / "target" / "debug"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", default=None)
    parser.add_argument("--template", default=str(ROOT / "infra" / "template.yaml"))
    parser.add_argument("--keep-captures", default=None, metavar="DIR",
                        help="write each scenario's EMF lines to DIR")
    args = parser.parse_args()
    bin_dir = binaries_dir(args.bin_dir)
    for name in ("gateway-local", "mock-provider"):
        if not os.access(bin_dir / name, os.X_OK):
            print(f"alarms: {bin_dir / name} not found; run 'cargo build -p local -p gateway-tests' "
                  "or set GATEWAY_BIN_DIR", file=sys.stderr)
            return 2

    alarms, template = load_alarms(Path(args.template), {})

    # The slow first token: past the TTFT threshold the template sets.
    ttft = next(a for a in alarms if a.name == "TimeToFirstTokenP95Alarm")
    first_token_ms = int(float(ttft.props["Threshold"])) + 300

    work = Path(tempfile.mkdtemp(prefix="alarms."))
    gateway = Gateway(bin_dir, template.ref("ChatFunction"), work, first_token_ms)
    try:
        runs = scenarios(gateway, template)
    finally:
        gateway.stop()
    alarms, template = load_alarms(Path(args.template), overhead_parameters(runs[0].lines))
    problems = [p for alarm in alarms for p in alarm.check_definition()]

    names = {alarm.name for alarm in alarms}
    for scenario in runs:
        unknown = scenario.expect - names
        if unknown:
            problems.append(f"scenario `{scenario.name}` expects unknown alarm(s) {sorted(unknown)}")
        periods = [scenario.period()] * 5
        fired = set()
        print(f"\n== {scenario.name} ({len(scenario.lines)} EMF lines per period)")
        for alarm in alarms:
            fires, window = alarm.fires(periods)
            if fires:
                fired.add(alarm.name)
            expected = alarm.name in scenario.expect
            mark = "ok " if fires == expected else "BAD"
            shown = ", ".join("-" if v is None else f"{v:g}" for v in window)
            if fires or expected:
                print(f"  {mark} {alarm.name}: {'ALARM' if fires else 'OK'} [{shown}] "
                      f"threshold {float(alarm.props['Threshold']):g}")
            if fires != expected:
                problems.append(f"`{scenario.name}`: {alarm.name} {'fired' if fires else 'did not fire'} "
                                f"[{shown}]")
        if not fired:
            print("  ok  no alarm")
        requests = [line for line in scenario.lines if '"Requests":1' in line]
        if requests:
            sizes = [len(line.encode()) + 1 for line in requests]
            print(f"  request lines: {len(requests)}, {sum(sizes) / len(sizes):.0f} bytes each on average "
                  f"(max {max(sizes)})")
        if args.keep_captures:
            out = Path(args.keep_captures)
            out.mkdir(parents=True, exist_ok=True)
            slug = re.sub(r"[^a-z0-9]+", "-", scenario.name.lower()).strip("-")
            (out / f"{slug}.emf.jsonl").write_text("\n".join(scenario.lines) + "\n")

    if problems:
        print("\nalarms: FAILED (gateway logs kept in " + str(work) + ")")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print(f"\nalarms: {len(alarms)} alarms x {len(runs)} scenarios, each alarm fired on its fault only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
