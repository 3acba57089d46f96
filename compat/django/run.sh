#!/usr/bin/env bash
# Runs Django's own cache test suite (cache.tests.RedisCacheTests, from the
# Django 5.2 source distribution) with Django's RedisCache pointed at a
# cachetd started here on a free port and a temporary data directory.
# Against Redis 7.0.15 the suite runs 62 tests: 59 pass, 3 skip. This
# script fails unless the same holds against cachetd.
#
#   compat/django/run.sh                # builds cachetd (debug) if needed
#   CACHETD=target/release/cachetd compat/django/run.sh
#
# Needs python3 with pip; installs redis-py and Django 5.2 (from PyPI).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DJANGO_VERSION=${DJANGO_VERSION:-5.2}
WORK=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

python3 -m pip install -q --disable-pip-version-check "redis>=5" "Django==$DJANGO_VERSION" 2>&1 | grep -v "Running pip as the 'root' user" || true
python3 -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps "Django==$DJANGO_VERSION" -d "$WORK"
tar xzf "$WORK"/[Dd]jango-"$DJANGO_VERSION".tar.gz -C "$WORK"
TESTS=$(echo "$WORK"/[Dd]jango-"$DJANGO_VERSION"/tests)

CACHETD=${CACHETD:-}
if [ -z "$CACHETD" ]; then
    (cd "$ROOT" && cargo build -q -p cachetd)
    CACHETD="$ROOT/target/debug/cachetd"
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$CACHETD" --listen "resp://127.0.0.1:$PORT" --data-dir "$WORK/data" 2>"$WORK/cachetd.log" &
PID=$!
for _ in $(seq 1 1000); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$PORT),0.2)" 2>/dev/null && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/cachetd.log"; echo "cachetd exited" >&2; exit 1; }
    sleep 0.02
done

cd "$TESTS"
set +e
CACHET_REDIS_URL="redis://127.0.0.1:$PORT" PYTHONPATH="$HERE" \
    python3 runtests.py cache.tests.RedisCacheTests --settings=cachet_settings --parallel 1 -v 2 >"$WORK/out.txt" 2>&1
status=$?
set -e
grep -E "^(test_|Ran |OK|FAILED)" "$WORK/out.txt" | grep -vE "\.\.\. ok$" || true
if [ $status -ne 0 ]; then
    sed -n '/^=====/,$p' "$WORK/out.txt" | head -200
    echo "Django's RedisCacheTests failed against cachetd" >&2
    exit 1
fi
ran=$(grep -oE "^Ran [0-9]+ tests" "$WORK/out.txt" | grep -oE "[0-9]+")
skipped=$(grep -oE "skipped=[0-9]+" "$WORK/out.txt" | grep -oE "[0-9]+" || echo 0)
echo "Django $DJANGO_VERSION RedisCacheTests against cachetd: ran $ran, skipped $skipped, passed $((ran - skipped))"
if [ "$ran" != 62 ] || [ "$skipped" != 3 ]; then
    echo "expected 62 tests with 3 skipped, as against Redis 7.0.15" >&2
    exit 1
fi
