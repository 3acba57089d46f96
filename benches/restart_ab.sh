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
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # $1 = build, $2 = data dir; sets PID and PORT once the ready line is logged
    # (a free port can be taken by another connection before cachetd binds
    # it: then another port)
    local p
    for _ in 1 2 3 4 5; do
        p=$(port)
        taskset -c 0 "$1" --listen 127.0.0.1:"$p" --listen resp://127.0.0.1:$((p + 1)) --data-dir "$2" \
            --sync never 2>"$WORK/log" &
        PID=$!
        until grep -q "ready: listening" "$WORK/log"; do
            kill -0 "$PID" 2>/dev/null || break
            sleep 0.002
        done
        if grep -q "ready: listening" "$WORK/log"; then PORT=$p; return 0; fi
        wait "$PID" || true; PID=
    done
    cat "$WORK/log" >&2; exit 1
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }
for ttl in never 36000; do
    start "${BUILDS[0]}" "$WORK/$ttl"
    taskset -c 1 target/release/cachet-load --target cachet://127.0.0.1:$PORT --quiet --only-preload \
        --preload "$KEYS" --key-size 16 --value-size 100 --ttl $ttl > /dev/null
    stop
done
echo "| build | TTL | ready ms, each round | RSS MB once ready, each round |"
echo "|---|---|---|---|"
declare -A ready rss
for _ in $(seq 1 "$ROUNDS"); do
    for b in "${BUILDS[@]}"; do
        for ttl in never 36000; do
            start "$b" "$WORK/$ttl"
            ms=$(grep -o "([0-9]* ms after start)" "$WORK/log" | grep -o "[0-9]*")
            kb=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
            stop
            ready[$b|$ttl]+="$ms "; rss[$b|$ttl]+="$((kb / 1024)) "
        done
    done
done
for b in "${BUILDS[@]}"; do
    for ttl in never 36000; do
        echo "| $b | $ttl | ${ready[$b|$ttl]}| ${rss[$b|$ttl]}|"
    done
done
