#!/usr/bin/env bash
# Time from `wa8s run --listen REFERENCE` spawn to the first 200, the first time (pull +
# compile) and then from the precompile cache (the tag is still resolved at the registry).
#
#   shim/host/bench/start-precompiled.sh [ROUNDS]
#
# A real distribution registry (Debian's docker-registry) on loopback holds the HTTP hello
# component; the server runs on CPU 0. Builds wa8s in release mode.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
rounds="${1:-10}"
source shim/host/bench/common.sh

command -v docker-registry >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null; }
cargo build --quiet --release -p wa8s-cli
cargo run --quiet -p wa8s-test-components --example write-guests -- "$work" >/dev/null
wa8s="target/release/wa8s"

reg_port=$(free_port)
cat >"$work/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$reg_port
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry=$!
pids+=("$registry")
wait_http "http://127.0.0.1:$reg_port/v2/" 10 "$registry" || { cat "$work/registry.log" >&2; exit 1; }
ref="127.0.0.1:$reg_port/bench/hello:v1"
"$wa8s" push "$work/http.wasm" "$ref" >"$work/push.log" 2>&1 || { cat "$work/push.log" >&2; exit 1; }

times=()
for i in $(seq 0 "$rounds"); do
  port=$(free_port)
  t0=$(date +%s%N)
  taskset -c "${SERVER_CPUS:-0}" "$wa8s" run --cache-dir "$work/cache" --listen "127.0.0.1:$port" "$ref" \
    >"$work/server.log" 2>&1 &
  server=$!
  pids+=("$server")
  wait_http "http://127.0.0.1:$port/" 30 "$server" || { cat "$work/server.log" >&2; exit 1; }
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
  kill "$server"; wait "$server" 2>/dev/null || true
  if [ "$i" = 0 ]; then echo "first run (pull + compile): $ms ms"; else times+=("$ms"); fi
done
printf '%s\n' "${times[@]}" | sort -n | awk -v n="$rounds" '{a[NR]=$1} END {
  printf "from the precompile cache, %d runs: median %d ms, min %d, max %d\n", n, a[int((n+1)/2)], a[1], a[n]}'
