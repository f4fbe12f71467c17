#!/usr/bin/env bash
# Benchmarks on a real kind cluster (e2e/scripts/kind.sh; the node image and every binary
# already built, the wa8s images in target/images):
#   1. `kind create cluster` (1 control plane, 2 workers) → wa8s Ready: cluster up, the wa8s
#      images loaded with `kind load image-archive`, `helm install --wait`, every node
#      labelled ready by the node installer (which restarts containerd through systemd);
#   2. `kubectl apply` of a WebAssembly → first HTTP 200 from its pod, uncached (a digest no
#      node has seen) and cached (the same object deleted and applied again), for the 7 KiB
#      hello component, as e2e/scripts/bench-apply.sh measures it on the embedded cluster.
#      The clock and the poller run inside the control-plane node (its kubectl and curl), so
#      no `podman exec` start-up is on the clock; polling adds up to ~0.1 s;
#   3. `kubectl top pod` of the wasm pods.
# The cluster (wa8s-bench) is deleted at the end.
# Usage: e2e/scripts/bench-kind.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
rounds="${1:-3}"
name=wa8s-bench
cp="$name-control-plane"
export CONTAINERS_CONF="$PWD/e2e/kind/containers.conf"
bash e2e/scripts/kind.sh down --name "$name" >/dev/null 2>&1 || true
trap 'bash e2e/scripts/kind.sh down --name "$name" >/dev/null 2>&1 || true' EXIT
# 1. the quickstart on kind, which times itself (the node image is built before its clock).
bash e2e/scripts/kind-quickstart.sh --name "$name" --registry-port 5002 | tee /dev/stderr \
  | grep '^kind create cluster → wa8s Ready' || { echo "the kind quickstart failed" >&2; exit 1; }
out="$(bash e2e/scripts/kind.sh up --name "$name" --registry-port 5002 2>/dev/null)"
kubeconfig="$(sed -n 's/^kubeconfig=//p' <<<"$out")"
kubectl_bin="$(sed -n 's/^kubectl=//p' <<<"$out")"
registry="$(sed -n 's/^registry=//p' <<<"$out")"
k() { "$kubectl_bin" --kubeconfig="$kubeconfig" "$@"; }

guests="$(mktemp -d)"
cargo run --quiet --locked -p wa8s-test-components --example write-guests -- "$guests" >/dev/null
ns=wa8s-bench
k create namespace "$ns" >/dev/null
# shellcheck source=lib/bench.sh
source e2e/scripts/lib/bench.sh
# Inside the control-plane node: apply from stdin, then poll the pod's address; prints the
# seconds from just before the apply to the first 200.
in_node='export KUBECONFIG=/etc/kubernetes/admin.conf
manifest="$(cat)"; start="$(date +%s.%N)"
printf "%s\n" "$manifest" | kubectl apply --server-side -n "$0" -f - >/dev/null
deadline=$((SECONDS + 180))
while [ $SECONDS -lt $deadline ]; do
  ip="$(kubectl get pods -n "$0" -l "wa8s.reconciler.io/webassembly=$1" -o jsonpath="{.items[0].status.podIP}" 2>/dev/null || true)"
  if [ -n "$ip" ] && curl -sf -m 1 -o /dev/null "http://$ip:8080/"; then
    awk -v a="$start" -v b="$(date +%s.%N)" "BEGIN { printf \"%.2f\", b - a }"; exit 0
  fi
  sleep 0.05
done
echo "no 200 from $1 within 180 s" >&2; exit 1'
apply_to_200() { bench_manifest "$1" 32Mi | podman exec -i "$cp" bash -c "$in_node" "$ns" "$1"; }
for i in $(seq 1 "$rounds"); do
  obj="bench-$(date +%s)-$i"
  python3 e2e/scripts/lib/unique-wasm.py "$guests/http.wasm" "$guests/$obj.wasm" "$obj"
  target/debug/wa8s push "$guests/$obj.wasm" "$registry/myorg/bench:$obj" >/dev/null 2>&1
  echo "hello round $i uncached: $(apply_to_200 "$obj") s"
  delete_and_wait "$obj"
  echo "hello round $i cached:   $(apply_to_200 "$obj") s"
  [ "$i" -eq "$rounds" ] || delete_and_wait "$obj"
done

# metrics-server is not part of kind: the tests' manifest and image (e2e/kind/metrics-server.yaml).
ms_bin="$(bash e2e/scripts/build-binaries.sh metrics-server | sed -n 's/^metrics-server=//p')"
ms_version="$(basename "$(dirname "$ms_bin")")"; ms_version="${ms_version#metrics-server-}"
ctx="$(mktemp -d)"
cp "$ms_bin" "$ctx/metrics-server"
printf 'FROM scratch\nCOPY metrics-server /metrics-server\nENTRYPOINT ["/metrics-server"]\n' >"$ctx/Containerfile"
podman build -q -t "registry.k8s.io/metrics-server/metrics-server:$ms_version" "$ctx" >/dev/null
podman save -q --format docker-archive -o "$ctx/ms.tar" "registry.k8s.io/metrics-server/metrics-server:$ms_version"
bash e2e/scripts/kind.sh load --name "$name" "$ctx/ms.tar" 2>/dev/null
sed "s/METRICS_SERVER_VERSION/$ms_version/" e2e/kind/metrics-server.yaml | k apply --server-side -f - >/dev/null
k rollout status -n kube-system deployment/metrics-server --timeout=240s >/dev/null
k apply --server-side -f e2e/kind/metrics-apiservice.yaml >/dev/null
deadline=$((SECONDS + 240))
# A fresh discovery cache each time: kubectl would keep the API list from before
# metrics.k8s.io was registered.
until rows="$(k top pod -n "$ns" --containers --no-headers --cache-dir "$(mktemp -d)" 2>/dev/null)" && [ -n "$rows" ]; do
  if [ $SECONDS -ge $deadline ]; then
    # Seen here: the aggregator kept metrics.k8s.io FailedDiscoveryCheck (404) although
    # metrics-server served; the kubelet's own numbers are what metrics-server would report.
    echo "kubectl top gave no rows within 240 s ($(k get apiservice v1beta1.metrics.k8s.io --no-headers)); the kubelets' resource metrics instead:"
    for node in $(k get nodes -o name); do
      k get --raw "/api/v1/nodes/${node#node/}/proxy/metrics/resource" | grep -E '^container_(cpu_usage_seconds_total|memory_working_set_bytes)\{container="module"'
    done
    exit 0
  fi
  sleep 2
done
echo "kubectl top pod (POD CONTAINER CPU MEMORY):"
echo "$rows"
rm -rf "$guests" "$ctx"
