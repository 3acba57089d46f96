#!/usr/bin/env bash
# cachetd's RESP front end against Redis, both driven by redis-benchmark in
# the same run: server on core 0, load on core 1, matched durability
# (cachet --sync everysec <-> appendonly yes + appendfsync everysec), 100-byte
# values over 100,000 random keys. Prints requests per second per point and
# the cachet/Redis ratio.
#
#   benches/resp_compare.sh              # N=200000 requests per point
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
}
cargo build --release -q -p cachetd
source compat/lib.sh
CACHETD=$PWD/target/release/cachetd
CP=$(free_port); RP=$(free_port)
mkdir -p "$WORK/redis"
taskset -c 0 "$CACHETD" --listen "resp://127.0.0.1:$CP" --data-dir "$WORK/cachet" --sync everysec 2>"$WORK/cachetd.log" &
PIDS+=("$!")
taskset -c 0 redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec \
    --dir "$WORK/redis" --daemonize no --logfile "$WORK/redis.log" &
PIDS+=("$!")
wait_port "$CP"; wait_port "$RP"
until [ "$(redis-cli -p "$RP" ping 2>/dev/null)" = PONG ]; do sleep 0.01; done
rps() { # port clients pipeline test
    taskset -c 1 redis-benchmark -p "$1" -c "$2" -P "$3" -t "$4" -n "$N" -r 100000 -d 100 -q 2>/dev/null |
        tr '\r' '\n' | grep -E "^${4^^}: " | tail -1 | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/'
}
printf "%-8s %-8s %12s %12s %7s\n" test point cachet redis ratio
for point in "1 1" "50 1" "50 16"; do
    set -- $point
    for t in set get; do
        c=$(rps "$CP" "$1" "$2" "$t"); r=$(rps "$RP" "$1" "$2" "$t")
        printf "%-8s %-8s %12s %12s %7.2f\n" "$t" "$1x$2" "$c" "$r" "$(echo "$c / $r" | bc -l)"
    done
done
