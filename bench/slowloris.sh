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

# Two free loopback ports (another program may hold any fixed one).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
BACKEND=$(free_port)
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
for _ in $(seq 100); do
  grep -q "listening" "$WORK/fulcrum.log" && break
  kill -0 "$FULCRUM_PID" 2>/dev/null || { echo "fulcrum did not start:"; cat "$WORK/fulcrum.log"; exit 2; }
  sleep 0.1
done

# -H slowloris, -i 10: a header line every 10 s (longer than the deadline),
# -r: connections per second, -l: test length, -g -o: CSV + HTML report.
slowhttptest -H -c "$CONNS" -i 10 -r 100 -l "$DURATION" -t GET \
  -u "http://127.0.0.1:$PORT/" -x 24 -p 3 -g -o "$WORK/report" \
  >"$WORK/slowhttptest.out" 2>&1 || true

CSV="$WORK/report.csv"
OUT=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/slowhttptest.out")
if [[ ! -f $CSV ]]; then
  echo "slowhttptest wrote no report:"; echo "$OUT"; exit 2
fi
# slowhttptest stops early, with "No open connections left", once the
# server has closed every connection; it runs to the time limit when they
# stay open. Its CSV (seconds,closed,pending,connected,available) samples
# once a second, so the peak shows how many were held at once.
PEAK=$(awk -F, 'NR>1 && $4>m {m=$4} END {print m+0}' "$CSV")
ENDED=$(echo "$OUT" | grep -o 'Test ended on [0-9]*th second' | grep -o '[0-9]*' || echo "?")
STATUS=$(echo "$OUT" | grep -A1 'Exit status' | tr '\n' ' ' | sed 's/.*Exit status: *//; s/ *CSV report.*//; s/ *$//')
echo "slowloris: $CONNS connections, one header line every 10 s, against header_timeout=2s"
echo "  peak connections held: $PEAK; test ended at second $ENDED of $DURATION: $STATUS"
if [[ $STATUS == *"No open connections left"* ]]; then
  echo "PASS: the header deadline closed every slowloris connection"
else
  echo "FAIL: slowloris connections were kept open"; exit 1
fi
