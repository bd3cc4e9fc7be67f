#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable on a noisy shared machine,
# where CPU time is not. For each spooky executable given, runs it under valgrind twice (N and
# 3N requests of 1 KiB through the test backend) and prints the difference per request, so that
# startup, handshakes and shutdown cancel out.
#
#   bench/instructions.sh [--requests N] [--rate R] [--handshakes] [--quic 'KEY = VALUE'] SPOOKY...
#
# --quic adds a line to the `[quic]` table of the configuration every run uses (repeatable), to
# compare settings on one build, e.g. --quic 'path_mtu_discovery = false'.
# --rate sends R requests a second (open loop) instead of as fast as the shard answers: at a low
# rate the shard sleeps between requests, so the count includes what each sleep and wake-up costs
# in user space (the runtime's, and everything that runs again with cold state).
# --handshakes counts new connections instead: N and 3N handshakes, each connection closed once
# it is established, and the difference per connection.
#
# Needs valgrind (Debian `valgrind`) and a release build of spooky-bench.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=2000
quic_extra=""
rate_args=()
mode_args=()
while (($#)); do
  case "$1" in
    --requests) requests=$2; shift 2 ;;
    --rate) rate_args=(--rate "$2"); shift 2 ;;
    --handshakes) mode_args=(--handshake-only); shift ;;
    --quic) quic_extra+="$2"$'\n'; shift 2 ;;
    *) break ;;
  esac
done
(($#)) || {
  echo "usage: bench/instructions.sh [--requests N] [--rate R] [--handshakes] [--quic 'KEY = VALUE'] SPOOKY [SPOOKY...]" >&2
  exit 2
}
command -v valgrind >/dev/null || { echo "instructions: valgrind is not installed" >&2; exit 1; }
bench=target/release/spooky-bench
[[ -x "$bench" ]] || cargo build --release -p spooky-bench

work=$(mktemp -d)
trap 'kill "${backend_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() {
  python3 -c "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=='udp' else socket.SOCK_STREAM); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])" "$1"
}

backend_port=$(free_port tcp)
"$bench" backend --listen "127.0.0.1:$backend_port" >"$work/backend.log" 2>&1 &
backend_pid=$!
# A throwaway certificate; the load generator runs with --insecure.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1

# Total instructions of one run of `spooky` serving `count` requests.
instructions() {
  local spooky=$1 count=$2 port out
  port=$(free_port udp)
  out="$work/run-$count"
  cat >"$out.toml" <<EOF
[listen]
address = "127.0.0.1"
port = $port
tls = { cert = "$work/cert.pem", key = "$work/key.pem" }

[runtime]
cores = [0]

[quic]
steering = "off"
$quic_extra

[upstream.main]
route = { path_prefix = "/" }

[[upstream.main.backends]]
id = "backend"
address = "127.0.0.1:$backend_port"
EOF
  valgrind --tool=callgrind --callgrind-out-file="$out.cg" "$spooky" --config "$out.toml" \
    >"$out.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do
    grep -q "listening on udp" "$out.log" && break
    kill -0 "$pid" 2>/dev/null || { echo "instructions: $spooky did not start:" >&2; cat "$out.log" >&2; exit 1; }
    sleep 0.1
  done
  "$bench" load "https://localhost:$port/bytes/1024" --insecure --connections 4 --streams 8 \
    --threads 1 --requests "$count" "${rate_args[@]}" "${mode_args[@]}" >"$out.load" 2>&1
  kill -TERM "$pid"
  wait "$pid" || true
  grep -q "errors        none" "$out.load" || { cat "$out.load" >&2; exit 1; }
  sed -n 's/^summary: //p' "$out.cg"*
}

for spooky in "$@"; do
  small=$(instructions "$spooky" "$requests")
  large=$(instructions "$spooky" $((3 * requests)))
  unit=request
  ((${#mode_args[@]})) && unit=handshake
  echo "$spooky: $(((large - small) / (2 * requests))) instructions per $unit ($small for $requests, $large for $((3 * requests)))"
done
