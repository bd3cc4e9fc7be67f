#!/usr/bin/env bash
# Installs what building Spooky needs on a fresh Debian/Ubuntu machine, only when it is missing:
# cmake, git, a C and C++ compiler and libclang (quiche builds BoringSSL through `boring-sys`,
# whose bindgen step loads libclang at build time). Rust itself comes from rustup; this script
# only checks for it.
#
# The detection is in functions so that tests/deploy.rs can run it against a fake filesystem and a
# fake `ldconfig -p` listing: `source scripts/setup.sh` defines them without installing anything.
set -euo pipefail

# True when a file name is one that clang-sys (bindgen's loader) accepts as libclang: `libclang.so`,
# `libclang.so.N`, `libclang-N.so`, `libclang-N.so.N`. `libclang-cpp.so.N` is the C++ API library
# (Debian's libclang-cpp14, present on fresh images as a dependency of other tools); bindgen cannot
# use it, and a glob such as `libclang*.so*` matches it by mistake.
is_libclang_file() {
  case "$1" in
    libclang-cpp*) return 1 ;;
    libclang.so | libclang.so.* | libclang-[0-9]*.so | libclang-[0-9]*.so.*) return 0 ;;
    *) return 1 ;;
  esac
}

# True when libclang is reachable the way clang-sys looks for it: `$LIBCLANG_PATH`, the LLVM
# library directories, the multiarch library directories, or the dynamic linker's cache.
#   $1: filesystem root to search (tests pass a scratch directory; "" is the real root)
#   $2: a file holding `ldconfig -p` output ("" runs ldconfig)
have_libclang() {
  local root=$1 ldconfig_listing=$2 candidate name
  local dirs=("$root"/usr/lib/llvm-*/lib "$root"/usr/lib/*-linux-gnu "$root"/usr/lib "$root"/usr/local/lib)
  if [[ -n "${LIBCLANG_PATH:-}" ]]; then
    dirs=("$LIBCLANG_PATH" "${dirs[@]}")
  fi
  for candidate in "${dirs[@]}"; do
    [[ -d "$candidate" ]] || continue
    for name in "$candidate"/libclang*; do
      [[ -e "$name" ]] && is_libclang_file "${name##*/}" && return 0
    done
  done
  local listing
  if [[ -n "$ldconfig_listing" ]]; then
    listing=$(<"$ldconfig_listing")
  else
    listing=$(ldconfig -p 2>/dev/null || true)
  fi
  # `ldconfig -p` lines look like "\tlibclang-14.so.1 (libc6,x86-64) => /usr/lib/...".
  while read -r name _; do
    is_libclang_file "$name" && return 0
  done <<<"$listing"
  return 1
}

# Prints the Debian packages the build needs that are missing, one per line. Commands are looked
# up on $PATH; the arguments are those of have_libclang.
missing_packages() {
  local root=${1:-} ldconfig_listing=${2:-}
  command -v cmake >/dev/null 2>&1 || echo cmake
  command -v git >/dev/null 2>&1 || echo git
  if ! command -v cc >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1; then
    echo build-essential
  fi
  have_libclang "$root" "$ldconfig_listing" || echo libclang-dev
}

# Runs a command as root: directly when we are root, otherwise through sudo.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo DEBIAN_FRONTEND=noninteractive "$@"
  else
    echo "setup: need root or sudo to run: $*" >&2
    exit 1
  fi
}

# The independent servers and clients the tests run (Hypercorn, grpcio, websockets) live in a
# virtual environment under target/, pinned by bench/python/requirements.txt, so that the system
# Python is left alone. Rebuilt only when the requirements change (Debian: needs python3-venv).
install_test_python() {
  local repo venv stamp
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  venv="$repo/target/test-python"
  stamp="$venv/requirements.txt"
  if [[ -x "$venv/bin/python" ]] && cmp -s "$repo/bench/python/requirements.txt" "$stamp"; then
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || {
    echo "setup: python3 not found; the tests need it for their independent backends" >&2
    exit 1
  }
  rm -rf "$venv"
  mkdir -p "$repo/target"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    echo "setup: installing python3-venv"
    rm -rf "$venv"
    as_root apt-get update -qq
    as_root apt-get install -y -qq python3-venv
    python3 -m venv "$venv"
  fi
  echo "setup: installing the test backends' Python packages into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$repo/bench/python/requirements.txt"
  cp "$repo/bench/python/requirements.txt" "$stamp"
}

main() {
  local missing
  mapfile -t missing < <(missing_packages "" "")
  if [[ "${1:-}" == "--with-test-tools" ]]; then
    # The test suite lints the shell scripts; installing shellcheck keeps that check from
    # skipping. The browser test drives Debian's Chromium through its ChromeDriver.
    command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    # The path MTU test puts its client in a network namespace behind a veth pair, with a
    # black hole made by an nftables rule and offloads turned off by ethtool.
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    command -v ethtool >/dev/null 2>&1 || missing+=(ethtool)
  fi

  if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root apt-get install -y -qq "${missing[@]}"
    if ! have_libclang "" ""; then
      echo "setup: libclang-dev is installed but no libclang.so was found; set LIBCLANG_PATH" >&2
      exit 1
    fi
  fi

  if [[ "${1:-}" == "--with-test-tools" ]]; then
    install_test_python
  fi

  if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) and rerun" >&2
    exit 1
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
