#!/usr/bin/env bash
# cachetd's RESP front end against Redis, both driven by redis-benchmark in
# the same run: servers on core 0, load on core 1, matched durability
# (cachet --sync S <-> appendonly yes + appendfsync S), 100-byte values over
# 100,000 random keys. Prints requests per second per point and the
# cachet/Redis ratio.
#
#   benches/resp_compare.sh                          # N=200000 requests per point
#   SYNC=always POINTS="50 1" benches/resp_compare.sh # matched `always`, one point
#   CACHETD=path/to/cachetd BEFORE=path/to/old/cachetd benches/resp_compare.sh
#                                                    # another build beside this one
#
# Every point runs ROUNDS times (default 1) with the servers in turn, so a
# busy moment on the machine hits all of them alike.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
SYNC=${SYNC:-everysec}
ROUNDS=${ROUNDS:-1}
POINTS=${POINTS:-"1 1,50 1,50 16"}
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || {
    echo "installing redis-server and redis-tools (apt-get)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
}
if [ -z "${CACHETD:-}" ]; then
    cargo build --release -q -p cachetd
    CACHETD=$PWD/target/release/cachetd
fi
source compat/lib.sh
CP=$(free_port); RP=$(free_port)
mkdir -p "$WORK/redis"
taskset -c 0 "$CACHETD" --listen "resp://127.0.0.1:$CP" --data-dir "$WORK/cachet" --sync "$SYNC" 2>"$WORK/cachetd.log" &
PIDS+=("$!")
if [ -n "${BEFORE:-}" ]; then
    BP=$(free_port)
    taskset -c 0 "$BEFORE" --listen "resp://127.0.0.1:$BP" --data-dir "$WORK/before" --sync "$SYNC" 2>"$WORK/before.log" &
    PIDS+=("$!")
    wait_port "$BP"
fi
taskset -c 0 redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync "$SYNC" \
    --dir "$WORK/redis" --daemonize no --logfile "$WORK/redis.log" &
PIDS+=("$!")
wait_port "$CP"; wait_port "$RP"
until [ "$(redis-cli -p "$RP" ping 2>/dev/null)" = PONG ]; do sleep 0.01; done
rps() { # port clients pipeline test
    taskset -c 1 redis-benchmark -p "$1" -c "$2" -P "$3" -t "$4" -n "$N" -r 100000 -d 100 -q 2>/dev/null |
        tr '\r' '\n' | grep -E "^${4^^}: " | tail -1 | sed -E 's/.*: ([0-9.]+) requests per second.*/\1/'
}
echo "sync=$SYNC, N=$N, $ROUNDS round(s)"
if [ -n "${BEFORE:-}" ]; then
    printf "%-5s %-6s %12s %12s %12s %7s %7s\n" test point cachet before redis ratio before
else
    printf "%-5s %-6s %12s %12s %7s\n" test point cachet redis ratio
fi
IFS=, read -ra points <<< "$POINTS"
for point in "${points[@]}"; do
    set -- $point
    for t in set get; do
        for _ in $(seq "$ROUNDS"); do
            c=$(rps "$CP" "$1" "$2" "$t")
            [ -n "${BEFORE:-}" ] && b=$(rps "$BP" "$1" "$2" "$t")
            r=$(rps "$RP" "$1" "$2" "$t")
            if [ -n "${BEFORE:-}" ]; then
                printf "%-5s %-6s %12s %12s %12s %7.2f %7.2f\n" "$t" "$1x$2" "$c" "$b" "$r" \
                    "$(echo "$c / $r" | bc -l)" "$(echo "$b / $r" | bc -l)"
            else
                printf "%-5s %-6s %12s %12s %7.2f\n" "$t" "$1x$2" "$c" "$r" "$(echo "$c / $r" | bc -l)"
            fi
        done
    done
done
