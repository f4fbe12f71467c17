#!/usr/bin/env bash
# README command 1. Brings up a local single-node Kubernetes (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, containerd 2.2 without any wa8s runtime,
# a CNI bridge, metrics-server for kubectl top, and a registry on 127.0.0.1:5000 that the
# node and the operator use as the mirror of ghcr.io), builds the wa8s container images, installs wa8s with its Helm chart
# (the operator in a pod; the node installer adds the runtime to containerd), pushes a hello
# component as ghcr.io/myorg/image-processor:v1.2.3, applies examples/deploy.yaml, waits for
# Ready and calls the Service; then the same for the Python example. Idempotent: run it again
# at will. Stop everything and remove what it made with: e2e/scripts/quickstart.sh down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source e2e/scripts/prerequisites.sh

cluster=target/debug/wa8s-cluster
if [ "${1:-}" = "down" ]; then
  build_wa8s_binaries --quiet
  "$cluster" down
  exit 0
fi

echo "== building wa8s (CLI, cluster tool; the same set as the test script)"
build_wa8s_binaries --quiet
bins="$(bash e2e/scripts/build-binaries.sh etcd kube-apiserver kube-controller-manager \
  kube-scheduler kubelet kubectl containerd ctr containerd-shim-runc-v2 crictl helm metrics-server)"
kubectl_bin="$(sed -n 's/^kubectl=//p' <<<"$bins")"
helm_bin="$(sed -n 's/^helm=//p' <<<"$bins")"

echo "== building the container images (operator; node installer with the shim)"
bash e2e/scripts/images.sh

echo "== bringing up the local cluster (its containerd knows nothing of wa8s yet)"
kubeconfig="$("$cluster" up --without-wa8s)"
state="$(dirname "$kubeconfig")"
k() { "$kubectl_bin" --kubeconfig="$kubeconfig" "$@"; }
k get nodes -o wide

# There is no Docker engine to push from: the images go straight into the node's containerd.
"$cluster" import-images target/images/wa8s-operator.tar target/images/wa8s-node-installer.tar

echo "== helm install wa8s (chart: charts/wa8s, namespace wa8s-system)"
# This node's particulars: the API on its loopback (no kube-proxy), the registry as the
# ghcr.io mirror, and how the installer finds and restarts its containerd (no systemd here).
sets=()
while IFS= read -r v; do sets+=(--set "$v"); done < <("$cluster" chart-values)
KUBECONFIG="$kubeconfig" "$helm_bin" upgrade --install wa8s charts/wa8s \
  --namespace wa8s-system --create-namespace --wait --timeout 5m "${sets[@]}"
# Polled: `kubectl wait --for=condition` fails outright on a CRD that has no conditions yet.
deadline=$((SECONDS + 60))
until [ "$(k get crd webassemblies.wa8s.reconciler.io -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" = True ]; do
  [ $SECONDS -lt $deadline ] || { echo "the WebAssembly CRD was not established within 60 s" >&2; exit 1; }
  sleep 0.2
done
k get pods -n wa8s-system -o wide
k get node -L wa8s.reconciler.io/runtime

echo "== pushing a hello HTTP component as ghcr.io/myorg/image-processor:v1.2.3 (via the mirror)"
# A hand-written wasi:http component (shim/test-components/fixtures/http.wat): small enough
# for the 32Mi the users' manifest grants.
cargo run --quiet --locked -p wa8s-test-components --example write-guests -- "$state/guests" >/dev/null
target/debug/wa8s push "$state/guests/http.wasm" 127.0.0.1:5000/myorg/image-processor:v1.2.3

echo "== applying examples/deploy.yaml in namespace wa8s-demo"
k create namespace wa8s-demo --dry-run=client -o yaml | k apply -f -
k apply --server-side -n wa8s-demo -f examples/deploy.yaml
if ! k wait -n wa8s-demo --for=condition=Ready --timeout=180s webassembly/image-processor; then
  k get webassembly,deploy,pods -n wa8s-demo -o wide
  k get webassembly -n wa8s-demo image-processor -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'
  exit 1
fi
k get webassembly,deploy,hpa,svc,pods -n wa8s-demo -o wide

# Calls Service $1 through `kubectl port-forward` on local port $2 and prints the answer.
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
call_service() {
  local svc="$1" port="$2" body="" log="$state/port-forward-$1.log"
  echo "== calling the Service (kubectl port-forward svc/$svc $port:80)"
  k port-forward -n wa8s-demo "svc/$svc" "$port:80" >"$log" 2>&1 &
  pids+=($!)
  # Until the forward listens and the Service answers, at most 30 s.
  local deadline=$((SECONDS + 30))
  until body="$(curl -sS --fail -m 5 "http://127.0.0.1:$port/" 2>/dev/null)"; do
    body=""
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.2   # poll interval
  done
  [ -n "$body" ] || { echo "Service $svc did not answer; port-forward said:"; cat "$log"; exit 1; }
  echo "HTTP 200: $body"
}
call_service image-processor 18080

echo "== building examples/hello-python with componentize-py, pushing and applying it"
wasm="$(examples/hello-python/build.sh "$state/hello-python.wasm")"
target/debug/wa8s push "$wasm" 127.0.0.1:5000/myorg/hello-python:v1
k apply --server-side -n wa8s-demo -f examples/hello-python/webassembly.yaml
k wait -n wa8s-demo --for=condition=Ready --timeout=180s webassembly/hello-python
call_service hello-python 18082

cat <<MSG

wa8s is running on the local cluster. Explore it with:
  export KUBECONFIG=$kubeconfig
  $kubectl_bin get wasm -A
  $kubectl_bin describe webassembly -n wa8s-demo image-processor
  $kubectl_bin logs -n wa8s-demo -l app.kubernetes.io/instance=image-processor
  $kubectl_bin top pods -n wa8s-demo        # metrics-server needs about 30 s for a new pod
  $kubectl_bin logs -n wa8s-system deploy/wa8s-operator
  $helm_bin status wa8s -n wa8s-system
  $kubectl_bin explain webassembly.spec --recursive
Stop it and remove everything it made with:
  e2e/scripts/quickstart.sh down
MSG
