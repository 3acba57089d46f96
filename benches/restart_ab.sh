#!/usr/bin/env bash
# Restart time and RSS of one or more cachetd builds on the same logs: fills
# a log of KEYS keys (16 B keys, 100 B values) without and with a TTL on
# every key (through cachet-load and the first build), then starts each build
# in turn on each log, ROUNDS times, pinned to core 0, and prints the
# milliseconds from exec to its ready line (as cachetd logs them) and its RSS
# once ready. Alternating the builds lets a busy moment hit all of them alike.
# Prints only; records nothing. Needs a release build (it makes one).
#   benches/restart_ab.sh [BUILD...]   (default: target/release/cachetd)
#   KEYS=1000000 ROUNDS=5
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --help ]; then sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
cargo build --release -q -p cachetd -p cachet-benches
BUILDS=("$@")
[ ${#BUILDS[@]} -gt 0 ] || BUILDS=(target/release/cachetd)
KEYS=${KEYS:-1000000}; ROUNDS=${ROUNDS:-5}
WORK=$(mktemp -d); PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
. benches/lib.sh
for ttl in never 36000; do
    start_cachetd "${BUILDS[0]}" "$WORK/$ttl" never
    taskset -c 1 target/release/cachet-load --target cachet://127.0.0.1:$PORT --quiet --only-preload \
        --preload "$KEYS" --key-size 16 --value-size 100 --ttl $ttl > /dev/null
    stop_cachetd
done
echo "| build | TTL | ready ms, each round | RSS MB once ready, each round |"
echo "|---|---|---|---|"
declare -A ready rss
for _ in $(seq 1 "$ROUNDS"); do
    for b in "${BUILDS[@]}"; do
        for ttl in never 36000; do
            start_cachetd "$b" "$WORK/$ttl" never
            ms=$(grep -o "([0-9]* ms after start)" "$WORK/log" | grep -o "[0-9]*")
            kb=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
            stop_cachetd
            ready[$b|$ttl]+="$ms "; rss[$b|$ttl]+="$((kb / 1024)) "
        done
    done
done
for b in "${BUILDS[@]}"; do
    for ttl in never 36000; do
        echo "| $b | $ttl | ${ready[$b|$ttl]}| ${rss[$b|$ttl]}|"
    done
done
