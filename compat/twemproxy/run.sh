#!/usr/bin/env bash
# Scale-out on an existing proxy: twemproxy (Debian's nutcracker) in front
# of three cachetds with a `redis: true` pool. Sets and reads 10,000 keys
# through the proxy, checks they are spread over all three, kills one
# cachetd and checks that the keys on the other two keep working.
#
#   compat/twemproxy/run.sh      # needs nutcracker (apt-get install nutcracker) and redis-py
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
command -v nutcracker >/dev/null || { echo "nutcracker is needed (apt-get install nutcracker)" >&2; exit 1; }
need_redis_py
P1=$(free_port); P2=$(free_port); P3=$(free_port); PROXY=$(free_port)
start_cachetd a "$P1"; A=$CACHETD_PID
start_cachetd b "$P2"
start_cachetd c "$P3"
# The configuration README shows, on these ports.
cat > "$WORK/nutcracker.yml" <<YML
cachet:
  listen: 127.0.0.1:$PROXY
  redis: true
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: false
  timeout: 2000
  servers:
    - 127.0.0.1:$P1:1 cachet-a
    - 127.0.0.1:$P2:1 cachet-b
    - 127.0.0.1:$P3:1 cachet-c
YML
nutcracker -t -c "$WORK/nutcracker.yml" >/dev/null
nutcracker -c "$WORK/nutcracker.yml" -o "$WORK/nutcracker.log" &
PIDS+=("$!")
wait_port "$PROXY"
cat "$WORK/nutcracker.yml" >/dev/null
python3 - "$PROXY" "$P1" "$P2" "$P3" "$A" <<'PY'
import os, signal, sys, time
import warnings
import redis

warnings.simplefilter("ignore", DeprecationWarning)

proxy, ports, victim = int(sys.argv[1]), [int(p) for p in sys.argv[2:5]], int(sys.argv[5])
# twemproxy speaks RESP2 only and closes connections on commands it does not
# proxy (HELLO, CLIENT SETINFO), so the client is told not to send them.
via = redis.Redis(port=proxy, socket_timeout=5, protocol=2, lib_name=None, lib_version=None)
keys = [f"key:{i}" for i in range(10_000)]
pipe = via.pipeline(transaction=False)
for k in keys:
    pipe.set(k, k.upper(), ex=3600)
pipe.execute()
pipe = via.pipeline(transaction=False)
for k in keys:
    pipe.get(k)
assert pipe.execute() == [k.upper().encode() for k in keys], "a key read back wrong through the proxy"

direct = [redis.Redis(port=p, socket_timeout=5) for p in ports]
sizes = [d.dbsize() for d in direct]
print("keys per cachetd:", sizes)
assert sum(sizes) == len(keys), sizes
assert all(s > len(keys) // 10 for s in sizes), f"keys are not spread over all three: {sizes}"
on_victim = set()
for k in keys:
    if direct[0].exists(k):
        on_victim.add(k)

os.kill(victim, signal.SIGKILL)
time.sleep(0.2)
ok = failed = 0
for k in keys:
    try:
        v = via.get(k)
    except redis.RedisError:
        assert k in on_victim, f"{k} is not on the killed cachetd, yet failed"
        failed += 1
        continue
    assert k not in on_victim or v is None
    assert v == k.upper().encode(), f"{k} read back {v!r}"
    ok += 1
assert ok == len(keys) - len(on_victim), (ok, len(on_victim))
print(f"after killing one cachetd: {ok} keys still served, {failed} on the dead one refused")
PY
[ $? = 0 ] || { tail -20 "$WORK/nutcracker.log"; exit 1; }
echo "twemproxy in front of three cachetds: ok"
