#!/usr/bin/env bash
# Runs the whole test suite as CI does: formatting, lints, then every unit and integration test
# (real QUIC over UDP and real HTTP/2 over TCP on 127.0.0.1). Everything builds in the release
# profile: the tests move 100 MB bodies, and one profile means BoringSSL is built once.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --with-test-tools

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
