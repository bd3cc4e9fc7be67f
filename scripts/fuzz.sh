#!/usr/bin/env bash
# Runs every fuzz target for a given time, or for a given number of inputs, and reports how many
# inputs each took and how fast.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 10)
#   scripts/fuzz.sh --inputs N [FILTER]       (N inputs for each target whose name has FILTER)
#
# The targets are the property tests named `fuzz_*` in the `shards` and `spooky` libraries:
# Retry tokens, packet classification and connection IDs (the QUIC endpoint fed random and
# mutated datagrams), hand-off decoding, header translation in both directions, and the config
# loader. They are proptest generators, not coverage-guided fuzzers: the stable toolchain here
# runs nothing that instruments coverage. Each run draws fresh random inputs; a failure prints
# the minimal input proptest shrank it to. The ordinary test suite runs each with proptest's
# default 256 cases; this script runs each target once in its own process, with as many cases
# as the time allows (measured on a first run of 1,000).
set -euo pipefail
cd "$(dirname "$0")/.."

inputs=""
filter=""
seconds=10
if [[ "${1:-}" == "--inputs" ]]; then
  inputs=${2:?--inputs needs a number}
  filter=${3:-}
else
  seconds=${1:-10}
fi
calibration=1000

# The test executable of a package's library, built if needed.
test_binary() {
  cargo test --release -p "$1" --lib --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1
}

now_ns() { date +%s%N; }

# Runs `target` of `binary` with `cases` cases; prints nothing, fails with proptest's report.
run_cases() {
  local binary=$1 target=$2 cases=$3
  if ! PROPTEST_CASES=$cases "$binary" --exact "$target" --test-threads 1 -q \
    >/tmp/spooky-fuzz.log 2>&1; then
    echo "FAILED $target:" >&2
    cat /tmp/spooky-fuzz.log >&2
    return 1
  fi
}

failed=0
for package in shards spooky; do
  binary=$(test_binary "$package")
  [[ -x "$binary" ]] || { echo "fuzz: no test executable for $package" >&2; exit 1; }
  for target in $("$binary" --list 2>/dev/null | sed -n 's/^\(.*fuzz::fuzz_[a-z0-9_]*\): test$/\1/p'); do
    [[ -z "$filter" || "$target" == *"$filter"* ]] || continue
    start=$(now_ns)
    if [[ -n "$inputs" ]]; then
      total=$inputs
      run_cases "$binary" "$target" "$total" || { failed=1; continue; }
    else
      run_cases "$binary" "$target" "$calibration" || { failed=1; continue; }
      spent=$(($(now_ns) - start))
      more=$(((seconds * 1000000000 - spent) * calibration / (spent > 0 ? spent : 1)))
      total=$calibration
      if ((more > 0)); then
        run_cases "$binary" "$target" "$more" || { failed=1; continue; }
        total=$((total + more))
      fi
    fi
    elapsed_ms=$((($(now_ns) - start) / 1000000))
    printf '%-75s %12d inputs %8d s %9d/s\n' "$package::$target" "$total" \
      $((elapsed_ms / 1000)) $((total * 1000 / (elapsed_ms > 0 ? elapsed_ms : 1)))
  done
done
exit "$failed"
