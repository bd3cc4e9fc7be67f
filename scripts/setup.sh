#!/usr/bin/env bash
# Installs what building Spooky needs on a fresh Debian/Ubuntu machine, only when it is missing:
# cmake, libclang-dev and git (quiche builds BoringSSL through the `boring` crate), and a C
# compiler. Rust itself comes from rustup; this script only checks for it.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
# The test suite lints the shell scripts; installing shellcheck keeps that check from skipping.
if [[ "${1:-}" == "--with-test-tools" ]] && ! command -v shellcheck >/dev/null 2>&1; then
  missing+=(shellcheck)
fi
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q libclang; then
  missing+=(libclang-dev)
fi

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo_cmd=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) and rerun" >&2
  exit 1
fi
