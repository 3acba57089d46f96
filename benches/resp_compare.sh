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
# busy moment on the machine hits all of them alike. Each measurement (with
# redis-benchmark's p50 and p99 latency) is also written to
# benches/results/resp-$SYNC.csv, which `cargo run -p cachet-benches --bin
# plot` draws as SVG beside benches/RESULTS.md.
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
mkdir -p benches/results
CSV=benches/results/resp-$SYNC.csv
echo "server,test,clients,pipeline,rps,p50_ms,p99_ms" > "$CSV"
measure() { # name port clients pipeline test -> "rps p50 p99", also appended to $CSV
    local line
    line=$(taskset -c 1 redis-benchmark -p "$2" -c "$3" -P "$4" -t "$5" -n "$N" -r 100000 -d 100 --csv 2>/dev/null |
        grep -E "^\"${5^^}\"" | tail -1 | tr -d '"')
    IFS=, read -r _ rps _ _ p50 _ p99 _ <<< "$line"
    echo "$1,$5,$3,$4,$rps,$p50,$p99" >> "$CSV"
    echo "$rps $p50 $p99"
}
echo "sync=$SYNC, N=$N, $ROUNDS round(s); latency columns are redis-benchmark's p50/p99 in ms"
header() {
    printf "%-4s %-6s %11s %11s" test point cachet redis
    [ -n "${BEFORE:-}" ] && printf " %11s" before
    printf " %6s" ratio
    [ -n "${BEFORE:-}" ] && printf " %6s" before
    printf " %15s %15s\n" "p50 c/r" "p99 c/r"
}
header
IFS=, read -ra points <<< "$POINTS"
for point in "${points[@]}"; do
    set -- $point
    for t in set get; do
        for _ in $(seq "$ROUNDS"); do
            read -r c cp50 cp99 <<< "$(measure cachet "$CP" "$1" "$2" "$t")"
            [ -n "${BEFORE:-}" ] && read -r b _ _ <<< "$(measure before "$BP" "$1" "$2" "$t")"
            read -r r rp50 rp99 <<< "$(measure redis "$RP" "$1" "$2" "$t")"
            printf "%-4s %-6s %11.0f %11.0f" "$t" "$1x$2" "$c" "$r"
            [ -n "${BEFORE:-}" ] && printf " %11.0f" "$b"
            printf " %6.2f" "$(echo "$c / $r" | bc -l)"
            [ -n "${BEFORE:-}" ] && printf " %6.2f" "$(echo "$b / $r" | bc -l)"
            printf " %15s %15s\n" "$cp50/$rp50" "$cp99/$rp99"
        done
    done
done
echo "(written to $CSV)"
