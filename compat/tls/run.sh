#!/usr/bin/env bash
# Redis clients over TLS: cachetd's resp+tls:// listener with certificates
# made by openssl, driven by redis-cli --tls and redis-py with ssl=True,
# then with mutual TLS (a client certificate required, and refused without).
#
#   compat/tls/run.sh      # needs redis-cli (redis-tools), openssl and redis-py
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
need_redis_py
cd "$WORK"
# A CA, a server certificate for 127.0.0.1 signed by it, a client certificate.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=cachet test CA" \
    -keyout ca.key -out ca.pem 2>/dev/null
for who in server client; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$who" -keyout "$who.key" -out "$who.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%sAuth\n' "$who" > "$who.ext"
    openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile "$who.ext" -out "$who.pem" 2>/dev/null
done
cachetd_bin
start_tls() { # NAME PORT [flags…]
    local name=$1 port=$2
    shift 2
    "$CACHETD" --listen "resp+tls://127.0.0.1:$port" --tls-cert server.pem --tls-key server.key \
        --data-dir "$WORK/$name" "$@" 2>"$WORK/$name.log" &
    PIDS+=("$!")
    wait_port "$port" || { cat "$WORK/$name.log" >&2; return 1; }
}
P=$(free_port)
start_tls plain "$P"
echo "-- redis-cli --tls"
[ "$(redis-cli -p "$P" --tls --cacert ca.pem PING)" = PONG ]
redis-cli -p "$P" --tls --cacert ca.pem SET greeting "over tls" >/dev/null
[ "$(redis-cli -p "$P" --tls --cacert ca.pem GET greeting)" = "over tls" ]
# Without --tls the client gets no answer (the server wants a handshake).
if out=$(timeout 15 redis-cli -p "$P" PING 2>&1) && [ "$out" = PONG ]; then
    echo "a plain-text client was answered on a TLS port" >&2
    exit 1
fi
echo "-- redis-py ssl=True"
python3 - "$P" <<'PY'
import sys, redis
r = redis.Redis(port=int(sys.argv[1]), ssl=True, ssl_ca_certs="ca.pem")
assert r.ping()
r.set("py", b"\x00\x01bytes")
assert r.get("py") == b"\x00\x01bytes"
assert r.get("greeting") == b"over tls"
try:
    redis.Redis(port=int(sys.argv[1]), ssl=True, ssl_ca_certs="server.pem", socket_timeout=5).ping()
except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
    pass
else:
    raise SystemExit("a client that trusts the wrong CA was served")
PY
M=$(free_port)
start_tls mutual "$M" --tls-client-ca ca.pem
echo "-- mutual TLS"
[ "$(redis-cli -p "$M" --tls --cacert ca.pem --cert client.pem --key client.key PING)" = PONG ]
if out=$(timeout 15 redis-cli -p "$M" --tls --cacert ca.pem PING 2>&1) && [ "$out" = PONG ]; then
    echo "a client without a certificate was served under --tls-client-ca" >&2
    exit 1
fi
echo "tls: redis-cli and redis-py over TLS, mutual TLS refused without a certificate"
