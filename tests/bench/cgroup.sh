# shellcheck shell=bash
# The CPU share Lambda gives a function of a memory size, as a cgroup v1 `cpu` quota
# (cfs_quota_us / cfs_period_us = MB / 1769; 1,769 MB is one vCPU), and the client that sends one
# request at a time (Lambda runs one request per instance). Sourced by tests/bench/memory and
# tests/bench/run; needs root for the cgroup.
#
#   cgroup_usable                       true when the cpu controller is there and writable
#   cgroup_create NAME                  makes $cgroup_root/NAME (in $cgroup), period 100 ms
#   cgroup_share MB                     sets the group's quota to MB's share (at least 1 ms)
#   cgroup_add PID / cgroup_release PID moves a process into the group / back to the root
#   cgroup_throttled                    periods throttled so far (cpu.stat nr_throttled)
#   cgroup_remove                       removes the group (call from the EXIT trap)
#   one_at_a_time_client FILE           writes the client (python3 FILE URL BODY KEY SECONDS
#                                       WARMUP PAUSE): warm-up, then requests one after another on
#                                       one keep-alive connection, PAUSE s apart; prints JSON
#                                       {ok, errors, warmup, total_us: {p50, p99}}

cgroup_root=/sys/fs/cgroup/cpu
cgroup_period=100000
cgroup=

cgroup_usable() {
    [[ -w $cgroup_root/cgroup.procs && -e $cgroup_root/cpu.cfs_quota_us ]]
}

cgroup_create() { # NAME
    cgroup="$cgroup_root/$1"
    mkdir "$cgroup"
    echo "$cgroup_period" >"$cgroup/cpu.cfs_period_us"
}

# Sets cgroup_quota (us per period) too.
cgroup_share() { # MB
    cgroup_quota=$((cgroup_period * $1 / 1769))
    ((cgroup_quota >= 1000)) || cgroup_quota=1000
    echo "$cgroup_quota" >"$cgroup/cpu.cfs_quota_us"
}

cgroup_add() { echo "$1" >"$cgroup/cgroup.procs"; }
cgroup_release() { echo "$1" >"$cgroup_root/cgroup.procs" 2>/dev/null || true; }
cgroup_throttled() { awk '$1 == "nr_throttled" {print $2}' "$cgroup/cpu.stat"; }

cgroup_remove() {
    if [[ -n $cgroup && -d $cgroup ]]; then rmdir "$cgroup" 2>/dev/null || true; fi
}

# One request at a time on one keep-alive connection, timed to the last byte of the answer (the
# same client for both sides, so its own cost cancels out of the difference). `warmup` counts the
# requests of the warm-up, answered before the measured ones: a CPU reading taken around the whole
# client run divides by ok + warmup.
one_at_a_time_client() { # FILE
    cat >"$1" <<'PY'
import http.client, json, sys, time
from urllib.parse import urlparse
url, body_file, key, seconds, warmup, pause = sys.argv[1:7]
body = open(body_file, "rb").read()
target = urlparse(url)
headers = {"content-type": "application/json"}
if key:
    headers["authorization"] = f"Bearer {key}"
connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
def one():
    started = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body, headers)
    response = connection.getresponse()
    response.read()
    return response.status, (time.perf_counter() - started) * 1e6
times, errors, warm, end = [], 0, 0, time.monotonic() + float(warmup)
while time.monotonic() < end:
    one()
    warm += 1
end = time.monotonic() + float(seconds)
while time.monotonic() < end and len(times) < 100000:
    status, us = one()
    (times.append(us) if status == 200 else None)
    errors += status != 200
    time.sleep(float(pause))
times.sort()
at = lambda p: times[min(len(times) - 1, max(0, int(p * len(times) + 0.999) - 1))] if times else None
print(json.dumps({"ok": len(times), "errors": errors, "warmup": warm, "total_us": {"p50": at(0.5), "p99": at(0.99)}}))
PY
}
