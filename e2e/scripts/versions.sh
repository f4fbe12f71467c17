# Versions of everything the local cluster is assembled from. Sourced by the other scripts.
# Changing a version changes the cache key, so the next run rebuilds just that piece.
KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"

WA8S_CACHE="${WA8S_CACHE:-$HOME/.cache/wa8s}"
# Binaries live under $WA8S_CACHE/bin/<name>-<version>/ so two versions never collide.
kube_bin_dir() { echo "$WA8S_CACHE/bin/kubernetes-$KUBE_VERSION"; }
etcd_bin_dir() { echo "$WA8S_CACHE/bin/etcd-$ETCD_VERSION"; }
