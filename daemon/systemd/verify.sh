#!/usr/bin/env bash
# Checks the unit files with `systemd-analyze verify`, failing on any
# warning, and scores the service's hardening. The units name /usr/local/bin/cachetd; a temporary copy points
# them at the binary built here instead. Usage: verify.sh PATH/TO/cachetd
set -euo pipefail
bin=$(realpath "$1")
here=$(dirname "$0")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in cachetd.service cachetd.socket cachetd-resp.socket; do
    sed "s|/usr/local/bin/cachetd|$bin|" "$here/$unit" > "$tmp/$unit"
done
out=$(systemd-analyze verify "$tmp/cachetd.service" "$tmp/cachetd.socket" "$tmp/cachetd-resp.socket" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
    echo "systemd-analyze verify warned:"
    echo "$out"
    exit 1
fi
# Hardening: the exposure score systemd computes (0 best, 10 worst) must
# stay at or below 2.5.
score=$(cd "$tmp" && systemd-analyze security --offline=true cachetd.service 2>&1 | sed -n 's/.*Overall exposure level for cachetd.service: \([0-9.]*\).*/\1/p')
if [ -z "$score" ] || ! awk -v s="$score" 'BEGIN { exit !(s <= 2.5) }'; then
    echo "systemd-analyze security: exposure ${score:-unknown} for cachetd.service, above 2.5"
    exit 1
fi
echo "unit files verified; security exposure $score (at most 2.5)"
