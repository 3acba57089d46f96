#!/usr/bin/env bash
# Side-by-side: cachet and Redis under the same load generators, on this
# machine, each server pinned to core 0 and the load to core 1, persistence
# matched (cachet --sync everysec <-> Redis appendonly yes + appendfsync
# everysec; always <-> always). Prints, as Markdown tables:
#   - cachet-load (the Rust client over tarpc, and a Redis client) at several
#     connection counts and depths: medians of ROUNDS alternating rounds,
#     with each server's CPU per operation, and the load generator's own
#     (the cachet crate's cost to an application, beside the redis crate's);
#   - restart time and memory with 1M keys (both servers filled by the same
#     Redis client, so they hold the same bytes; the Rust client's fill of
#     cachetd is reported beside it);
#   - redis-benchmark against cachetd's RESP listener and Redis
#     (benches/resp_compare.sh).
#
#   benches/compare.sh [--record]   # ROUNDS=3 DURATION=5 by default
#   ROUNDS=5 DURATION=10 benches/compare.sh
#
# CACHETD=path runs another cachetd build than this checkout's.
# SECTIONS="load memory resp" (the default) picks the parts to run, e.g.
# SECTIONS=memory for the restart and memory table alone.
# KEEP_LOGS=dir copies the servers' logs there at the end (cachetd's log
# times each restart's replay phases).
#
# --record appends the tables to benches/RESULTS.md (without it nothing is
# written). If redis-server is missing it says so and installs it with
# apt-get. It stops exactly the processes it started (by pid), even on
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
RECORD=0
case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --record) RECORD=1 ;;
    "") ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
esac
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
KEYS=${KEYS:-1000000}
SECTIONS=" ${SECTIONS:-load memory resp} "
want() { [[ "$SECTIONS" == *" $1 "* ]]; }

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    echo "redis-server or redis-benchmark is missing: installing redis-server and redis-tools with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
cargo build --release -q -p cachetd -p cachet-benches -p cachet --features cachet/cli
LOAD=target/release/cachet-load
CACHETD=${CACHETD:-target/release/cachetd}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]:-}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP_LOGS:-}" ]; then cp "$WORK"/*.log "$KEEP_LOGS"/ 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 3000); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.01; done; echo "port $1 never opened" >&2; return 1; }

CPORT=$(free_port); RPORT=$(free_port); CRESP=$(free_port)
start_cachet() { # $1 = sync policy, $2 = data dir; returns once it logs "ready" (after the replay:
    # the port is bound before it, so an open port does not mean ready)
    local seen; seen=$(grep -c "ready: listening" "$WORK/cachetd.log" 2>/dev/null || true)
    taskset -c 0 "$CACHETD" --listen 127.0.0.1:$CPORT --listen resp://127.0.0.1:$CRESP --data-dir "$2" --sync "$1" \
        2>>"$WORK/cachetd.log" &
    CPID=$!; PIDS+=("$CPID")
    until [ "$(grep -c "ready: listening" "$WORK/cachetd.log" 2>/dev/null || true)" -gt "${seen:-0}" ]; do
        kill -0 "$CPID" 2>/dev/null || { cat "$WORK/cachetd.log" >&2; return 1; }
        sleep 0.002
    done
}
stop_cachet() { kill -TERM "$CPID"; wait "$CPID" || true; }
start_redis() { # $1 = appendfsync, $2 = dir
    mkdir -p "$2"
    taskset -c 0 redis-server --port $RPORT --bind 127.0.0.1 --save "" --appendonly yes --appendfsync "$1" \
        --dir "$2" --daemonize no --logfile "$WORK/redis.log" &
    RPID=$!; PIDS+=("$RPID"); wait_port $RPORT
    until [ "$(redis-cli -p $RPORT ping 2>/dev/null)" = PONG ]; do sleep 0.01; done
}
stop_redis() { redis-cli -p $RPORT shutdown >/dev/null 2>&1 || kill -TERM "$RPID"; wait "$RPID" || true; }

JSON="$WORK/runs.jsonl"
CPU="$WORK/cpu.txt"
MEM="$WORK/mem.txt"
touch "$JSON" "$CPU" "$MEM"
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
run_load() { # label target args...
    local label=$1 target=$2; shift 2
    local pid=$CPID
    case "$target" in redis://*) pid=$RPID ;; esac
    local before; before=$(ticks "$pid")
    taskset -c 1 "$LOAD" --target "$target" --quiet --duration "$DURATION" --warmup 1 --json "$JSON" --label "$label" "$@" > /dev/null
    echo "$label|$(( $(ticks "$pid") - before ))" >> "$CPU"
}

WORKLOADS=(
    "set 1x1|--mix set:1 --connections 1 --depth 1 --keys 100000"
    "get 1x1|--mix get:1 --connections 1 --depth 1 --keys 100000"
    "set 50x1|--mix set:1 --connections 50 --depth 1 --keys 100000"
    "get 50x1|--mix get:1 --connections 50 --depth 1 --keys 100000"
    "set 50x16|--mix set:1 --connections 50 --depth 16 --keys 100000"
    "get 50x16|--mix get:1 --connections 50 --depth 16 --keys 100000"
    "zipf 90/10 1M keys 50x16|--mix get:90,set:10 --dist zipf:0.99 --connections 50 --depth 16 --keys $KEYS"
)

if want load; then
echo "throughput rounds: $ROUNDS x ${DURATION}s per workload per system"
start_cachet everysec "$WORK/cachet-everysec"
start_redis everysec "$WORK/redis-everysec"
taskset -c 1 "$LOAD" --target cachet://127.0.0.1:$CPORT --quiet --only-preload --preload 100000 > /dev/null
taskset -c 1 "$LOAD" --target redis://127.0.0.1:$RPORT --quiet --only-preload --preload 100000 > /dev/null
for round in $(seq 1 "$ROUNDS"); do
    for w in "${WORKLOADS[@]}"; do
        name=${w%%|*}; args=${w#*|}
        run_load "cachet|$name" cachet://127.0.0.1:$CPORT $args
        run_load "redis|$name" redis://127.0.0.1:$RPORT $args
    done
done
stop_cachet; stop_redis

start_cachet always "$WORK/cachet-always"
start_redis always "$WORK/redis-always"
for round in $(seq 1 "$ROUNDS"); do
    run_load "cachet|set 50x1 sync=always" cachet://127.0.0.1:$CPORT --mix set:1 --connections 50 --depth 1 --keys 100000
    run_load "redis|set 50x1 sync=always" redis://127.0.0.1:$RPORT --mix set:1 --connections 50 --depth 1 --keys 100000
done
stop_cachet; stop_redis

fi

if want memory; then
echo "restart and memory with 1M keys (16 B keys, 100 B values), without and with a TTL on every key"
ms() { date +%s%3N; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
for ttl in never 3600; do
    # The same Redis client fills both servers (cachetd through its RESP
    # listener), so both hold the same bytes: 16 B keys, 100 B values.
    start_cachet everysec "$WORK/cachet-1m-$ttl"
    base=$(rss_kb $CPID)
    taskset -c 1 "$LOAD" --target redis://127.0.0.1:$CRESP --quiet --only-preload --preload 1000000 --key-size 16 --value-size 100 --ttl $ttl > /dev/null
    rss=$(rss_kb $CPID)
    own=$(target/release/cachet --server 127.0.0.1:$CPORT stats | awk '/memory_bytes/ {print $2}')
    stop_cachet
    log=$(du -sb "$WORK/cachet-1m-$ttl" | cut -f1)
    t0=$(ms); start_cachet everysec "$WORK/cachet-1m-$ttl"; ready=$(( $(ms) - t0 ))
    # What the daemon itself logs: from its start to its ready line.
    logged=$(grep -o "([0-9]* ms after start)" "$WORK/cachetd.log" | tail -1 | grep -o "[0-9]*")
    after=$(rss_kb $CPID); stop_cachet
    # The Rust client stores Django's key (":1:" + 16 B) and a MessagePack
    # value (100 B + 2): 5 B more per entry.
    rm -rf "$WORK/cachet-1m-rust"; start_cachet everysec "$WORK/cachet-1m-rust"
    rbase=$(rss_kb $CPID)
    taskset -c 1 "$LOAD" --target cachet://127.0.0.1:$CPORT --quiet --only-preload --preload 1000000 --key-size 16 --value-size 100 --ttl $ttl > /dev/null
    rust=$(( ($(rss_kb $CPID) - rbase) * 1024 )); stop_cachet; rm -rf "$WORK/cachet-1m-rust"
    echo "cachet|$ttl|$ready|$(( (rss - base) * 1024 ))|$(( after * 1024 ))|$own|$log|$rust|$logged" >> "$MEM"

    start_redis everysec "$WORK/redis-1m-$ttl"
    base=$(rss_kb $RPID)
    taskset -c 1 "$LOAD" --target redis://127.0.0.1:$RPORT --quiet --only-preload --preload 1000000 --key-size 16 --value-size 100 --ttl $ttl > /dev/null
    rss=$(rss_kb $RPID)
    own=$(redis-cli -p $RPORT info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
    redis-cli -p $RPORT bgrewriteaof > /dev/null; sleep 1
    until [ "$(redis-cli -p $RPORT info persistence | awk -F: '/aof_rewrite_in_progress/ {print $2}' | tr -d '\r')" = 0 ]; do sleep 0.1; done
    stop_redis
    log=$(du -sb "$WORK/redis-1m-$ttl" | cut -f1)
    t0=$(ms); start_redis everysec "$WORK/redis-1m-$ttl"; ready=$(( $(ms) - t0 ))
    # What Redis logs: the seconds its AOF took to load.
    logged=$(grep -o "DB loaded from append only file: [0-9.]* seconds" "$WORK/redis.log" | tail -1 \
        | awk '{printf "%.0f", $(NF-1) * 1000}')
    after=$(rss_kb $RPID); stop_redis
    echo "redis|$ttl|$ready|$(( (rss - base) * 1024 ))|$(( after * 1024 ))|$own|$log|0|${logged:-0}" >> "$MEM"
done

fi

RESP_TABLE=""
if want resp; then
    echo "redis-benchmark against the RESP listener and Redis"
    RESP_TABLE=$(benches/resp_compare.sh | sed 's/^/    /')
fi

python3 - "$JSON" "$ROUNDS" "$DURATION" "$CPU" "$(getconf CLK_TCK)" "$RECORD" "$RESP_TABLE" "$MEM" <<PY
import json, statistics, sys, datetime, subprocess, os
runs = [json.loads(l) for l in open(sys.argv[1])]
rounds, duration = sys.argv[2], float(sys.argv[3])
ticks = [l.rstrip("\n").rsplit("|", 1) for l in open(sys.argv[4])]
clk, record, resp_table = int(sys.argv[5]), sys.argv[6] == "1", sys.argv[7]
by = {}
for r, (label, t) in zip(runs, ticks):
    system, name = r["label"].split("|", 1)
    ops = r["ops"]
    p99 = max(v["p99_us"] for v in ops.values()) if ops else 0
    # Server CPU over the warm-up second and the run, per operation at the
    # measured rate over the same time.
    ops_total = r["total_ops_per_sec"] * (duration + 1)
    cpu_us = int(t) / clk * 1e6 / ops_total if ops_total else 0
    by.setdefault(name, {}).setdefault(system, []).append((r["total_ops_per_sec"], p99, cpu_us, r.get("client_cpu_us_per_op", 0)))
def med(xs): return statistics.median(xs) if xs else 0
lines = []
if by: lines.append("| workload | cachet ops/s | Redis ops/s | cachet/Redis | cachet p99 us | Redis p99 us | cachet CPU us/op | Redis CPU us/op | client CPU us/op (cachet crate / redis crate) |")
if by: lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, sys_runs in by.items():
    c = sys_runs.get("cachet", []); rd = sys_runs.get("redis", [])
    co, ro = med([x[0] for x in c]), med([x[0] for x in rd])
    lines.append(f"| {name} | {co:,.0f} | {ro:,.0f} | {co/ro if ro else 0:.2f} | {med([x[1] for x in c]):.0f} | {med([x[1] for x in rd]):.0f} | {med([x[2] for x in c]):.1f} | {med([x[2] for x in rd]):.1f} | {med([x[3] for x in c]):.1f} / {med([x[3] for x in rd]):.1f} |")
m = {}
for l in open(sys.argv[8]):
    system, ttl, ready, growth, after, own, log, rust, logged = l.strip().split("|")
    m[(system, ttl)] = dict(ready=int(ready), growth=int(growth), after=int(after), own=int(own), log=int(log), rust=int(rust), logged=int(logged))
mem = [] if not m else ["| 1M keys, 16 B keys, 100 B values | cachet, no TTL | Redis, no TTL | cachet, TTL | Redis, TTL |", "|---|---:|---:|---:|---:|"]
rows = [
    ("start to ready (replaying log / AOF), seen from the script", lambda d: f"{d['ready']} ms"),
    ("load time as the server logs it (cachetd: start to ready; Redis: AOF load)", lambda d: f"{d['logged']} ms"),
    ("RSS growth per key while filling (both through a Redis client)", lambda d: f"{d['growth']/1e6:.0f} B"),
    ("RSS growth per key, filled by the Rust client (Django key, MessagePack value: 5 B more)", lambda d: f"{d['rust']/1e6:.0f} B" if d['rust'] else "—"),
    ("RSS per key after the restart", lambda d: f"{d['after']/1e6:.0f} B"),
    ("own accounting per key (memory_bytes / used_memory)", lambda d: f"{d['own']/1e6:.0f} B"),
    ("log / AOF on disk (AOF after BGREWRITEAOF)", lambda d: f"{d['log']/1e6:.0f} MB"),
]
for name, f in rows if m else []:
    mem.append(f"| {name} | " + " | ".join(f(m[k]) for k in [("cachet", "never"), ("redis", "never"), ("cachet", "3600"), ("redis", "3600")]) + " |")
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
rv = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
rc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
head = [f"## {datetime.date.today()} — nproc {os.cpu_count()}, {cpu}",
        "", f"{rv}; {rc}; cachet {subprocess.run(['git','rev-parse','--short','HEAD'],capture_output=True,text=True).stdout.strip()}",
        f"Command: \`ROUNDS={rounds} DURATION={duration} benches/compare.sh\` (medians of {rounds} rounds of {duration} s; servers on core 0, load on core 1; 16 B keys, 100 B values; everysec unless noted)", ""]
resp = [] if not resp_table.strip() else ["redis-benchmark (\`benches/resp_compare.sh\`), requests per second:", "", "\`\`\`", resp_table, "\`\`\`"]
out = "\n".join(head + lines + [""] + mem + [""] + resp + [""])
print(out)
if record:
    with open("benches/RESULTS.md", "a") as f:
        f.write("\n" + out)
    print("appended to benches/RESULTS.md")
else:
    print("not written to benches/RESULTS.md (pass --record to append it)")
PY
