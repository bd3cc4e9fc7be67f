#!/usr/bin/env bash
# Runs every fuzz target for a given time and reports how many inputs each took.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 10)
#
# The targets are the property tests named `fuzz_*` in the `shards` and `spooky` libraries:
# Retry tokens, packet classification and connection IDs (the QUIC endpoint fed random and
# mutated datagrams), hand-off decoding, header translation in both directions, and the config
# loader. They are proptest generators, not coverage-guided fuzzers: the stable toolchain here
# runs nothing that instruments coverage. Each run draws fresh random inputs; a failure prints
# the minimal input proptest shrank it to. The ordinary test suite runs each with proptest's
# default 256 cases; this script runs them for longer.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-10}
cases=${FUZZ_CASES_PER_RUN:-2000}

cargo test --release -p shards -p spooky --lib --no-run --quiet

targets() {
  local package=$1
  cargo test --release -p "$package" --lib --quiet -- --list 2>/dev/null |
    sed -n 's/^\(.*fuzz::fuzz_[a-z0-9_]*\): test$/\1/p'
}

failed=0
for package in shards spooky; do
  for target in $(targets "$package"); do
    runs=0
    deadline=$((SECONDS + seconds))
    while ((SECONDS < deadline)); do
      if ! PROPTEST_CASES=$cases cargo test --release -p "$package" --lib --quiet -- \
        --exact "$target" >/tmp/spooky-fuzz.log 2>&1; then
        echo "FAILED $target:" >&2
        cat /tmp/spooky-fuzz.log >&2
        failed=1
        break
      fi
      runs=$((runs + 1))
    done
    printf '%-80s %12d inputs\n' "$package::$target" $((runs * cases))
  done
done
exit "$failed"
