#!/usr/bin/env bash
# Builds the proxies the benchmark matrix compares Spooky with, HAProxy 3.0 and nginx 1.26, each
# with HTTP/3, from the upstream source tarballs Debian trixie ships (the `.orig` files of its
# source packages, checked against the hashes in trixie's signed Sources index). Nothing on the
# system changes but the build packages (a C compiler, make, libssl-dev): apt reads a private
# source list under target/peers/apt. Installs target/peers/bin/haproxy and
# target/peers/bin/nginx; does nothing for a binary that is already there.
#
#   bench/peers.sh            (bench/run.sh calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

out=$PWD/target/peers
haproxy_version=3.0.11
nginx_version=1.26.3
mkdir -p "$out/bin" "$out/src"

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v make >/dev/null 2>&1 || need+=(make)
command -v curl >/dev/null 2>&1 || need+=(curl)
[[ -e /usr/include/openssl/ssl.h ]] || need+=(libssl-dev)
if ((${#need[@]})); then
  echo "peers: installing ${need[*]}"
  as_root apt-get update -qq
  as_root apt-get install -y -qq "${need[@]}"
fi

# Downloads PACKAGE's `.orig` tarball of VERSION from trixie into $out/src and prints its path.
fetch_orig() {
  local package=$1 version=$2 apt=$out/apt
  local tarball=$out/src/${package}_${version}.orig.tar.gz
  if [[ ! -f $tarball ]]; then
    mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/sources"
    cat >"$apt/sources/trixie.sources" <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    local options=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources"
      -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt")
    [[ -f $apt/updated ]] || { apt-get "${options[@]}" update -qq >&2 && touch "$apt/updated"; }
    # `--print-uris` lists each file of the source package with its SHA256 from the index.
    local line uri hash
    line=$(cd "$out/src" && apt-get "${options[@]}" --print-uris source "$package" 2>/dev/null |
      grep "_${version}.orig.tar.gz' ") ||
      { echo "peers: trixie has no $package $version source" >&2; exit 1; }
    uri=$(cut -d"'" -f2 <<<"$line")
    hash=$(sed -n 's/.*SHA256:\([0-9a-f]*\).*/\1/p' <<<"$line")
    curl -fsSL -o "$tarball.part" "$uri"
    echo "$hash  $tarball.part" | sha256sum -c --quiet - >&2 ||
      { echo "peers: $uri does not match trixie's SHA256" >&2; rm -f "$tarball.part"; exit 1; }
    mv "$tarball.part" "$tarball"
  fi
  echo "$tarball"
}

jobs=$(nproc)

if [[ ! -x $out/bin/haproxy ]]; then
  tarball=$(fetch_orig haproxy "$haproxy_version")
  rm -rf "$out/src/haproxy-$haproxy_version"
  tar -xzf "$tarball" -C "$out/src"
  echo "peers: building HAProxy $haproxy_version with QUIC (OpenSSL compatibility layer)"
  # OpenSSL 3.0 has no QUIC API; HAProxy's compatibility layer makes QUIC work over it, and
  # its configuration then needs `limited-quic` in `global`.
  make -C "$out/src/haproxy-$haproxy_version" -j"$jobs" TARGET=linux-glibc \
    USE_OPENSSL=1 USE_QUIC=1 USE_QUIC_OPENSSL_COMPAT=1 >"$out/haproxy-build.log" 2>&1 ||
    { tail -30 "$out/haproxy-build.log" >&2; exit 1; }
  install -m 755 "$out/src/haproxy-$haproxy_version/haproxy" "$out/bin/haproxy"
fi

if [[ ! -x $out/bin/nginx ]]; then
  tarball=$(fetch_orig nginx "$nginx_version")
  rm -rf "$out/src/nginx-$nginx_version"
  tar -xzf "$tarball" -C "$out/src"
  echo "peers: building nginx $nginx_version with HTTP/3"
  # Only what the benchmark's proxying uses: no PCRE (rewrite), zlib (gzip) or the FastCGI,
  # uwsgi and SCGI clients, so that libssl-dev is the only library the build needs.
  (cd "$out/src/nginx-$nginx_version" &&
    ./configure --prefix="$out/nginx" --with-http_ssl_module --with-http_v2_module \
      --with-http_v3_module --without-http_rewrite_module --without-http_gzip_module \
      --without-http_fastcgi_module --without-http_uwsgi_module --without-http_scgi_module &&
    make -j"$jobs") >"$out/nginx-build.log" 2>&1 ||
    { tail -30 "$out/nginx-build.log" >&2; exit 1; }
  install -m 755 "$out/src/nginx-$nginx_version/objs/nginx" "$out/bin/nginx"
fi

"$out/bin/haproxy" -v | head -n 1
"$out/bin/nginx" -v 2>&1
