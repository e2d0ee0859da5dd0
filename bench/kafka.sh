#!/usr/bin/env bash
# Kafka workloads against Sluice with sluice-bench, each run on a freshly
# started release broker with an empty data directory, repeated; prints a
# Markdown table of medians and spreads, and keeps every JSON line.
#
# Usage: bench/kafka.sh [runs] [filter]   (default 3 runs; only workloads whose
# name contains the filter; results in target/bench/kafka-*.jsonl)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-3}"
filter="${2:-}"
cd "$root"
cargo build --release -p sluice -p sluice-bench >&2
broker="$root/target/release/sluice"
tool="$root/target/release/sluice-bench"
out="$root/target/bench/kafka-$(date +%Y%m%d-%H%M%S).jsonl"
mkdir -p "$(dirname "$out")"

workloads=(
    "1 KiB, 1 partition, acks=1|--size 1024 --count 300000 --partitions 1 --acks 1"
    "1 KiB, 1 partition, acks=all|--size 1024 --count 300000 --partitions 1 --acks all"
    "1 KiB, 8 partitions, acks=1|--size 1024 --count 300000 --partitions 8 --acks 1"
    "1 KiB, 8 partitions, acks=all|--size 1024 --count 300000 --partitions 8 --acks all"
    "100 B, 1 partition, acks=1|--size 100 --count 2000000 --partitions 1 --acks 1"
    "100 B, 1 partition, acks=1, consumed after producing|--size 100 --count 2000000 --partitions 1 --acks 1 --consume-after-produce"
    "1 KiB at 10,000 msg/s, acks=all, linger.ms=0|--size 1024 --count 50000 --rate 10000 --partitions 1 --acks all --linger-ms 0"
    # Issue 19's pairs (filter "txn:"): a transactional producer against the
    # idempotent one, and read_committed (librdkafka's default, as in every
    # run above) against read_uncommitted consumption.
    "txn: 1 KiB, acks=all, idempotent|--size 1024 --count 300000 --partitions 1 --acks all --idempotent"
    "txn: 1 KiB, acks=all, transactions of 1,000|--size 1024 --count 300000 --partitions 1 --acks all --transaction-messages 1000"
    "txn: 1 KiB, acks=all, idempotent, consumed after|--size 1024 --count 300000 --partitions 1 --acks all --idempotent --consume-after-produce"
    "txn: 1 KiB, transactions of 1,000, consumed after, read_committed|--size 1024 --count 300000 --partitions 1 --acks all --transaction-messages 1000 --consume-after-produce"
    "txn: 1 KiB, transactions of 1,000, consumed after, read_uncommitted|--size 1024 --count 300000 --partitions 1 --acks all --transaction-messages 1000 --consume-after-produce --consumer-set isolation.level=read_uncommitted"
)

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for workload in "${workloads[@]}"; do
    name="${workload%%|*}"
    args="${workload#*|}"
    [[ -z "$filter" || "$name" == *"$filter"* ]] || continue
    for ((run = 1; run <= runs; run++)); do
        dir="$(mktemp -d)"
        port=$((20000 + RANDOM % 20000))
        until port_free "$port"; do port=$((20000 + RANDOM % 20000)); done
        "$broker" --data-dir "$dir/data" --kafka-listen "127.0.0.1:$port" \
            --amqp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --mqtt-listen 127.0.0.1:0 --stomp-listen 127.0.0.1:0 >"$dir/broker.log" 2>&1 &
        pid=$!
        for _ in $(seq 200); do ! port_free "$port" && break; sleep 0.05; done
        # shellcheck disable=SC2086
        line=$("$tool" kafka --bootstrap "127.0.0.1:$port" --broker-pid "$pid" --json $args | tail -n 1) || true
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        rm -rf "$dir"
        printf '{"name": "%s", "run": %d, "report": %s}\n' "$name" "$run" "${line:-null}" >>"$out"
        echo "done: $name, run $run" >&2
    done
done

python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    entry = json.loads(line)
    rows.setdefault(entry["name"], []).append(entry["report"])
print("| workload | produced msg/s | consumed msg/s (spread) | MB/s | p50 ms | p99 ms | p99.9 ms | broker cores | broker peak RSS MiB | checked |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for name, reports in rows.items():
    ok = [r for r in reports if r]
    if not ok:
        print(f"| {name} | failed | | | | | | | | FAIL |")
        continue
    med = lambda f: statistics.median(f(r) for r in ok)
    consumed = [r["consumed_msgs_per_s"] for r in ok]
    passed = all(r["passed"] for r in ok) and len(ok) == len(reports)
    broker = lambda key: med(lambda r: (r.get("broker") or {}).get(key, 0.0))
    print(f"| {name} | {med(lambda r: r['produced_msgs_per_s']):,.0f} | {statistics.median(consumed):,.0f} ({min(consumed):,.0f}–{max(consumed):,.0f}) "
          f"| {med(lambda r: r['consumed_mb_per_s']):,.1f} | {med(lambda r: r['latency']['p50_us'])/1000:.2f} "
          f"| {med(lambda r: r['latency']['p99_us'])/1000:.2f} | {med(lambda r: r['latency']['p999_us'])/1000:.2f} "
          f"| {broker('cores'):.2f} | {broker('peak_rss_mib'):.0f} | {'PASS' if passed else 'FAIL'} ({len(ok)} runs) |")
PY
echo
python3 "$root/bench/limits.py" "$root/target/bench"
echo "raw results: $out" >&2
