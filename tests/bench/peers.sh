# Sourced by tests/bench/run --peers: LiteLLM proxy and Portkey's gateway, installed under .bench/,
# listening on loopback, routed to the same mock provider, measured like the gateway.
# Uses run's helpers and variables (log, wait_for_line, free_port, fixed_rate, driven, oha_closed,
# groups...).

peer_rss() { # PGID OUT: peak RSS summed over the peer's process group
    local pgid=$1 out=$2 total=0 pid
    for pid in $(ps -o pid= -g "$pgid" 2>/dev/null); do
        total=$((total + $(kb VmHWM "$pid")))
    done
    printf '{"hwm_kb": %s, "idle_kb": %s, "mock_hwm_kb": %s}\n' "$total" "${3:-0}" \
        "$(kb VmHWM "$mock_pid")" >"$out"
}

idle_rss() { # PGID
    local pgid=$1 total=0 pid
    for pid in $(ps -o pid= -g "$pgid" 2>/dev/null); do
        total=$((total + $(kb VmRSS "$pid")))
    done
    echo "$total"
}

# Fails unless every listening socket of the process group is on loopback.
check_loopback() { # PGID NAME
    local pids
    pids=$(ps -o pid= -g "$1" | tr -d ' ' | paste -sd'|')
    if ss -ltnpH 2>/dev/null | grep -E "pid=($pids)," | awk '{print $4}' |
        grep -vqE '^(127\.[0-9.]+|\[::1\]|\[::ffff:127\.[0-9.]+\]):'; then
        log "$2 listens beyond loopback; stopping it"
        kill -TERM -- "-$1" 2>/dev/null || true
        return 1
    fi
}

measure_peer() { # NAME PID URL [HEADER...]
    local who=$1 url=$3
    server_pid=$2
    shift 3
    local rate driver_headers=() h
    for h in "$@"; do driver_headers+=(--header "$h"); done
    for rate in "${rates[@]}"; do
        fixed_rate "plain$rate" "$who" "$url" "$work/plain-peer.json" "$rate" "$@" || true
    done
    for rate in "${rates[@]}"; do
        driven "stream$rate" "$who" "$url" "$work/stream-peer.json" "$rate" --stream \
            "${driver_headers[@]}" || true
    done
    oha_closed "$results/tput@$who.json" "$url" "$work/plain-peer.json" "$tput_duration" "$@" || true
    show "$results/tput@$who.json"
}

run_litellm() {
    local venv="$bench/litellm-venv" port pgid
    if [[ ! -x $venv/bin/litellm ]]; then
        log "installing LiteLLM proxy into .bench/litellm-venv (pip, once)"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check 'litellm[proxy]'
    fi
    port=$(free_port)
    cat >"$work/litellm.yaml" <<EOF
model_list:
  - model_name: bench
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: $mock_url/v1
      api_key: sk-bench
EOF
    # Recent LiteLLM refuses to start without a master key; requests then carry it.
    LITELLM_MASTER_KEY=sk-bench-master LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR \
        setsid "$venv/bin/litellm" \
        --config "$work/litellm.yaml" --host 127.0.0.1 --port "$port" --num_workers 1 \
        >"$work/litellm.out" 2>&1 &
    pgid=$!
    groups+=("$pgid")
    local i
    for ((i = 0; i < 600; i++)); do
        curl -sf "http://127.0.0.1:$port/health/liveliness" >/dev/null 2>&1 && break
        kill -0 "$pgid" 2>/dev/null || { log "LiteLLM exited:"; tail -20 "$work/litellm.out" >&2; return 1; }
        sleep 0.1
    done
    check_loopback "$pgid" LiteLLM || return 1
    local idle
    idle=$(idle_rss "$pgid")
    log "LiteLLM proxy on 127.0.0.1:$port"
    measure_peer litellm "$pgid" "http://127.0.0.1:$port" "authorization: Bearer sk-bench-master"
    peer_rss "$pgid" "$results/rss@litellm.json" "$idle"
    kill -TERM -- "-$pgid" 2>/dev/null || true
    peer_names+=(litellm)
}

run_portkey() {
    local dir="$bench/portkey" port pgid entry
    if [[ ! -d $dir/node_modules/@portkey-ai/gateway ]]; then
        log "installing Portkey's gateway into .bench/portkey (npm, once)"
        mkdir -p "$dir"
        (cd "$dir" && npm install --silent --no-audit --no-fund @portkey-ai/gateway >/dev/null)
    fi
    entry=$(cd "$dir/node_modules/@portkey-ai/gateway" &&
        node -e 'const p=require("./package.json"); const b=p.bin; console.log(typeof b==="string"?b:Object.values(b||{})[0]||p.main)')
    # Portkey listens on every interface; this preload pins its listeners to loopback.
    cat >"$work/loopback.cjs" <<'EOF'
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args[0] !== null && typeof args[0] === 'object') {
    args[0] = { ...args[0], host: '127.0.0.1' };
  } else if (args.length >= 2 && (args[1] === undefined || typeof args[1] === 'string')) {
    args[1] = '127.0.0.1';
  } else {
    args.splice(1, 0, '127.0.0.1');
  }
  return listen.apply(this, args);
};
EOF
    port=$(free_port)
    NODE_OPTIONS="--require=$work/loopback.cjs" setsid node \
        "$dir/node_modules/@portkey-ai/gateway/$entry" --port="$port" --headless \
        >"$work/portkey.out" 2>&1 &
    pgid=$!
    groups+=("$pgid")
    local i
    for ((i = 0; i < 300; i++)); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
        kill -0 "$pgid" 2>/dev/null || { log "Portkey exited:"; tail -20 "$work/portkey.out" >&2; return 1; }
        sleep 0.1
    done
    check_loopback "$pgid" Portkey || return 1
    local idle
    idle=$(idle_rss "$pgid")
    log "Portkey gateway on 127.0.0.1:$port"
    measure_peer portkey "$pgid" "http://127.0.0.1:$port" "x-portkey-provider: openai" \
        "x-portkey-custom-host: $mock_url/v1" "authorization: Bearer sk-bench"
    peer_rss "$pgid" "$results/rss@portkey.json" "$idle"
    kill -TERM -- "-$pgid" 2>/dev/null || true
    peer_names+=(portkey)
}

run_peers() {
    body bench '' >"$work/plain-peer.json"
    body bench ',"stream":true' >"$work/stream-peer.json"
    # Peers ask the upstream for model `gpt-4o-mini` themselves; `bench` is their public name.
    run_litellm || log "LiteLLM skipped"
    run_portkey || log "Portkey skipped"
}
