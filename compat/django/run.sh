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
source "$(dirname "$0")/../lib.sh"
HERE=$ROOT/compat/django
DJANGO_VERSION=${DJANGO_VERSION:-5.2}

python3 -m pip install -q --disable-pip-version-check "redis>=5" "Django==$DJANGO_VERSION"
python3 -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps "Django==$DJANGO_VERSION" -d "$WORK"
tar xzf "$WORK"/[Dd]jango-"$DJANGO_VERSION".tar.gz -C "$WORK"
TESTS=$(echo "$WORK"/[Dd]jango-"$DJANGO_VERSION"/tests)
PORT=$(free_port)
start_cachetd django "$PORT"

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
