# Versions of everything the local cluster is assembled from. Sourced by the other scripts.
# Changing a version changes the cache key, so the next run rebuilds just that piece.
KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.2.9}"
# cri-tools 1.35.0 is not on the module proxy reachable here; 1.34.0 is, but the checksum
# database has no entry for it, so the script checks this pinned module hash instead.
CRI_TOOLS_VERSION="${CRI_TOOLS_VERSION:-v1.34.0}"
CRI_TOOLS_K8S_LIBS="${CRI_TOOLS_K8S_LIBS:-v0.34.2}"
CRI_TOOLS_SUM="${CRI_TOOLS_SUM:-h1:KqL9EJ+WgHtz1HR1exezm91n+o8O2uMLs/eHzHJHAWw=}"

HELM_VERSION="${HELM_VERSION:-v3.19.5}"
# metrics-server 0.9 is the line for Kubernetes 1.34+ (kubectl top on the tests' node).
METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-v0.9.0}"

# Prometheus 3.16 (its Go module is versioned v0.316.0): scrapes the operator and wasm pods
# in the observability scenarios.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"

WA8S_CACHE="${WA8S_CACHE:-$HOME/.cache/wa8s}"
# Binaries live under $WA8S_CACHE/bin/<name>-<version>/ so two versions never collide.
kube_bin_dir() { echo "$WA8S_CACHE/bin/kubernetes-$KUBE_VERSION"; }
etcd_bin_dir() { echo "$WA8S_CACHE/bin/etcd-$ETCD_VERSION"; }
containerd_bin_dir() { echo "$WA8S_CACHE/bin/containerd-$CONTAINERD_VERSION"; }
cri_tools_bin_dir() { echo "$WA8S_CACHE/bin/cri-tools-$CRI_TOOLS_VERSION"; }
helm_bin_dir() { echo "$WA8S_CACHE/bin/helm-$HELM_VERSION"; }
# The OpenTelemetry Collector (core and contrib modules at one release; the contrib file
# exporter passes here up to v0.161.0): receives the traces the trace tests check.
OTELCOL_VERSION="${OTELCOL_VERSION:-v0.161.0}"
otelcol_bin_dir() { echo "$WA8S_CACHE/bin/otelcol-$OTELCOL_VERSION"; }
prometheus_bin_dir() { echo "$WA8S_CACHE/bin/prometheus-$PROMETHEUS_VERSION"; }
metrics_server_bin_dir() { echo "$WA8S_CACHE/bin/metrics-server-$METRICS_SERVER_VERSION"; }

# The multi-node kind cluster (e2e/scripts/kind.sh, kind-node-image.sh).
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
kind_bin_dir() { echo "$WA8S_CACHE/bin/kind-$KIND_VERSION"; }
# The cluster DNS at the version kubeadm $KUBE_VERSION deploys (`kubeadm config images list`).
COREDNS_VERSION="${COREDNS_VERSION:-v1.13.1}"
coredns_bin_dir() { echo "$WA8S_CACHE/bin/coredns-$COREDNS_VERSION"; }
# kind's CNI daemon, vendored in third_party/kindnetd at the kind commit its image tag names.
KINDNETD_VERSION="${KINDNETD_VERSION:-v20260820-69b56db7}"
# Its go.mod wants sigs.k8s.io/kube-network-policies v1.0.1-0.20260528073847-f67f0fb35e2b, which
# the module proxy here does not serve; v1.1.0 (2026-06-28, after that commit) does and builds.
KINDNETD_KUBE_NETWORK_POLICIES="${KINDNETD_KUBE_NETWORK_POLICIES:-v1.1.0}"
kindnetd_bin_dir() { echo "$WA8S_CACHE/bin/kindnetd-$KINDNETD_VERSION-knp-$KINDNETD_KUBE_NETWORK_POLICIES"; }
# The node image's root file system: Debian's packages (debootstrap from the apt mirror).
KIND_NODE_DEBIAN_SUITE="${KIND_NODE_DEBIAN_SUITE:-bookworm}"

# Signing and verifying the release's images, chart and SBOM attestations (e2e/scripts/release.sh).
# 2.x: key-based signing without a transparency log is one flag (--tlog-upload=false) there.
COSIGN_VERSION="${COSIGN_VERSION:-v2.6.5}"
cosign_bin_dir() { echo "$WA8S_CACHE/bin/cosign-$COSIGN_VERSION"; }
# The release's SBOMs are checked against CycloneDX's own 1.5 JSON schema with its Python
# library (from PyPI, in a venv cached by version).
CYCLONEDX_PYTHON_LIB_VERSION="${CYCLONEDX_PYTHON_LIB_VERSION:-11.12.0}"

# Coverage-guided fuzzing (e2e/scripts/fuzz.sh): cargo-afl, which builds AFL++ when installed.
CARGO_AFL_VERSION="${CARGO_AFL_VERSION:-0.18.2}"
cargo_afl_dir() { echo "$WA8S_CACHE/bin/cargo-afl-$CARGO_AFL_VERSION"; }

# The release `helm upgrade` is tested from (e2e/tests/kind_upgrade.rs): wa8s 0.1.0 as it
# landed (commit in this repository's history), its chart and images built once and cached.
WA8S_PREVIOUS_VERSION="${WA8S_PREVIOUS_VERSION:-0.1.0}"
WA8S_PREVIOUS_COMMIT="${WA8S_PREVIOUS_COMMIT:-91e6877}"
previous_release_dir() { echo "$WA8S_CACHE/previous/wa8s-$WA8S_PREVIOUS_VERSION-$WA8S_PREVIOUS_COMMIT"; }
