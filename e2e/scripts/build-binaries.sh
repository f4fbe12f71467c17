#!/usr/bin/env bash
# Builds the upstream Go binaries the local cluster needs, from the Go module proxy, and caches
# them by version under $WA8S_CACHE/bin. A binary already in the cache is never rebuilt.
#
#   build-binaries.sh [etcd] [kube-apiserver] [kube-controller-manager] [kube-scheduler] [kubelet]
#                     [kube-proxy] [containerd] [ctr] [containerd-shim-runc-v2] [crictl] [helm]
#                     [metrics-server] [prometheus] [otelcol] [kubeadm] [kind] [coredns] [kindnetd]
#                     [cosign]
#
# With no arguments it builds etcd and kube-apiserver (what the operator tests need).
# Prints one `name=/path/to/binary` line per requested binary on stdout; logs go to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "$here/versions.sh"

log() { printf '[build-binaries] %s\n' "$*" >&2; }

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(etcd kube-apiserver)

mkdir -p "$WA8S_CACHE/build" "$WA8S_CACHE/bin"
# One build at a time: two concurrent runs (CI and a developer, or two test binaries) would
# otherwise both spend 20 minutes compiling the same thing.
exec 9>"$WA8S_CACHE/build/.lock"
flock 9

build_etcd() {
  local out
  out="$(etcd_bin_dir)"
  if [ -x "$out/etcd" ]; then log "etcd $ETCD_VERSION cached at $out/etcd"; return; fi
  local mod="$WA8S_CACHE/build/etcd-$ETCD_VERSION"
  rm -rf "$mod"; mkdir -p "$mod"
  # etcd's server module has local replace directives, so `go install` refuses it; a wrapper
  # module that calls etcdmain.Main builds the same binary.
  cat >"$mod/main.go" <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (
    cd "$mod"
    go mod init wa8s.local/etcd >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    go mod tidy >/dev/null
    log "building etcd $ETCD_VERSION (cold: several minutes)"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$mod/etcd" .
  )
  mkdir -p "$out"
  mv "$mod/etcd" "$out/etcd.tmp" && mv "$out/etcd.tmp" "$out/etcd"
  log "etcd ready: $out/etcd"
}

# Prepares a consumer module for k8s.io/kubernetes. Its go.mod requires the staging modules at
# v0.0.0 with local replaces, which only work inside the kubernetes repo; we derive the list of
# staging modules from its published go.mod and point each at the matching v0.X.Y release.
prepare_kube_module() {
  local mod="$1" staging_version gomod
  staging_version="v0.${KUBE_VERSION#v1.}"
  [ -f "$mod/go.mod" ] && return
  mkdir -p "$mod"
  gomod="$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  [ -f "$gomod" ] || { log "could not download k8s.io/kubernetes@$KUBE_VERSION's go.mod"; exit 1; }
  {
    echo "module wa8s.local/kubernetes"
    echo
    grep -E '^go [0-9]' "$gomod"
    echo
    echo "replace ("
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\t\1 => \1 '"$staging_version"'#p' "$gomod"
    echo ")"
  } >"$mod/go.mod.tmp"
  mv "$mod/go.mod.tmp" "$mod/go.mod"
  local n
  n="$(grep -c '=> k8s.io/' "$mod/go.mod")"
  [ "$n" -gt 10 ] || { log "derived only $n staging replaces from $gomod; refusing to continue"; exit 1; }
  log "derived $n staging module replaces for $KUBE_VERSION"
}

build_kube() {
  local cmd="$1" out mod
  out="$(kube_bin_dir)"
  if [ -x "$out/$cmd" ]; then log "$cmd $KUBE_VERSION cached at $out/$cmd"; return; fi
  mod="$WA8S_CACHE/build/kubernetes-$KUBE_VERSION"
  prepare_kube_module "$mod"
  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (
    cd "$mod"
    go get "k8s.io/kubernetes/cmd/$cmd@$KUBE_VERSION" >/dev/null
    log "building $cmd $KUBE_VERSION (cold: 10-25 minutes on 2 cores)"
    CGO_ENABLED=0 go build -trimpath -tags providerless -ldflags "$ldflags" -o "$mod/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  )
  mkdir -p "$out"
  mv "$mod/$cmd" "$out/$cmd.tmp" && mv "$out/$cmd.tmp" "$out/$cmd"
  log "$cmd ready: $out/$cmd"
}

# Modules without local replace directives build with a plain `go install` into a versioned
# directory (GOBIN), through a temporary directory so a half-built binary is never cached.
go_install() {
  local name="$1" pkg="$2" out="$3" tags="${4:-}"
  if [ -x "$out/$name" ]; then log "$name cached at $out/$name"; return; fi
  local tmp="$WA8S_CACHE/build/gobin-$name"
  rm -rf "$tmp"; mkdir -p "$tmp" "$out"
  log "building $name from $pkg (cold: a few minutes)"
  GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -tags "$tags" -ldflags "-s -w" "$pkg"
  mv "$tmp/$name" "$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name"
  log "$name ready: $out/$name"
}

# Like go_install, through a consumer module: the module proxy here answers 403 (not 404) for
# a package path that is not itself a module, which stops `go install` from trying the parent.
# Extra `module@version` arguments are required alongside (to lift dependencies past versions
# the proxy lacks).
go_build_from() {
  local name="$1" module="$2" version="$3" pkg="$4" out="$5"
  shift 5
  if [ -x "$out/$name" ]; then log "$name cached at $out/$name"; return; fi
  local mod="$WA8S_CACHE/build/$name-$version"
  rm -rf "$mod"; mkdir -p "$mod" "$out"
  (
    cd "$mod"
    go mod init "wa8s.local/$name" >/dev/null 2>&1
    go get "$module@$version" "$@" >/dev/null
    log "building $name $version (cold: a few minutes)"
    CGO_ENABLED=0 go build -mod=mod -trimpath -tags "${GO_TAGS:-}" -ldflags "-s -w" -o "$mod/$name" "$pkg"
  )
  mv "$mod/$name" "$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name"
  log "$name ready: $out/$name"
}

# An OpenTelemetry Collector with just what the trace tests need (the OTLP receiver, the file
# exporter), assembled by the collector's own builder (ocb) from the Go module proxy.
build_otelcol() {
  local out
  out="$(otelcol_bin_dir)"
  if [ -x "$out/otelcol-wa8s" ]; then log "otelcol-wa8s cached at $out/otelcol-wa8s"; return; fi
  local mod="$WA8S_CACHE/build/otelcol-$OTELCOL_VERSION"
  rm -rf "$mod"; mkdir -p "$mod"
  cat >"$mod/builder.yaml" <<YAML
dist:
  name: otelcol-wa8s
  description: OTLP in, JSON files out (wa8s trace tests)
  output_path: $mod/out
receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver $OTELCOL_VERSION
exporters:
  - gomod: github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter $OTELCOL_VERSION
YAML
  log "building otelcol-wa8s $OTELCOL_VERSION (cold: several minutes)"
  (
    cd "$mod"
    CGO_ENABLED=0 GOBIN="$mod/bin" go install "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_VERSION" >&2
    CGO_ENABLED=0 "$mod/bin/builder" --config builder.yaml --ldflags "-s -w" >&2
  )
  mkdir -p "$out"
  mv "$mod/out/otelcol-wa8s" "$out/otelcol-wa8s.tmp" && mv "$out/otelcol-wa8s.tmp" "$out/otelcol-wa8s"
  log "otelcol-wa8s ready: $out/otelcol-wa8s"
}

containerd_pkg() {
  echo "github.com/containerd/containerd/v2/cmd/$1@$CONTAINERD_VERSION"
}

for w in "${want[@]}"; do
  case "$w" in
    etcd) build_etcd; echo "etcd=$(etcd_bin_dir)/etcd" ;;
    kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy | kubectl | kubeadm)
      build_kube "$w"; echo "$w=$(kube_bin_dir)/$w" ;;
    containerd | ctr | containerd-shim-runc-v2)
      # No btrfs/devmapper/zfs snapshotters: they need cgo and headers, and overlayfs/native do.
      go_install "$w" "$(containerd_pkg "$w")" "$(containerd_bin_dir)" "no_btrfs no_devmapper no_zfs"
      echo "$w=$(containerd_bin_dir)/$w" ;;
    crictl)
      if [ ! -x "$(cri_tools_bin_dir)/crictl" ]; then
        sum="$(cd "$WA8S_CACHE/build" && GONOSUMDB=sigs.k8s.io/cri-tools go mod download -json "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION" | sed -n 's/.*"Sum": "\(.*\)".*/\1/p')"
        [ "$sum" = "$CRI_TOOLS_SUM" ] || { log "sigs.k8s.io/cri-tools@$CRI_TOOLS_VERSION has hash '$sum', expected $CRI_TOOLS_SUM; refusing to build it"; exit 1; }
      fi
      # cri-tools 1.34.0 requires Kubernetes libraries at v0.34.0-rc.2, which the checksum
      # database does not know; the v0.34.2 releases of the same minor are, and build it.
      pins=()
      for m in api apimachinery client-go cri-api cri-client kubectl kubelet cli-runtime component-base; do
        pins+=("k8s.io/$m@$CRI_TOOLS_K8S_LIBS")
      done
      GONOSUMDB=sigs.k8s.io/cri-tools go_build_from crictl sigs.k8s.io/cri-tools "$CRI_TOOLS_VERSION" \
        sigs.k8s.io/cri-tools/cmd/crictl "$(cri_tools_bin_dir)" "${pins[@]}"
      echo "crictl=$(cri_tools_bin_dir)/crictl" ;;
    helm)
      go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$(helm_bin_dir)"
      echo "helm=$(helm_bin_dir)/helm" ;;
    otelcol)
      build_otelcol; echo "otelcol=$(otelcol_bin_dir)/otelcol-wa8s" ;;
    prometheus)
      # Only the Kubernetes service discovery (the tests scrape through it): the other
      # discoverers (clouds, Consul, ...) would triple the build.
      GO_TAGS="remove_all_sd enable_kubernetes_sd" go_build_from prometheus github.com/prometheus/prometheus \
        "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/prometheus "$(prometheus_bin_dir)"
      echo "prometheus=$(prometheus_bin_dir)/prometheus" ;;
    metrics-server)
      go_install metrics-server "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION" "$(metrics_server_bin_dir)"
      echo "metrics-server=$(metrics_server_bin_dir)/metrics-server" ;;
    cosign)
      # Signs and verifies the release (e2e/scripts/release.sh).
      go_install cosign "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION" "$(cosign_bin_dir)"
      echo "cosign=$(cosign_bin_dir)/cosign" ;;
    kind)
      # The kind CLI (e2e/scripts/kind.sh); its node image is built by kind-node-image.sh.
      go_install kind "sigs.k8s.io/kind@$KIND_VERSION" "$(kind_bin_dir)"
      echo "kind=$(kind_bin_dir)/kind" ;;
    coredns)
      # The cluster DNS of the kind node image, at the version kubeadm expects.
      go_install coredns "github.com/coredns/coredns@$COREDNS_VERSION" "$(coredns_bin_dir)"
      echo "coredns=$(coredns_bin_dir)/coredns" ;;
    kindnetd)
      # kind's CNI daemon, vendored in third_party/kindnetd (not a module of its own on the
      # proxy); its dependencies come from the module proxy, pinned by its go.sum, except the
      # one raised below.
      if [ ! -x "$(kindnetd_bin_dir)/kindnetd" ]; then
        src="$WA8S_CACHE/build/kindnetd-$KINDNETD_VERSION"
        rm -rf "$src"; mkdir -p "$src" "$(kindnetd_bin_dir)"
        cp -r "$here/../../third_party/kindnetd/." "$src/"
        # Its go.mod pins kube-network-policies at a pseudo-version (commit f67f0fb, 2026-05-28)
        # that the module proxy here does not serve (403); the next release does and builds.
        (cd "$src" && go mod edit -require="sigs.k8s.io/kube-network-policies@$KINDNETD_KUBE_NETWORK_POLICIES")
        log "building kindnetd $KINDNETD_VERSION (cold: a few minutes)"
        (cd "$src" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags "-s -w" -o "$src/kindnetd" ./cmd/kindnetd)
        mv "$src/kindnetd" "$(kindnetd_bin_dir)/kindnetd.tmp" && mv "$(kindnetd_bin_dir)/kindnetd.tmp" "$(kindnetd_bin_dir)/kindnetd"
      else
        log "kindnetd cached at $(kindnetd_bin_dir)/kindnetd"
      fi
      echo "kindnetd=$(kindnetd_bin_dir)/kindnetd" ;;
    *) log "unknown binary '$w' (known: etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubeadm containerd ctr containerd-shim-runc-v2 crictl helm metrics-server cosign kind coredns kindnetd)"; exit 2 ;;
  esac
done
