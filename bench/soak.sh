#!/usr/bin/env bash
# Runs Spooky's soak: an hour (by default) of mixed load with connection churn, a backend killed
# and restored and a configuration reload every minute. Writes target/soak/soak.csv, soak.png
# (the chart) and soak.md (the summary). Extra arguments go to `spooky-bench soak` (for example
# --duration 600 or --rate 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p spooky -p spooky-bench
exec target/release/spooky-bench soak --spooky target/release/spooky --out target/soak "$@"
