#!/usr/bin/env bash
# redis-cli (one-shot and reading commands from stdin, as a session) and
# redis-benchmark against cachetd's RESP listener. Fails on any error line.
#
#   compat/redis-tools/run.sh       # needs redis-cli and redis-benchmark (Debian: redis-tools)
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null || {
    echo "redis-cli and redis-benchmark are needed (apt-get install redis-tools)" >&2
    exit 1
}
PORT=$(free_port)
start_cachetd one "$PORT"
cli() { redis-cli -p "$PORT" "$@"; }
expect() { # expect WANT COMMAND…
    local want=$1
    shift
    local got
    got=$("$@")
    [ "$got" = "$want" ] || { echo "FAIL: $* gave '$got', expected '$want'" >&2; exit 1; }
}

# One-shot.
expect PONG cli ping
expect OK cli set greeting "hello world"
expect "hello world" cli get greeting
expect 1 cli exists greeting
expect 11 cli strlen greeting
expect 5 cli incrby visits 5
expect 1 cli expire visits 100
expect 100 cli ttl visits
expect "" cli get missing
# A session: commands read from stdin, replies in order.
out=$(printf 'SET s 1\nINCR s\nGET s\nMULTI\nINCR s\nINCR s\nEXEC\nDEL s\nGET s\n' | cli)
want=$(printf 'OK\n2\n2\nOK\nQUEUED\nQUEUED\n3\n4\n1\n')
[ "$out" = "$want" ] || { echo "FAIL: session gave:"$'\n'"$out" >&2; exit 1; }
# Interactive, on a terminal: redis-cli gets a pseudo-terminal (and the
# answers a terminal gives to its cursor queries); it asks COMMAND DOCS for
# its hints and prints replies the interactive way.
python3 - "$PORT" <<'PY'
import os, pty, select, sys, time
port = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("redis-cli", ["redis-cli", "-p", port])
out = b""
lines = [b'set tty "a b"\r', b"get tty\r", b"incr n\r", b"quit\r"]
deadline = time.time() + 20
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if b"\x1b[6n" in chunk:
            os.write(fd, b"\x1b[1;1R")
    elif lines and out.rstrip().endswith(b">"):
        os.write(fd, lines.pop(0))
os.waitpid(pid, 0)
text = out.decode(errors="replace")
for want in ['OK', '"a b"', '(integer) 1']:
    if want not in text:
        sys.exit(f"FAIL: interactive redis-cli lacks {want}:\n{text}")
PY
# Errors read as Redis's.
err=$(cli nosuch a b 2>&1)
case "$err" in *"unknown command 'nosuch', with args beginning with: 'a' 'b'"*) ;; *) echo "FAIL: $err" >&2; exit 1 ;; esac
# --scan walks every key.
for i in $(seq 1 250); do echo "SET scan:$i $i"; done | cli >/dev/null
n=$(cli --scan --pattern 'scan:*' | sort -u | wc -l)
[ "$n" = 250 ] || { echo "FAIL: --scan found $n of 250 keys" >&2; exit 1; }
# INFO and CONFIG GET as redis-cli shows them.
cli info keyspace | grep -q '^db0:keys=' || { echo "FAIL: INFO keyspace" >&2; exit 1; }
expect $'appendonly\nyes' cli config get appendonly

# redis-benchmark: every test runs, none reports an error.
bench=$(redis-benchmark -p "$PORT" -t set,get,incr,mset,ping -n 20000 -c 20 -q 2>&1 | tr '\r' '\n')
echo "$bench" | grep -E "requests per second" | sed 's/^ *//'
if echo "$bench" | grep -qiE "error|ERR "; then
    echo "FAIL: redis-benchmark reported errors:" >&2
    echo "$bench" | grep -iE "error|ERR " >&2
    exit 1
fi
for t in PING_INLINE PING_MBULK SET GET INCR "MSET (10 keys)"; do
    echo "$bench" | grep -q "^$t: .*requests per second" || { echo "FAIL: redis-benchmark did not finish $t" >&2; exit 1; }
done
echo "redis-cli and redis-benchmark against cachetd: ok"
