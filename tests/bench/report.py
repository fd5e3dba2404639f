#!/usr/bin/env python3
"""Turns the raw results of one `tests/bench/run` into its table (stdlib only).

    report.py RESULTS_DIR            prints the table (Markdown) and writes RESULTS_DIR/table.md
    report.py --row FILE             prints one latency result as `p50_us p99_us ok errors rps`

Each measurement is one JSON file in RESULTS_DIR, named CASE@TARGET.json: the output of `oha
--output-format json` or of `bench-driver`. Other files: meta.json (machine, settings), rss.json,
coldstart@BIN.json, zip@BIN.json; keepalive@TARGET.json (TARGET direct, tcp, floor, gateway) holds
first_us, total_us and gap_us;
invoke@FUNCTION.json (bench-driver invoke) with invoke-dynamo@FUNCTION.json; quota-meta.json,
quota-LABEL@TARGET.json and cpu-quota-LABEL@gateway.json (the CPU quota rows).
"""

import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def latency(result, stream=False):
    """(p50_us, p99_us, ok, errors, achieved_rps) of an oha or bench-driver result."""
    if result is None:
        return None
    if "latencyPercentiles" in result:  # oha
        statuses = result.get("statusCodeDistribution") or {}
        ok = int(statuses.get("200", 0))
        failed = sum(int(v) for k, v in statuses.items() if k != "200")
        failed += sum(int(v) for v in (result.get("errorDistribution") or {}).values())
        pct = result["latencyPercentiles"]
        if pct.get("p50") is None:
            return (None, None, ok, failed, 0.0)
        total = result["summary"].get("total") or 0
        rps = ok / total if total else 0.0
        return (pct["p50"] * 1e6, pct["p99"] * 1e6, ok, failed, rps)
    if "first_us" in result:  # bench-driver load
        series = result["first_us"] if stream else result["total_us"]
        if not series:
            return (None, None, result["ok"], result["errors"], 0.0)
        return (series["p50"], series["p99"], result["ok"], result["errors"], result["achieved_rps"])
    return None


def keepalive_series(result, name):
    """(p50_us, p99_us, ok, errors, achieved_rps) of one series of a bench-driver keepalive result."""
    if result is None or result.get("mode") != "keepalive":
        return None
    series = result.get(name)
    if not series:
        return (None, None, result["ok"], result["errors"], 0.0)
    return (series["p50"], series["p99"], result["ok"], result["errors"], result["achieved_rps"])


def cpu_per_request(get, case, target):
    """(microseconds of CPU per answered request of the server under test, its baseline target)."""
    base_target = "direct0" if case.startswith("hit") else "direct"
    cpu = get(f"cpu-{case}@{target}")
    row = latency(get(f"{case}@{target}"), stream=case.startswith("stream"))
    if not cpu or not row or not row[2]:
        return None, base_target
    answered = row[2] + (get(f"{case}@{target}") or {}).get("warmup_ok", 0)
    return cpu["cpu_ns"] / 1000 / answered, base_target


def ms(us):
    return "-" if us is None else f"{us / 1000:.2f} ms"


def added(us):
    return "-" if us is None else f"{us / 1000:+.3f} ms"


def verdict(value, limit):
    if value is None:
        return "MISS (no data)"
    return "PASS" if value <= limit else "MISS"


def invoke_rows(get, rows):
    """Rows of `bench-driver invoke`: chat through the Lambda adapter beside lambda-floor."""
    chat, floor = get("invoke@chat"), get("invoke@lambda-floor")
    if chat is None and floor is None and get("invoke-dynamo@chat") is None:
        return  # not run (tests/bench/run writes invoke-dynamo@chat.json whatever happens)
    title = "chat through the Lambda adapter, plain, uncached, 0 ms mock"

    def cpu(r):
        return None if not r or not r.get("ok") else r["cpu_us_per_invocation"]

    def errors(r):
        return f" ({r['errors']} errors of {r['ok'] + r['errors']}: {r['error_sample']})" if r and r["errors"] else ""

    if chat is None:
        rows.append((f"CPU per invocation, {title}", "failed (no result: see the run's log)",
                     "-" if cpu(floor) is None else f"{cpu(floor):.0f} us lambda-floor", "", "", ""))
        return
    mine, base = cpu(chat), cpu(floor)
    calls = get("invoke-dynamo@chat")
    per_call = "" if not calls else f"; {calls['dynamodb_calls'] / calls['invocations']:.1f} DynamoDB calls (moto)"
    rows.append((
        f"CPU per invocation, {title} (user + system, all threads, /proc/PID/stat)",
        ("-" if mine is None else f"{mine:.0f} us (schedstat {chat['schedstat_us_per_invocation']:.0f} us; "
         f"{chat['ok']} invocations{per_call})") + errors(chat),
        "lambda-floor failed" if base is None else
        f"{base:.0f} us lambda-floor (schedstat {floor['schedstat_us_per_invocation']:.0f} us)",
        "-" if mine is None or base is None else f"{mine - base:+.0f} us",
        "", ""))
    for name in ("p50", "p99"):
        value = (chat.get("wall_us") or {}).get(name)
        base_value = ((floor or {}).get("wall_us") or {}).get(name)
        rows.append((
            f"wall time per invocation, {title} {name} (event handed to last response byte)",
            ms(value) + errors(chat),
            f"{ms(base_value)} lambda-floor",
            added(None if value is None or base_value is None else value - base_value),
            "", ""))
    split = get("invoke@chat-nolimits")
    split_calls = get("invoke-dynamo@chat-nolimits")
    if split and cpu(split) is not None and mine is not None:
        n = "" if not split_calls else f"; {split_calls['dynamodb_calls'] / split_calls['invocations']:.1f} DynamoDB calls"
        delta_calls = (calls["dynamodb_calls"] / calls["invocations"] - split_calls["dynamodb_calls"]
                       / split_calls["invocations"]) if calls and split_calls else None
        rows.append((
            "CPU per invocation, same, key without limits (no admission UpdateItem)",
            f"{cpu(split):.0f} us (wall p50 {ms(split['wall_us']['p50'])}{n})" + errors(split),
            f"{mine:.0f} us with limits (wall p50 {ms(chat['wall_us']['p50'])})",
            f"{cpu(split) - mine:+.0f} us" + ("" if not delta_calls else
                                             f" for {delta_calls:.1f} call less"),
            "", ""))
    stalled = get("invoke@chat-delayedack")
    if stalled and stalled.get("wall_us"):
        rows.append((
            "wall time per invocation, same, p50, stand-in with the kernel's delayed ACKs "
            "(the runtime's streamed answer without TCP_NODELAY)",
            ms(stalled["wall_us"]["p50"]) + errors(stalled),
            f"{ms(chat['wall_us']['p50'])} stand-in ACKing at once",
            added(stalled["wall_us"]["p50"] - chat["wall_us"]["p50"]),
            "", ""))


def quota_rows(get, rows):
    """One request at a time through gateway-local at 256 MB's CPU share, beside unrestricted."""
    meta = get("quota-meta")
    if meta is None:
        return
    mb = meta["mb"]
    if meta.get("skipped"):
        rows.append((f"one request at a time at {mb} MB's CPU share", "skipped: " + meta["skipped"],
                     "", "", "", ""))
        return
    share = f"{mb} MB's CPU share ({meta['quota_us'] / meta['period_us']:.3f} vCPU, cgroup quota)"
    for label, what in (("full", "unrestricted CPU"), (str(mb), share)):
        direct, gateway = get(f"quota-{label}@direct"), get(f"quota-{label}@gateway")
        if not direct or not gateway:
            continue
        for name in ("p50", "p99"):
            value, base = gateway["total_us"][name], direct["total_us"][name]
            errs = gateway["errors"] + direct["errors"]
            rows.append((f"one request at a time, plain, {what}, {name}",
                         ms(value) + (f" ({errs} errors)" if errs else ""),
                         f"{ms(base)} direct to mock",
                         added(None if value is None or base is None else value - base), "", ""))
    for label, what in (("full", "unrestricted CPU"), (str(mb), share)):
        cpu, gateway = get(f"cpu-quota-{label}@gateway"), get(f"quota-{label}@gateway")
        if not cpu or not gateway or not gateway["ok"]:
            continue
        answered = gateway["ok"] + gateway.get("warmup", 0)
        note = f", {meta['throttled_periods']} throttled periods" if label != "full" else ""
        rows.append((f"CPU per request, one at a time, plain, {what} (user + system, all threads)",
                     f"{cpu['cpu_ns'] / 1000 / answered:.0f} us ({answered} requests{note})", "", "", "", ""))


def main(results):
    meta = load(os.path.join(results, "meta.json")) or {}
    get = lambda name: load(os.path.join(results, name + ".json"))
    rows = []  # (measure, subject, baseline, added, goal, verdict)

    def lat_rows(case, title, target, base_target, base_label, stream=False, goals=None, series=None):
        if series:
            mine = keepalive_series(get(f"{case}@{target}"), series)
            base = keepalive_series(get(f"{case}@{base_target}"), series)
        else:
            mine = latency(get(f"{case}@{target}"), stream)
            base = latency(get(f"{case}@{base_target}"), stream)
        if mine is None:
            return
        goals = goals or {}
        for i, name in ((0, "p50"), (1, "p99")):
            value = mine[i]
            base_value = base[i] if base else None
            delta = None if value is None or base_value is None else value - base_value
            goal, result = "", ""
            if name in goals:
                limit_us, goal, on_delta = goals[name]
                result = verdict(delta if on_delta else value, limit_us)
            errors = f" ({mine[3]} errors of {mine[2] + mine[3]})" if mine[3] else ""
            base_errors = f" ({base[3]} errors)" if base and base[3] else ""
            rows.append((
                f"{title} {name}",
                ms(value) + errors,
                f"{ms(base_value)} {base_label}{base_errors}",
                added(delta),
                goal,
                result,
            ))

    rates = meta.get("rates", [500, 1000])
    top = max(rates)
    for target, who in [("gateway", "gateway")] + [(p, p) for p in meta.get("peers", [])]:
        prefix = "" if who == "gateway" else f"[{who}] "
        for rate in rates:
            goals = None
            if who == "gateway" and rate == top:
                goals = {"p50": (100, "added <= 0.1 ms", True), "p99": (500, "added <= 0.5 ms", True)}
            lat_rows(f"plain{rate}", f"{prefix}cache miss (uncached), plain, {rate} rps,", target,
                     "direct", "direct to mock", goals=goals)
        for rate in rates:
            goals = None
            if who == "gateway" and rate == top:
                goals = {"p50": (200, "added <= 0.2 ms", True)}
            lat_rows(f"stream{rate}", f"{prefix}streamed time to first token, {rate} rps,", target,
                     "direct", "direct to mock", stream=True, goals=goals)
        conns = meta.get("keepalive_connections", 8)
        for series, what, goals in (
            ("first_us", "time to first token", None),
            ("total_us", "whole stream", {"p50": (500, "added <= 0.5 ms", True)}),
            ("gap_us", "gap between chunks", None),
        ):
            lat_rows("keepalive", f"{prefix}{what}, streams on {conns} keep-alive connections,",
                     target, "direct", "direct to mock",
                     goals=goals if who == "gateway" else None, series=series)
        if who == "gateway":
            # The floors: bytes relayed without reading HTTP, a hyper reverse proxy that does
            # nothing else, and the gateway over the latter.
            for floor, label in (("tcp", "[tcp relay]"), ("floor", "[proxy-floor]")):
                for series, what in (("first_us", "time to first token"), ("total_us", "whole stream")):
                    lat_rows("keepalive", f"{label} {what}, streams on {conns} keep-alive connections,",
                             floor, "direct", "direct to mock", series=series)
            lat_rows("keepalive", f"whole stream over the proxy floor, streams on {conns} keep-alive connections,",
                     "gateway", "floor", "through proxy-floor", series="total_us")
        for case, title in ((f"plain{top}", f"CPU per request, cache miss, plain, {top} rps"),
                            (f"stream{top}", f"CPU per request, streamed, {top} rps"),
                            (f"miss{top}", f"CPU per request, cache miss with lookup + store, {top} rps"),
                            (f"hit{top}", f"CPU per request, cache hit, {top} rps")):
            mine, base_target = cpu_per_request(get, case, target)
            if mine is None:
                continue
            base, _ = cpu_per_request(get, case, base_target)
            rows.append((f"{prefix}{title} (user + system, all threads)", f"{mine:.0f} us",
                         "-" if base is None else f"{base:.0f} us the mock provider itself", "", "", ""))
        if who == "gateway":
            lat_rows(f"miss{top}", f"cache miss (temperature 0, unique prompts: lookup + store), {top} rps,",
                     target, "direct", "direct to mock")
            lat_rows(f"hit{top}", f"cache hit, {top} rps,", target, "direct0",
                     "direct to a 0 ms mock", goals={"p99": (300, "p99 <= 0.3 ms", False)})
        for case, title, base_target, base_label in (
            ("tput", "max throughput, uncached (closed loop)", "direct0", "direct to a 0 ms mock"),
            ("tputhit", "max throughput, cache hits (closed loop)", "direct0", "direct to a 0 ms mock"),
        ):
            mine = latency(get(f"{case}@{target}"))
            base = latency(get(f"tput@{base_target}"))
            if mine is None:
                continue
            describe = lambda r: "-" if r is None else f"{r[4]:,.0f} req/s" + (
                f" ({r[3]} errors)" if r[3] else ", 0 errors")
            rows.append((f"{prefix}{title}", describe(mine), f"{describe(base)} {base_label}",
                         "" if not (mine and base and base[4]) else f"{mine[4] / base[4]:.0%} of direct",
                         "", ""))
        rss = get(f"rss@{target}")
        if rss:
            peak = rss["hwm_kb"] / 1024
            goal, result = ("<= 40 MB", verdict(peak, 40)) if who == "gateway" else ("", "")
            rows.append((f"{prefix}peak RSS under load (VmHWM)", f"{peak:.1f} MB",
                         f"{rss['idle_kb'] / 1024:.1f} MB at idle; mock peak {rss['mock_hwm_kb'] / 1024:.1f} MB",
                         "", goal, result))

    floor = get("coldstart@lambda-floor")
    floor_us = floor["start_to_poll_us"]["p50"] if floor else None
    for name in meta.get("lambdas", []):
        cold = get(f"coldstart@{name}")
        if not cold:
            rows.append((f"Lambda cold start: {name}", "failed", "", "", "<= 25 ms", "MISS"))
            continue
        s = cold["start_to_poll_us"]
        value = s["p50"]
        note = f" (p90 {ms(s['p90'])}, {s['n']} starts" + (
            f", {cold['failures']} failed)" if cold.get("failures") else ")")
        rows.append((f"Lambda init, start to first poll: {name} (median)", ms(value) + note,
                     f"{ms(floor_us)} minimal poller", added(None if floor_us is None else value - floor_us),
                     "<= 25 ms", verdict(value / 1000, 25)))
    invoke_rows(get, rows)
    quota_rows(get, rows)
    for name in meta.get("lambdas", []):
        z = get(f"zip@{name}")
        if not z:
            continue
        size = z.get("zip_bytes")
        native = z.get("native_bytes")
        rows.append((f"arm64 zip: {name}", "-" if size is None else f"{size / 1e6:.2f} MB",
                     "-" if native is None else f"{native / 1e6:.2f} MB x86_64 binary, unzipped",
                     "", "<= 6 MB", verdict(None if size is None else size / 1e6, 6)))

    b = get("batch")
    if b:
        share = b["items_per_s"] / b["ideal_per_s"]
        rows.append((f"batch throughput: {b['items']} items, mock {b['latency_ms']} ms, worker concurrency "
                     f"{b['concurrency']} (creation to completed)", f"{b['items_per_s']:.0f} items/s",
                     f"ideal C/L {b['ideal_per_s']:.0f} items/s", f"{100 * share:.0f} % of ideal",
                     ">= 90 % of C/L", verdict(-share, -0.9)))

    v = get("vectors")
    if v:
        rows.append((f"embedded vector query: {v['vectors']:,} x {v['dimensions']}, exact top {v['top_k']} "
                     f"(p50, {v['queries']} queries)", f"{v['p50_ms']:.1f} ms (p95 {v['p95_ms']:.1f} ms)",
                     f"with a filter keeping 1 in 10: {v['filtered_p50_ms']:.1f} ms", "",
                     "< 20 ms", verdict(v["p50_ms"], 20)))
    r = get("rag")
    if r:
        q, c = r["retrieval"], r["semantic_cache"]
        rows.append((f"RAG retrieval: {r['documents']} documents, {q['questions']} questions, top_k 4 "
                     "(built-in mock embedder: word overlap)", f"recall@4 {q['recall_at_4']:.2f}",
                     f"MRR {q['mrr']:.2f}", "", "-", ""))
        rows.append((f"semantic cache: labelled pairs, threshold {r['threshold']} (mock embedder)",
                     f"{c['hits']}/{c['should_hit']} paraphrases hit",
                     f"{c['false_hits']}/{c['must_not_hit']} near misses hit", "",
                     "0 false hits", verdict(c["false_hits"], 0)))

    head = [
        f"Machine: {meta.get('nproc', '?')} cores, {meta.get('cpu', '?')}, {meta.get('mem', '?')}; "
        f"load average at start {meta.get('load_start', '?')}, at end {meta.get('load_end', '?')}.",
        f"Mock provider latency {meta.get('latency_ms', '?')} ms; {meta.get('duration_s', '?')} s per "
        f"fixed-rate point after {meta.get('warmup_s', '?')} s of warm-up; load: {meta.get('tool', 'oha')} "
        "(open loop at a fixed rate, latency measured from each request's scheduled start) for plain "
        "requests and cache hits, bench-driver (tests/bench/driver, open loop) for time to first token "
        "and unique-prompt misses, and its closed loop of streams one after another on each keep-alive "
        "connection; closed loop for throughput. Lambda init uses the native x86_64 "
        "release builds; zips are arm64. Lambda invocations: bench-driver invoke, a Runtime API "
        "stand-in handing one API Gateway REST event at a time, DynamoDB at moto. CPU quota rows: "
        "one request at a time, the gateway in a cgroup v1 cpu quota.",
    ]
    out = ["\n".join(head), "",
           "| measure | subject | baseline (same run) | added | goal | |",
           "|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    passed = sum(1 for r in rows if r[5] == "PASS")
    missed = sum(1 for r in rows if r[5].startswith("MISS"))
    out += ["", f"Goals: {passed} PASS, {missed} MISS."]
    text = "\n".join(out)
    with open(os.path.join(results, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--row":
        row = latency(load(sys.argv[2]), stream="stream" in os.path.basename(sys.argv[2]))
        print("none" if row is None else " ".join("-" if v is None else f"{v:.0f}" for v in row))
    elif len(sys.argv) == 2:
        main(sys.argv[1])
    else:
        sys.exit(__doc__)
