#!/usr/bin/env bash
# Benchmark: `kubectl apply` of a WebAssembly object → first HTTP 200 from its pod, on the
# quickstart's cluster (run e2e/scripts/quickstart.sh first). Two cases per round:
#   uncached — a component this node has never seen (a unique custom section gives it a new
#              digest): the operator resolves the tag, the kubelet pulls, the shim compiles;
#   cached   — the same object deleted and applied again: image and precompiled artifact are
#              on the node already.
# The clock stops at the first 200 from the pod's own address (there is no kube-proxy, so
# not through the Service); polling adds up to ~0.1 s. Prints one line per measurement.
# Both for the 7 KiB hand-written hello component and for the 18 MiB Python example (CPython
# inside; its compile dominates the uncached case).
# Usage: e2e/scripts/bench-apply.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
rounds="${1:-3}"
cluster=target/debug/wa8s-cluster
"$cluster" status >/dev/null || { echo "the quickstart cluster is not running: e2e/scripts/quickstart.sh" >&2; exit 1; }
kubeconfig="$("$cluster" kubeconfig)"
state="$(dirname "$kubeconfig")"
kubectl_bin="$(bash e2e/scripts/build-binaries.sh kubectl | sed -n 's/^kubectl=//p')"
k() { "$kubectl_bin" --kubeconfig="$kubeconfig" "$@"; }
ns=wa8s-bench
k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
trap 'k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT

[ -f "$state/guests/http.wasm" ] || cargo run --quiet --locked -p wa8s-test-components --example write-guests -- "$state/guests" >/dev/null
[ -f "$state/hello-python.wasm" ] || examples/hello-python/build.sh "$state/hello-python.wasm" >/dev/null

now() { date +%s.%N; }
# Seconds from $1 until the pod of WebAssembly $2 answers 200 (at most 180 s).
first_200() {
  local start="$1" name="$2" ip="" deadline=$((SECONDS + 180))
  while [ "$SECONDS" -lt "$deadline" ]; do
    ip="$(k get pods -n "$ns" -l "wa8s.reconciler.io/webassembly=$name" \
      -o jsonpath='{.items[0].status.podIP}' 2>/dev/null || true)"
    if [ -n "$ip" ] && curl -sf -m 1 -o /dev/null "http://$ip:8080/"; then
      awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'
      return 0
    fi
    sleep 0.05
  done
  echo "no 200 from $name within 180 s" >&2
  k get webassembly,pods -n "$ns" -o wide >&2
  return 1
}
# shellcheck source=lib/bench.sh
source e2e/scripts/lib/bench.sh

# measure LABEL GUEST MEMORY
measure() {
  local label="$1" guest="$2" memory="$3" i name start
  for i in $(seq 1 "$rounds"); do
    name="bench-$(date +%s)-$i"
    # A custom section (id 0) with a unique name: a valid component with a digest never seen.
    python3 e2e/scripts/lib/unique-wasm.py "$guest" "$state/$name.wasm" "$name"
    target/debug/wa8s push "$state/$name.wasm" "127.0.0.1:5000/myorg/bench:$name" >/dev/null 2>&1
    start="$(now)"
    bench_manifest "$name" "$memory" | k apply --server-side -n "$ns" -f - >/dev/null
    echo "$label round $i uncached: $(first_200 "$start" "$name") s"
    delete_and_wait "$name"
    start="$(now)"
    bench_manifest "$name" "$memory" | k apply --server-side -n "$ns" -f - >/dev/null
    echo "$label round $i cached:   $(first_200 "$start" "$name") s"
    delete_and_wait "$name"
    rm -f "$state/$name.wasm"
  done
}
measure hello "$state/guests/http.wasm" 32Mi
measure hello-python "$state/hello-python.wasm" 128Mi
