#!/usr/bin/env bash
# Applies the kernel settings of deploy/sysctl.d/99-spooky.conf to the running kernel, showing each
# change, and can undo them.
#
#   scripts/tune-kernel.sh --dry-run    show what would change (no root needed)
#   scripts/tune-kernel.sh              apply; the values found before the first apply are saved
#   scripts/tune-kernel.sh --persist    apply, and install the file into /etc/sysctl.d (boot)
#   scripts/tune-kernel.sh --revert     restore the saved values and remove the persisted file
#
# Running it again is harmless: keys already at their value print "unchanged", and the saved
# values stay the ones from before the first apply. Keys this kernel does not have (for example
# net.netfilter.* while nf_conntrack is not loaded) are skipped with a message.
#
# Environment (mainly for tests): SPOOKY_SYSCTL_STATE overrides the state file
# (/var/lib/spooky/sysctl-before.conf), SPOOKY_SYSCTL_DIR the directory --persist installs into
# and --revert removes from (/etc/sysctl.d).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tune-kernel.sh [--dry-run] [--persist | --revert] [--file FILE]
  --dry-run   print what would change and change nothing
  --persist   after applying, install FILE as /etc/sysctl.d/99-spooky.conf (applied at boot)
  --revert    restore the values saved at the first apply; remove /etc/sysctl.d/99-spooky.conf
  --file FILE settings to apply (default: deploy/sysctl.d/99-spooky.conf of this checkout, else
              /etc/sysctl.d/99-spooky.conf)
EOF
}

say() { printf '%s\n' "$*"; }
die() { printf 'tune-kernel: %s\n' "$*" >&2; exit 1; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${SPOOKY_SYSCTL_STATE:-/var/lib/spooky/sysctl-before.conf}"
sysctl_dir="${SPOOKY_SYSCTL_DIR:-/etc/sysctl.d}"
persisted="$sysctl_dir/99-spooky.conf"
file=""
dry_run=0
persist=0
revert=0

while (($#)); do
  case "$1" in
    -h | --help)
      usage
      exit 0
      ;;
    --dry-run) dry_run=1 ;;
    --persist) persist=1 ;;
    --revert) revert=1 ;;
    --file)
      (($# >= 2)) || die "--file needs a path"
      file="$2"
      shift
      ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

((persist && revert)) && die "--persist and --revert cannot be combined"
command -v sysctl >/dev/null 2>&1 || die "sysctl not found (package procps)"

if [[ -z "$file" ]]; then
  if [[ -f "$here/../deploy/sysctl.d/99-spooky.conf" ]]; then
    file="$(cd "$here/.." && pwd)/deploy/sysctl.d/99-spooky.conf"
  else
    file="$persisted"
  fi
fi

if ((!dry_run)) && [[ $(id -u) -ne 0 ]]; then
  die "changing kernel settings needs root: run it with sudo, or add --dry-run to only see the changes"
fi

# Collapses runs of spaces and tabs: sysctl prints multi-value keys with tabs, files use spaces.
normalize() {
  local -a words
  read -ra words <<<"$1" || true
  printf '%s' "${words[*]}"
}

# Reads `key = value` lines (sysctl.d syntax: # and ; start comments, a leading - on a key means
# "ignore errors") into the parallel arrays keys/values.
keys=()
values=()
read_settings() {
  local line key value
  keys=()
  values=()
  while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line#"${line%%[![:space:]]*}"}"
    [[ -z "$line" || "$line" == \#* || "$line" == \;* ]] && continue
    [[ "$line" == *=* ]] || die "$1: cannot parse line: $line"
    key="$(normalize "${line%%=*}")"
    key="${key#-}"
    value="$(normalize "${line#*=}")"
    keys+=("$key")
    values+=("$value")
  done <"$1"
}

# Whether the running kernel has KEY (dots or slashes as separators, as in sysctl.d).
present() {
  local path="$1"
  [[ "$path" == */* ]] || path="${path//.//}"
  [[ -e "/proc/sys/$path" ]]
}

current() {
  local raw
  raw="$(sysctl -n "$1" 2>/dev/null)" || return 1
  normalize "$raw"
}

# True when KEY is a size or limit (its name has mem, max, backlog or budget) and a number in WANT
# is smaller than the number at the same position in CURRENT. Flags (tcp_slow_start_after_idle)
# and timeouts are not compared: for them a smaller value is not a loss of capacity.
lowers() {
  [[ "$1" =~ (mem|max|backlog|budget) ]] || return 1
  shift
  local -a cur wanted
  local i
  read -ra cur <<<"$1" || true
  read -ra wanted <<<"$2" || true
  for i in "${!wanted[@]}"; do
    [[ "${wanted[$i]}" =~ ^[0-9]+$ && "${cur[$i]:-}" =~ ^[0-9]+$ ]] || continue
    ((${wanted[$i]} < ${cur[$i]})) && return 0
  done
  return 1
}

failures=0
# Sets KEY to VALUE (or reports what it would do), printing `key: before -> after`.
set_key() {
  local key="$1" want="$2" note="" before after err
  if ! present "$key" || ! before="$(current "$key")"; then
    say "$key: skipped, not present on this kernel (module not loaded, or not available here)"
    return 0
  fi
  if [[ "$before" == "$want" ]]; then
    say "$key: unchanged ($before)"
    return 0
  fi
  if ((!revert)) && lowers "$key" "$before" "$want"; then
    note="  [lower than now: delete the line in $file to keep $before]"
  fi
  if ((dry_run)); then
    say "$key: $before -> $want (dry run)$note"
    return 0
  fi
  # Some sysctl versions exit 0 even when the write is refused, so the value is read back.
  err="$(sysctl -q -w "$key=$want" 2>&1)" || true
  after="$(current "$key")" || after="?"
  if [[ "$after" == "$want" ]]; then
    say "$key: $before -> $after$note"
  else
    say "$key: FAILED to set $want, the kernel kept $after${err:+ ($err)}"
    failures=$((failures + 1))
  fi
}

# Records the values found before the first apply; later applies only add keys new to FILE.
save_state() {
  local i key value added=0
  local -a saved_keys=()
  if [[ -f "$state" ]]; then
    read_settings "$state"
    saved_keys=("${keys[@]}")
  fi
  read_settings "$file"
  ((dry_run)) && return 0
  mkdir -p "$(dirname "$state")"
  if [[ ! -f "$state" ]]; then
    printf '# Kernel settings before the first scripts/tune-kernel.sh run (%s).\n# Restore with: scripts/tune-kernel.sh --revert\n' \
      "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$state"
  fi
  for i in "${!keys[@]}"; do
    key="${keys[$i]}"
    [[ " ${saved_keys[*]} " == *" $key "* ]] && continue
    if ! present "$key" || ! value="$(current "$key")"; then
      continue
    fi
    printf '%s = %s\n' "$key" "$value" >>"$state"
    added=$((added + 1))
  done
  if ((${#saved_keys[@]})); then
    say "previous values: kept those saved in $state at the first apply (added $added new key(s))"
  else
    say "previous values: saved to $state (restore with --revert)"
  fi
}

if ((revert)); then
  [[ -f "$state" ]] || die "nothing to revert: $state does not exist (it is written by the first apply)"
  ((dry_run)) && say "dry run: nothing is changed"
  say "restoring the values saved in $state"
  read_settings "$state"
  for i in "${!keys[@]}"; do
    set_key "${keys[$i]}" "${values[$i]}"
  done
  if ((failures)); then
    die "$failures key(s) could not be restored; $state is kept"
  fi
  if ((dry_run)); then
    [[ -f "$persisted" ]] && say "would remove $persisted (it would apply the settings again at boot)"
    say "would remove $state"
    exit 0
  fi
  if [[ -f "$persisted" ]]; then
    rm -f "$persisted"
    say "removed $persisted so the settings are not applied again at boot (scripts/install.sh installs it again)"
  fi
  rm -f "$state"
  say "removed $state"
  exit 0
fi

[[ -f "$file" ]] || die "settings file not found: $file"
((dry_run)) && say "dry run: nothing is changed"
say "applying $file"
save_state
for i in "${!keys[@]}"; do
  set_key "${keys[$i]}" "${values[$i]}"
done

if ((persist)); then
  if [[ -f "$persisted" ]] && cmp -s "$file" "$persisted"; then
    say "persist: $persisted is already up to date"
  elif ((dry_run)); then
    say "persist: would install $file as $persisted"
  else
    install -D -m 0644 "$file" "$persisted"
    say "persist: installed $persisted (applied at every boot by systemd-sysctl)"
  fi
fi

((failures)) && die "$failures key(s) could not be set (see FAILED above)"
exit 0
