#!/usr/bin/env bash
# `helm install` wa8s on a real kind cluster, here, without Docker: what README's "Helm install
# on kind" does with Docker, done with kind's podman provider and a node image built from
# upstream sources (e2e/scripts/kind.sh). Brings up one control plane and two workers, loads
# the wa8s images with `kind load image-archive`, installs the chart (the node installer adds
# the runtime to every node's containerd and restarts it through systemd), pushes a hello
# component as ghcr.io/myorg/image-processor:v1.2.3 to the local registry that mirrors
# ghcr.io, applies examples/deploy.yaml and prints its Service's answer. Prints how long each
# phase took. Idempotent.
#
#   e2e/scripts/kind-quickstart.sh [--name NAME] [--registry-port PORT]
#   e2e/scripts/kind-quickstart.sh down [--name NAME]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
name=wa8s port=5001 down=
while [ $# -gt 0 ]; do
  case "$1" in
    down) down=1; shift ;;
    --name) name="$2"; shift 2 ;;
    --registry-port) port="$2"; shift 2 ;;
    *) echo "usage: kind-quickstart.sh [down] [--name NAME] [--registry-port PORT]" >&2; exit 2 ;;
  esac
done
if [ -n "$down" ]; then
  exec bash e2e/scripts/kind.sh down --name "$name"
fi
source e2e/scripts/prerequisites.sh
export CONTAINERS_CONF="$PWD/e2e/kind/containers.conf"   # podman settings for this host
build_wa8s_binaries --quiet
helm_bin="$(bash e2e/scripts/build-binaries.sh helm | sed -n 's/^helm=//p')"
# Incremental: seconds when nothing changed, so the images always match the code.
bash e2e/scripts/images.sh >&2
# The node image is built (or loaded from its cache) before the clock starts.
bash e2e/scripts/kind-node-image.sh >/dev/null

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
t0="$(now)"
echo "== kind create cluster $name (1 control plane, 2 workers; podman provider)"
out="$(bash e2e/scripts/kind.sh up --name "$name" --registry-port "$port")"
t_up="$(since "$t0")"
kubeconfig="$(sed -n 's/^kubeconfig=//p' <<<"$out")"
kubectl_bin="$(sed -n 's/^kubectl=//p' <<<"$out")"
registry="$(sed -n 's/^registry=//p' <<<"$out")"
from_nodes="$(sed -n 's/^registry_from_nodes=//p' <<<"$out")"
k() { "$kubectl_bin" --kubeconfig="$kubeconfig" "$@"; }

echo "== kind load image-archive (operator; node installer with the shim)"
bash e2e/scripts/kind.sh load --name "$name" target/images/wa8s-operator.tar target/images/wa8s-node-installer.tar
t_load="$(since "$t0")"

echo "== helm install wa8s (the operator resolves ghcr.io through the local mirror)"
KUBECONFIG="$kubeconfig" "$helm_bin" upgrade --install wa8s charts/wa8s --namespace wa8s-system \
  --create-namespace --wait --timeout 5m --set "operator.mirrors.ghcr\\.io=$from_nodes" \
  --set "operator.insecureRegistries[0]=$from_nodes"
nodes="$(k get nodes -o name | wc -l)"
deadline=$((SECONDS + 300))
until [ "$(k get nodes -l wa8s.reconciler.io/runtime=ready -o name | wc -l)" -eq "$nodes" ]; do
  [ $SECONDS -lt $deadline ] || { k get nodes -L wa8s.reconciler.io/runtime >&2; echo "not every node was prepared within 300 s" >&2; exit 1; }
  sleep 0.2
done
k get nodes -L wa8s.reconciler.io/runtime
echo "kind create cluster → wa8s Ready: $(since "$t0") s (cluster up ${t_up} s, images loaded at ${t_load} s)"

echo "== push a hello component as ghcr.io/myorg/image-processor:v1.2.3; apply examples/deploy.yaml"
guests="$(mktemp -d)"
trap 'rm -rf "$guests"' EXIT
cargo run --quiet --locked -p wa8s-test-components --example write-guests -- "$guests" >/dev/null
target/debug/wa8s push "$guests/http.wasm" "$registry/myorg/image-processor:v1.2.3"
k create namespace wa8s-demo --dry-run=client -o yaml | k apply -f - >/dev/null
k apply --server-side -n wa8s-demo -f examples/deploy.yaml
k wait -n wa8s-demo --for=condition=Ready --timeout=180s webassembly/image-processor
k get pods -n wa8s-demo -o wide
ip="$(k get svc -n wa8s-demo image-processor -o jsonpath='{.spec.clusterIP}')"
echo "== GET http://$ip/ (the Service, from the control-plane node):"
# kube-proxy programs a new Service a moment after its endpoints are ready.
deadline=$((SECONDS + 30))
until podman exec "$name-control-plane" curl -sS -m 5 "http://$ip/" 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || { echo "the Service did not answer within 30 s" >&2; exit 1; }
  sleep 0.5
done
echo "kubeconfig: $kubeconfig    stop and remove it: e2e/scripts/kind-quickstart.sh down --name $name"
