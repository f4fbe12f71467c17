#!/usr/bin/env bash
# Installs what the build and the tests need on a fresh Debian machine, and nothing when it is
# already there: the Rust components (rustfmt, clippy), Go (for the upstream Kubernetes
# binaries), flock. Safe to run repeatedly.
set -euo pipefail
# shellcheck disable=SC2034 # read by log() in lib/common.sh
LOG_PREFIX=prerequisites
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

command -v cargo >/dev/null || { log "cargo is missing: install Rust (https://rustup.rs) and re-run"; exit 1; }
if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
  # The Rust example (examples/hello-rust) builds for wasm32-wasip2; where rustup cannot
  # download the target, the test that builds it says it skipped.
  rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 \
    || timeout 300 rustup target add wasm32-wasip2 >/dev/null 2>&1 \
    || log "the wasm32-wasip2 target could not be installed; the Rust example's test will skip"
fi
command -v flock >/dev/null || apt_install util-linux
# Kubernetes 1.35 needs Go >= 1.25. A go of 1.21 or newer fetches a newer toolchain from the
# module proxy by itself (GOTOOLCHAIN); Debian 12's golang-go (1.19) predates that, so without
# a go that can, the toolchain module is fetched from the proxy here (as GOTOOLCHAIN would),
# cached by version.
go_minor="$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')"
if [ "${go_minor:-0}" -lt 21 ]; then
  go_root="${WA8S_CACHE:-$HOME/.cache/wa8s}/go1.25.0"
  if [ ! -x "$go_root/bin/go" ]; then
    log "go ${go_minor:+1.$go_minor }cannot fetch Go 1.25 itself; fetching the go1.25.0 toolchain module from the Go module proxy"
    go_zip="$(mktemp)"
    curl -fsSL --retry 3 -o "$go_zip" \
      "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go1.25.0.linux-$(dpkg --print-architecture).zip" \
      || { log "could not download the Go 1.25.0 toolchain from proxy.golang.org"; exit 1; }
    command -v unzip >/dev/null || apt_install unzip
    rm -rf "$go_root.partial"; mkdir -p "$go_root.partial"
    unzip -q "$go_zip" -d "$go_root.partial"
    rm -f "$go_zip"
    mv "$go_root.partial"/golang.org/toolchain@*/* "$go_root.partial/"
    rm -rf "$go_root.partial/golang.org"
    # Module zips do not keep modes.
    chmod +x "$go_root.partial"/bin/* "$go_root.partial"/pkg/tool/*/*
    mv "$go_root.partial" "$go_root"
  fi
  export PATH="$go_root/bin:$PATH"
  go_minor=25
fi
if [ "${go_minor:-0}" -lt 25 ]; then
  log "go $(go env GOVERSION) is older than 1.25; using GOTOOLCHAIN=go1.25.0+auto"
  export GOTOOLCHAIN=go1.25.0+auto
fi
# The distribution registry (OCI tests, the cluster's local registry) and htpasswd (its
# basic-auth tests).
command -v docker-registry >/dev/null || apt_install docker-registry
command -v htpasswd >/dev/null || apt_install apache2-utils
command -v curl >/dev/null || apt_install curl

# wkg (the Bytecode Alliance's wasm package tool): the OCI interop tests push and pull with a
# client nobody here wrote. Built once from crates.io (several minutes), cached by version.
WKG_VERSION="${WKG_VERSION:-0.16.1}"
WA8S_CACHE="${WA8S_CACHE:-$HOME/.cache/wa8s}"
export WA8S_WKG="$WA8S_CACHE/wkg-$WKG_VERSION/bin/wkg"
if [ ! -x "$WA8S_WKG" ]; then
  log "installing wkg $WKG_VERSION from crates.io (several minutes, once)"
  mkdir -p "$WA8S_CACHE/build"
  # Locked to its published Cargo.lock; built outside this workspace so its lockfile is used.
  (cd "$WA8S_CACHE/build" && cargo install --quiet --locked "wkg@$WKG_VERSION" --root "$WA8S_CACHE/wkg-$WKG_VERSION.partial")
  rm -rf "$WA8S_CACHE/wkg-$WKG_VERSION"
  mv "$WA8S_CACHE/wkg-$WKG_VERSION.partial" "$WA8S_CACHE/wkg-$WKG_VERSION"
fi
# The shim tests make network namespaces (as the CRI does per pod) and curl inside them.
command -v ip >/dev/null || apt_install iproute2
# The local cluster's node: runc for ordinary pods (the sandbox), Debian's CNI plugins, iptables
# (the bridge plugin's masquerade rules) and a C compiler for the static pause binary.
[ -x /usr/lib/cni/bridge ] || apt_install containernetworking-plugins
command -v runc >/dev/null || apt_install runc
command -v iptables >/dev/null || apt_install iptables
# kube-proxy's nftables mode on the tests' node (its rules are one nft table).
command -v nft >/dev/null || apt_install nftables
command -v gcc >/dev/null || apt_install gcc libc6-dev

# A cold build of the workspace takes about 13 GiB under target/; the local cluster's kubelet
# shares that disk. Say so up front instead of failing half an hour later.
free_kib="$(df -Pk . | awk 'NR==2 {print $4}')"
if [ "${free_kib:-0}" -lt $((16 * 1024 * 1024)) ]; then
  log "warning: only $((free_kib / 1024 / 1024)) GiB free on $(df -P . | awk 'NR==2 {print $6}'); a cold build and the local cluster need about 16 GiB"
fi

# The wa8s binaries the scripts and tests run (shim, operator, node installer, CLI, the cluster tool). test.sh and
# quickstart.sh build exactly this set: cargo unifies dependency features per invocation,
# and a different set would rebuild Wasmtime and Cranelift (minutes) in between.
build_wa8s_binaries() {
  cargo build "$@" --locked -p wa8s-e2e -p wa8s-shim -p wa8s-operator -p wa8s-cli -p wa8s-installer --bins
}
