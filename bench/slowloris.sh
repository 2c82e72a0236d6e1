#!/usr/bin/env bash
# Slowloris against a local Fulcrum: does the header deadline close the
# connections? Run by hand (not in CI), as root for apt-get:
#
#   bench/slowloris.sh [CONNECTIONS] [SECONDS]
#
# Installs slowhttptest (Debian), builds Fulcrum, serves a demo backend on
# loopback with `header_timeout = "2s"`, runs slowhttptest in slowloris mode
# (-H) with bounded connections and duration, and reports whether the
# connections were closed by Fulcrum (slowhttptest's "closed" count) rather
# than left pending.
set -euo pipefail

CONNS=${1:-200}
DURATION=${2:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'kill ${FULCRUM_PID:-} 2>/dev/null || true; rm -rf "$WORK"' EXIT

if ! command -v slowhttptest >/dev/null; then
  apt-get update -qq && apt-get install -y -qq slowhttptest >/dev/null
fi
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"

PORT=18080
BACKEND=18081
cat >"$WORK/fulcrum.toml" <<TOML
[[listener]]
name = "public"
bind = "127.0.0.1:$PORT"
header_timeout = "2s"

[[route]]
name = "all"
pool = "web"

[pool.web]
backends = [{ addr = "127.0.0.1:$BACKEND" }]
TOML

"$ROOT/target/release/fulcrum" serve -c "$WORK/fulcrum.toml" --demo-backends \
  >"$WORK/fulcrum.log" 2>&1 &
FULCRUM_PID=$!
for _ in $(seq 50); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null && break
  sleep 0.1
done

# -H slowloris, -i 10: a header line every 10 s (longer than the deadline),
# -r: connections per second, -l: test length, -g -o: CSV + HTML report.
slowhttptest -H -c "$CONNS" -i 10 -r 100 -l "$DURATION" -t GET \
  -u "http://127.0.0.1:$PORT/" -x 24 -p 3 -g -o "$WORK/report" \
  >"$WORK/slowhttptest.out" 2>&1 || true

CSV="$WORK/report.csv"
if [[ ! -f $CSV ]]; then
  echo "slowhttptest wrote no report:"; cat "$WORK/slowhttptest.out"; exit 2
fi
# Columns: seconds,closed,pending,connected,service available
LAST=$(tail -n 1 "$CSV")
MAX_CONNECTED=$(awk -F, 'NR>1 && $4>m {m=$4} END {print m+0}' "$CSV")
CLOSED=$(echo "$LAST" | cut -d, -f2)
CONNECTED=$(echo "$LAST" | cut -d, -f4)
AVAILABLE=$(echo "$LAST" | cut -d, -f5)
echo "slowloris: $CONNS connections for ${DURATION}s against header_timeout=2s"
echo "  closed by the proxy: $CLOSED; still connected at the end: $CONNECTED (peak $MAX_CONNECTED)"
echo "  service available at the end: $AVAILABLE"
if [[ $CLOSED -gt 0 && $CONNECTED -lt $CONNS ]]; then
  echo "PASS: the header deadline closes slowloris connections"
else
  echo "FAIL: slowloris connections were kept open"; exit 1
fi
