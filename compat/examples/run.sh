#!/usr/bin/env bash
# Runs the client crate's examples (client/examples/) against real daemons:
# web_handler and rate_limiter against one cachetd, sharded against three.
# Each example asserts what it shows, so a wrong result fails this script.
#
#   compat/examples/run.sh
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
cachetd_bin
(cd "$ROOT" && cargo build -q -p cachet --examples)
EXAMPLES="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples"
ports=()
for name in a b c; do
    port=$(free_port)
    "$CACHETD" --listen "127.0.0.1:$port" --data-dir "$WORK/$name" 2>"$WORK/$name.log" &
    PIDS+=("$!")
    wait_port "$port" || { cat "$WORK/$name.log" >&2; exit 1; }
    ports+=("127.0.0.1:$port")
done
for example in web_handler rate_limiter; do
    echo "-- $example"
    "$EXAMPLES/$example" "${ports[0]}"
done
echo "-- sharded"
"$EXAMPLES/sharded" "${ports[@]}"
echo "examples: all ran"
