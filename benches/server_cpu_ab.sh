#!/usr/bin/env bash
# Server CPU per operation of one or more cachetd builds, and of Redis, with
# every key present (a cache that hits): each server on core 0 gets N keys
# preloaded, then redis-benchmark (-c 50 -P 16, 100 B values over the same
# keys) runs GET and SET against it on core 1, and for cachetd builds
# cachet-load runs get and set at 50 x 16 through tarpc. Prints requests per
# second and the server's utime+stime per request (from /proc/PID/stat).
# Builds and Redis take turns, ROUNDS times. Prints only; records nothing.
#   benches/server_cpu_ab.sh [BUILD...]   (default: target/release/cachetd)
#   ROUNDS=3 N=1000000 KEYS=100000
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --help ]; then sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || {
    echo "needs redis-server and redis-benchmark (apt-get install redis-server redis-tools)" >&2
    exit 2
}
cargo build --release -q -p cachetd -p cachet-benches
BUILDS=("$@")
[ ${#BUILDS[@]} -gt 0 ] || BUILDS=(target/release/cachetd)
ROUNDS=${ROUNDS:-3}; N=${N:-1000000}; KEYS=${KEYS:-100000}
LOAD=target/release/cachet-load
WORK=$(mktemp -d); PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
. benches/lib.sh
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
per_op() { python3 -c "print(f'{($2 - $1) / $(getconf CLK_TCK) * 1e6 / $3:.2f}')"; }
bench() { # $1 = label, $2 = RESP port: redis-benchmark GET and SET, every key present
    # Random keys: five times as many sets as keys leave under 1% absent.
    taskset -c 1 redis-benchmark -p "$2" -c 50 -P 16 -t set -n $((KEYS * 5)) -r "$KEYS" -d 100 -q > /dev/null
    for t in get set; do
        local t0 rps; t0=$(ticks "$PID")
        rps=$(taskset -c 1 redis-benchmark -p "$2" -c 50 -P 16 -t $t -n "$N" -r "$KEYS" -d 100 -q 2>&1 |
            tr '\r' '\n' | awk '/requests per second/ {v=$2} END {print v}')
        echo "| $1 | RESP $t 50x16 -P 16 | ${rps%.*} | $(per_op "$t0" "$(ticks "$PID")" "$N") |"
    done
}
echo "| server | workload | requests/s | server CPU us/op |"
echo "|---|---|---:|---:|"
for _ in $(seq 1 "$ROUNDS"); do
    for b in "${BUILDS[@]}"; do
        rm -rf "$WORK/data"
        start_cachetd "$b" "$WORK/data" everysec; p=$PORT
        bench "$b" $((p + 1))
        taskset -c 1 "$LOAD" --target cachet://127.0.0.1:"$p" --quiet --only-preload --preload "$KEYS" > /dev/null
        for mix in get set; do
            t0=$(ticks "$PID")
            out=$(taskset -c 1 "$LOAD" --target cachet://127.0.0.1:"$p" --duration 4 --warmup 0 --keys "$KEYS" \
                --mix $mix:1 --connections 50 --depth 16 2>&1)
            ops=$(echo "$out" | awk '/^total/ {print $2}')
            echo "| $b | tarpc $mix 50x16 | $ops | $(per_op "$t0" "$(ticks "$PID")" $((ops * 4))) |"
        done
        stop_cachetd
    done
    p=$(port); mkdir -p "$WORK/redis"
    taskset -c 0 redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec \
        --dir "$WORK/redis" --daemonize no --logfile "$WORK/redis.log" &
    PID=$!
    until [ "$(redis-cli -p "$p" ping 2>/dev/null)" = PONG ]; do sleep 0.01; done
    bench "redis-server $(redis-server --version | awk '{print $3}')" "$p"
    redis-cli -p "$p" shutdown nosave > /dev/null 2>&1 || kill "$PID"; wait "$PID" || true; PID=
    rm -rf "$WORK/redis"
done
