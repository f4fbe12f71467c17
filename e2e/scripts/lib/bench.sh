# Shared by the apply benchmarks (sourced; the caller defines `k` (kubectl) and `ns`).

# bench_manifest NAME MEMORY: a WebAssembly running ghcr.io/myorg/bench:NAME.
bench_manifest() {
  cat <<YAML
apiVersion: wa8s.reconciler.io/v1
kind: WebAssembly
metadata:
  name: $1
spec:
  module:
    registry: ghcr.io/myorg/bench
    tag: $1
  resources: { memory: "$2", cpu: "250m" }
YAML
}

# delete_and_wait NAME: deletes the object and waits (at most 120 s) until its pods are gone.
delete_and_wait() {
  k delete webassembly -n "$ns" "$1" --wait=true >/dev/null
  k wait pods -n "$ns" -l "wa8s.reconciler.io/webassembly=$1" --for=delete --timeout=120s >/dev/null 2>&1 || true
}
