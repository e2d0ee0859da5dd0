#!/usr/bin/env bash
# MQTT workloads with sluice-bench (rumqttc, MQTT 3.1.1) against Sluice and,
# in the same run, mosquitto from Debian (`apt-get install mosquitto`; run
# here as its own process on a free port, persistence on), each run on a
# freshly started broker with an empty data directory, alternating brokers,
# repeated; prints a Markdown table of medians and spreads, and keeps every
# JSON line.
#
# Usage: bench/mqtt.sh [runs] [filter]   (default 3 runs; only workloads whose
# name contains the filter; results in target/bench/mqtt-*.jsonl)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-3}"
filter="${2:-}"
cd "$root"
cargo build --release -p sluice -p sluice-bench >&2
broker="$root/target/release/sluice"
tool="$root/target/release/sluice-bench"
mosquitto="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
[[ -x "$mosquitto" ]] || { echo "bench/mqtt.sh: mosquitto not installed (apt-get install mosquitto)" >&2; exit 1; }
out="$root/target/bench/mqtt-$(date +%Y%m%d-%H%M%S).jsonl"
mkdir -p "$(dirname "$out")"

workloads=(
    "QoS 1, 100 B, as fast as possible, persistent session|--size 100 --count 200000 --qos 1 --persistent"
    "QoS 1, 100 B, 10,000 msg/s, persistent session|--size 100 --count 100000 --rate 10000 --qos 1 --persistent"
    "QoS 0, 100 B, as fast as possible|--size 100 --count 300000 --qos 0"
)

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
    local kind="$1" dir="$2" port="$3"
    if [[ "$kind" == sluice ]]; then
        "$broker" --data-dir "$dir/data" --kafka-listen 127.0.0.1:0 --amqp-listen 127.0.0.1:0 \
            --http-listen 127.0.0.1:0 --mqtt-listen "127.0.0.1:$port" --stomp-listen 127.0.0.1:0 >"$dir/broker.log" 2>&1 &
    else
        printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nmax_queued_messages 1000000\n' \
            "$port" "$dir" >"$dir/mosquitto.conf"
        "$mosquitto" -c "$dir/mosquitto.conf" >"$dir/broker.log" 2>&1 &
    fi
}

for workload in "${workloads[@]}"; do
    name="${workload%%|*}"
    args="${workload#*|}"
    [[ -z "$filter" || "$name" == *"$filter"* ]] || continue
    for ((run = 1; run <= runs; run++)); do
        for kind in sluice mosquitto; do
            dir="$(mktemp -d)"
            port=$((20000 + RANDOM % 20000))
            until port_free "$port"; do port=$((20000 + RANDOM % 20000)); done
            # In this shell, so that the broker is its child: `wait` then
            # waits for its exit before the directory goes.
            start "$kind" "$dir" "$port"
            pid=$!
            for _ in $(seq 200); do ! port_free "$port" && break; sleep 0.05; done
            # shellcheck disable=SC2086
            line=$("$tool" mqtt --address "127.0.0.1:$port" --broker-pid "$pid" --json $args | tail -n 1) || true
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            rm -rf "$dir"
            printf '{"name": "%s", "broker": "%s", "run": %d, "report": %s}\n' "$name" "$kind" "$run" "${line:-null}" >>"$out"
            echo "done: $name on $kind, run $run" >&2
        done
    done
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    entry = json.loads(line)
    rows.setdefault((entry["name"], entry["broker"]), []).append(entry["report"])
print("| workload | broker | produced msg/s | consumed msg/s (spread) | p50 ms | p99 ms | broker cores | broker peak RSS MiB | checked |")
print("|---|---|---:|---:|---:|---:|---:|---:|---|")
for (name, broker), reports in rows.items():
    ok = [r for r in reports if r]
    if not ok:
        print(f"| {name} | {broker} | failed | | | | | | FAIL |")
        continue
    med = lambda f: statistics.median(f(r) for r in ok)
    consumed = [r["consumed_msgs_per_s"] for r in ok]
    passed = all(r["passed"] for r in ok) and len(ok) == len(reports)
    usage = lambda key: med(lambda r: (r.get("broker") or {}).get(key, 0.0))
    print(f"| {name} | {broker} | {med(lambda r: r['produced_msgs_per_s']):,.0f} "
          f"| {statistics.median(consumed):,.0f} ({min(consumed):,.0f}–{max(consumed):,.0f}) "
          f"| {med(lambda r: r['latency']['p50_us'])/1000:.2f} | {med(lambda r: r['latency']['p99_us'])/1000:.2f} "
          f"| {usage('cores'):.2f} | {usage('peak_rss_mib'):.0f} | {'PASS' if passed else 'FAIL'} |")
PY
echo "JSON lines: $out" >&2
