#!/usr/bin/env bash
# Brings up a local Kubernetes control plane (etcd + kube-apiserver from the upstream Go
# modules, cached under ~/.cache/wa8s), installs the WebAssembly CRD, applies
# examples/deploy.yaml, and shows what the API does with it. Idempotent: run it again at will.
# Stop everything with: e2e/scripts/quickstart.sh down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source e2e/scripts/prerequisites.sh

cargo build --quiet --locked -p wa8s-e2e --bin wa8s-cluster
cluster=target/debug/wa8s-cluster
if [ "${1:-}" = "down" ]; then
  "$cluster" down
  exit 0
fi

kubectl_bin="$(bash e2e/scripts/build-binaries.sh etcd kube-apiserver kubectl | sed -n 's/^kubectl=//p')"
kubeconfig="$("$cluster" up)"
k() { "$kubectl_bin" --kubeconfig="$kubeconfig" "$@"; }

echo "== installing the WebAssembly CRD"
k apply --server-side --force-conflicts -f crds/webassembly.yaml
k wait --for=condition=Established --timeout=60s crd/webassemblies.wa8s.reconciler.io

echo "== applying examples/deploy.yaml in namespace wa8s-demo"
k create namespace wa8s-demo --dry-run=client -o yaml | k apply -f -
k apply --server-side -n wa8s-demo -f examples/deploy.yaml
k get webassemblies -n wa8s-demo

echo "== a flawed object is refused with a message naming the field"
sed -e 's/name: image-processor/name: flawed/' -e 's/minReplicas: 2/minReplicas: 500/' examples/deploy.yaml \
  | k apply --server-side -n wa8s-demo -f - || true

echo "== kubectl explain webassembly.spec.wasi.network"
for _ in $(seq 1 40); do
  if k explain webassembly.spec.wasi.network 2>/dev/null; then break; fi
  sleep 0.5   # the OpenAPI document follows the CRD by a moment
done

cat <<MSG

The control plane keeps running. Explore it with:
  export KUBECONFIG=$kubeconfig
  $kubectl_bin get wasm -A
  $kubectl_bin explain webassembly.spec --recursive
Stop it and remove its state with:
  e2e/scripts/quickstart.sh down
MSG
