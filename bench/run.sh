#!/usr/bin/env bash
# Runs the benchmark matrix on this machine: Spooky, HAProxy and nginx (built from Debian
# trixie's sources by bench/peers.sh when missing, unless SPOOKY_BENCH_NO_PEERS=1), Caddy
# (installed from Debian's packages when missing, unless SPOOKY_BENCH_NO_CADDY=1) and the
# backend directly, under the same load, in one run. Writes target/bench-report/report.md and
# results.json. Extra arguments go to `spooky-bench matrix` (for example --duration 5 or
# --idle-connections 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

extra=()
if [[ "${SPOOKY_BENCH_NO_PEERS:-0}" != 1 ]]; then
  bench/peers.sh
  extra+=(--haproxy target/peers/bin/haproxy --nginx target/peers/bin/nginx)
fi

if [[ "${SPOOKY_BENCH_NO_CADDY:-0}" != 1 ]] && ! command -v caddy >/dev/null 2>&1; then
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then
    sudo_cmd=(sudo)
  fi
  echo "bench: installing caddy for the comparison rows"
  if ! DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq caddy; then
    echo "bench: could not install caddy; the report will have no Caddy rows" >&2
  fi
  # The package starts a system-wide Caddy where systemd runs; the matrix starts its own.
  if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    "${sudo_cmd[@]}" systemctl stop caddy 2>/dev/null || true
  fi
fi

cargo build --release -p spooky -p spooky-bench

# The idle-connections scenario holds one UDP socket per client connection.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ "${SPOOKY_BENCH_NO_CADDY:-0}" == 1 ]]; then
  extra+=(--no-caddy)
fi
exec target/release/spooky-bench matrix --spooky target/release/spooky \
  --out target/bench-report "${extra[@]}" "$@"
