#!/usr/bin/env bash
# Records what real clients send (redis-cli one-shot and piped, redis-py
# over RESP2 and RESP3 with pipelines and a transaction, redis-benchmark)
# through a recording proxy in front of cachetd, into the resp_parse seed
# corpus. Run from the repository root after building cachetd.
set -euo pipefail
cd "$(dirname "$0")/.."
source compat/lib.sh
PORT=$(free_port)
PROXY=$(free_port)
start_cachetd seeds "$PORT"
OUT=fuzz/corpus/resp_parse
mkdir -p "$OUT"
python3 - "$PROXY" "$PORT" "$OUT" <<'PY' &
import socket, sys, threading, hashlib, os
proxy, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", proxy)); ls.listen(64)
def pump(a, b, record):
    got = b""
    while True:
        d = a.recv(65536)
        if not d:
            break
        got += d
        b.sendall(d)
    b.close()
    if record and got:
        name = hashlib.sha1(got).hexdigest()[:16]
        # The first byte is the fuzz target's read split; the rest is the traffic.
        open(os.path.join(out, name), "wb").write(b"\x05" + got[:16384])
while True:
    c, _ = ls.accept()
    s = socket.create_connection(("127.0.0.1", port))
    threading.Thread(target=pump, args=(c, s, True), daemon=True).start()
    threading.Thread(target=pump, args=(s, c, False), daemon=True).start()
PY
PIDS+=("$!")
wait_port "$PROXY"
redis-cli -p "$PROXY" set greeting "hello world" >/dev/null
redis-cli -p "$PROXY" mget a b c >/dev/null
printf 'SET s 1\nINCR s\nMULTI\nINCR s\nEXEC\nEXPIRE s 100 NX\nSCAN 0 MATCH s* COUNT 10\n' | redis-cli -p "$PROXY" >/dev/null
redis-benchmark -p "$PROXY" -t set,get,mset -n 200 -c 2 -P 4 -q >/dev/null 2>&1 || true
python3 - "$PROXY" <<'PY'
import sys, redis
port = int(sys.argv[1])
for proto in (2, 3):
    r = redis.Redis(port=port, protocol=proto)
    r.set("k", "v", ex=60, nx=True)
    r.get("k"); r.incrby("n", 5); r.ttl("k")
    p = r.pipeline(transaction=True)
    p.mset({"a": 1, "b": 2}); p.expire("a", 30); p.expire("b", 30)
    p.execute()
    p = r.pipeline(transaction=False)
    for i in range(20):
        p.set(f"p{i}", "x" * i)
    p.execute()
    r.delete("a", "b"); r.flushdb()
    r.close()
PY
sleep 0.5
ls "$OUT" | wc -l
