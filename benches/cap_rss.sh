#!/usr/bin/env bash
# RSS against --max-memory under a flood of sets: for 100 B, 1 KiB and 64 KiB
# values, starts cachetd with a cap (CAP, default 64MiB), writes several
# times the cap in distinct keys through cachet-load, and prints the
# process's RSS (and its growth over an empty daemon) beside the cap.
# Prints only; records nothing. Needs a release build (it makes one).
#   CACHETD=path  the daemon to measure (default target/release/cachetd)
#   CAP=64MiB  DURATION=10
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --help ]; then sed -n '2,9p' "$0"; exit 0; fi
cargo build --release -q -p cachetd -p cachet-benches -p cachet --features cachet/cli
CACHETD=${CACHETD:-target/release/cachetd}
CAP=${CAP:-64MiB}; DURATION=${DURATION:-10}
cap_bytes=$(python3 -c "import re,sys; m=re.fullmatch(r'(\d+)(KiB|MiB|GiB)?', '$CAP'); print(int(m[1]) << {None:0,'KiB':10,'MiB':20,'GiB':30}[m[2]])")
WORK=$(mktemp -d); PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
echo "| value | keys written | cap | RSS | RSS growth | growth / cap | entries kept |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for size in 100 1024 65536; do
    P=$(port); rm -rf "$WORK/data"
    taskset -c 0 "$CACHETD" --listen 127.0.0.1:$P --data-dir "$WORK/data" --max-memory "$CAP" 2>"$WORK/log" &
    PID=$!
    until grep -q "ready: listening" "$WORK/log"; do sleep 0.01; done
    r0=$(rss_kb $PID)
    keys=$(( cap_bytes * 4 / (size + 64) ))
    taskset -c 1 target/release/cachet-load --target cachet://127.0.0.1:$P --quiet --mix set:1 --keys $keys \
        --value-size $size --connections 16 --depth 16 --duration "$DURATION" > /dev/null
    r1=$(rss_kb $PID)
    entries=$(target/release/cachet --server 127.0.0.1:$P stats | awk '$1 == "entries" {print $2}')
    python3 - "$size" "$keys" "$cap_bytes" "$r0" "$r1" "$entries" <<'PY'
import sys
size, keys, cap, r0, r1, entries = (int(x) for x in sys.argv[1:])
print(f"| {size} B | {keys:,} | {cap >> 20} MiB | {r1/1024:.1f} MiB | {(r1-r0)/1024:.1f} MiB | {(r1-r0)*1024/cap:.2f} | {entries:,} |")
PY
    kill $PID; wait $PID || true; PID=
done
