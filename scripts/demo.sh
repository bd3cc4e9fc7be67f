#!/usr/bin/env bash
# Starts Spooky on its embedded demo default (generated CA and certificate, built-in HTTP/2
# backend), sends one HTTP/3 request through it and shows the response, then keeps Spooky running
# in the foreground until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

port="${SPOOKY_DEMO_PORT:-8443}"
cargo build --release -p spooky -p spooky-bench

log=$(mktemp)
target/release/spooky --demo --port "$port" >"$log" 2>&1 &
spooky_pid=$!
trap 'kill "$spooky_pid" 2>/dev/null; wait "$spooky_pid" 2>/dev/null; rm -f "$log"' EXIT INT TERM

for _ in $(seq 1 100); do
  grep -q "Stop with Ctrl-C" "$log" && break
  kill -0 "$spooky_pid" 2>/dev/null || { cat "$log"; echo "demo: spooky exited" >&2; exit 1; }
  sleep 0.1
done
cat "$log"
ca=$(sed -n 's/.*CA certificate to trust: //p' "$log")

echo
echo "\$ target/release/spooky-bench get --include --ca $ca https://localhost:$port/hello"
target/release/spooky-bench get --include --ca "$ca" "https://localhost:$port/hello"
echo
echo "\$ target/release/spooky-bench get --tcp --include --ca $ca https://localhost:$port/hello"
target/release/spooky-bench get --tcp --include --ca "$ca" "https://localhost:$port/hello"
echo
echo "Spooky keeps running (pid $spooky_pid); press Ctrl-C to stop."
tail -n +1 -f "$log" --pid "$spooky_pid" | sed -n '/Stop with Ctrl-C/,$p' | tail -n +2 &
wait "$spooky_pid"
