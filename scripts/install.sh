#!/usr/bin/env bash
# Installs Spooky on this machine, or lays out its files under a staging directory.
#
#   sudo scripts/install.sh                  build if needed, install, create the spooky user
#   scripts/install.sh --prefix DIR          only lay out the files under DIR (packaging, tests):
#                                            no user creation, no systemctl
#   scripts/install.sh --no-build            fail instead of building when the binary is missing
#
# What goes where (below --prefix, default /):
#   /usr/local/bin/spooky                          the binary (SPOOKY_BIN, default target/release/spooky)
#   /etc/spooky/, /etc/spooky/certs/               root:spooky 0750
#   /etc/spooky/config.toml                        from deploy/config.example.toml, only if absent
#   /etc/systemd/system/spooky@.service            the template unit
#   /etc/sysctl.d/99-spooky.conf                   kernel settings, applied at boot
#   /etc/security/limits.d/spooky.conf             limits for runs outside systemd
#
# Running it again updates changed files, keeps an existing config.toml and says what it did.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: install.sh [--prefix DIR] [--no-build]
  --prefix DIR  install below DIR instead of / (no user creation, no systemctl)
  --no-build    do not build; fail if the binary is missing
environment:
  SPOOKY_BIN    binary to install (default: target/release/spooky of this checkout, or
                $CARGO_TARGET_DIR/release/spooky when that is set)
EOF
}

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: %s\n' "$*" >&2; exit 1; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="/"
build=1
while (($#)); do
  case "$1" in
    --prefix)
      (($# >= 2)) || die "--prefix needs a directory"
      prefix="$2"
      shift
      ;;
    --no-build) build=0 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      die "unknown argument: $1"
      ;;
  esac
  shift
done

[[ -n "$prefix" ]] || die "--prefix must not be empty"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
# A staging tree is only laid out; the live system is changed only when installing to /.
live=0
[[ "$prefix" == "/" ]] && live=1
root() { printf '%s%s' "${prefix%/}" "$1"; }

is_root=0
[[ $(id -u) -eq 0 ]] && is_root=1
if ((live && !is_root)); then
  die "installing to / needs root: run it with sudo (or use --prefix DIR to stage the files)"
fi

# --- the binary ---
default_bin="${CARGO_TARGET_DIR:-$repo/target}/release/spooky"
bin="${SPOOKY_BIN:-$default_bin}"
if [[ ! -x "$bin" ]]; then
  if [[ -n "${SPOOKY_BIN:-}" ]]; then
    die "SPOOKY_BIN=$bin is not an executable file"
  fi
  if ((!build)); then
    die "$bin is missing and --no-build was given; build it with: cargo build --release --bin spooky"
  fi
  say "$bin is missing: building it (scripts/setup.sh, then cargo build --release --bin spooky)"
  "$repo/scripts/setup.sh"
  command -v cargo >/dev/null 2>&1 ||
    die "cargo is not on PATH for $(id -un); with sudo, try: sudo env PATH=\"\$PATH\" $0"
  (cd "$repo" && cargo build --release --bin spooky)
  [[ -x "$bin" ]] || die "the build finished but $bin does not exist"
fi

# Ownership is only set when it can be: as root, and for the group once it exists.
have_group=0
own() { # own OWNER:GROUP PATH
  ((is_root)) || return 0
  if [[ "$1" == *:spooky ]] && ((!have_group)); then
    return 0
  fi
  chown "$1" "$2"
}

# put SRC DEST MODE OWNER: copies when missing or different, always fixes mode and owner.
put() {
  local src="$1" dest="$2" mode="$3" owner="$4"
  if [[ -f "$dest" ]] && cmp -s "$src" "$dest"; then
    say "unchanged $dest"
  else
    local verb="created"
    [[ -e "$dest" ]] && verb="updated"
    mkdir -p "$(dirname "$dest")"
    # Mode and owner are set on a temporary file that is then renamed over the destination: the
    # file never exists with the wrong mode, and a running binary is replaced, not overwritten.
    cp "$src" "$dest.tmp.$$"
    chmod "$mode" "$dest.tmp.$$"
    own "$owner" "$dest.tmp.$$"
    mv -f "$dest.tmp.$$" "$dest"
    say "$verb $dest"
  fi
  chmod "$mode" "$dest"
  own "$owner" "$dest"
}

# --- user and group (live installs only) ---
if ((live)); then
  if getent group spooky >/dev/null; then
    say "unchanged group spooky (exists)"
  else
    groupadd --system spooky
    say "created system group spooky"
  fi
  if getent passwd spooky >/dev/null; then
    say "unchanged user spooky (exists)"
  else
    nologin="$(command -v nologin || echo /usr/sbin/nologin)"
    useradd --system --gid spooky --no-create-home --home-dir /nonexistent \
      --shell "$nologin" --comment "Spooky load balancer" spooky
    say "created system user spooky (no login, no home)"
  fi
fi
getent group spooky >/dev/null && have_group=1
if ((is_root && !have_group)); then
  say "note: group spooky does not exist here, so /etc/spooky is left owned by $(id -un);" \
    "set root:spooky when installing on the target (scripts/install.sh does that without --prefix)"
fi

# --- files ---
put "$bin" "$(root /usr/local/bin/spooky)" 0755 root:root

for dir in /etc/spooky /etc/spooky/certs; do
  if [[ -d "$(root "$dir")" ]]; then
    say "unchanged $(root "$dir")/ (exists; mode 0750 enforced)"
  else
    mkdir -p "$(root "$dir")"
    say "created $(root "$dir")/"
  fi
  chmod 0750 "$(root "$dir")"
  own root:spooky "$(root "$dir")"
done

config="$(root /etc/spooky/config.toml)"
if [[ -e "$config" ]]; then
  say "kept existing $config"
else
  put "$repo/deploy/config.example.toml" "$config" 0640 root:spooky
fi

put "$repo/deploy/systemd/spooky@.service" "$(root /etc/systemd/system/spooky@.service)" 0644 root:root
put "$repo/deploy/sysctl.d/99-spooky.conf" "$(root /etc/sysctl.d/99-spooky.conf)" 0644 root:root
put "$repo/deploy/limits.d/spooky.conf" "$(root /etc/security/limits.d/spooky.conf)" 0644 root:root

# --- systemd ---
if ((!live)); then
  say "skipped systemctl daemon-reload (staging under $prefix)"
elif [[ -d /run/systemd/system ]]; then
  systemctl daemon-reload
  say "ran systemctl daemon-reload"
else
  say "skipped systemctl daemon-reload: systemd is not running as PID 1 here"
fi

cat <<EOF

Next steps:
  1. Edit /etc/spooky/config.toml (listener, upstreams) and put the certificate and key in
     /etc/spooky/certs/ (key: chown root:spooky, chmod 0640).
  2. Apply the kernel settings now (they are applied at boot from /etc/sysctl.d):
       scripts/tune-kernel.sh --dry-run && scripts/tune-kernel.sh
  3. Check the configuration for the CPUs an instance will use:
       taskset -c 0-3 /usr/local/bin/spooky --cores 0-3 --config /etc/spooky/config.toml --check
  4. Start one instance per CPU set (see docs/tuning.md for choosing the sets):
       systemctl enable --now spooky@0-3
       journalctl -u spooky@0-3 -f
EOF
