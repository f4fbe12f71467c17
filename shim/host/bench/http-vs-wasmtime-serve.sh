#!/usr/bin/env bash
# Benchmarks `wa8s run --listen` against `wasmtime serve` (same Wasmtime version) on the same
# HTTP hello component, with the same load generator (wrk) on the same cores.
#
#   shim/host/bench/http-vs-wasmtime-serve.sh [DURATION_S] [CONNECTIONS]
#
# Prints a Markdown table: requests/s, latency p50/p99, time from process start to the first
# 200, and idle RSS. Installs wrk (Debian) and wasmtime-cli 48.0.8 (crates.io, cached under
# ~/.cache/wa8s) when missing; builds wa8s in release mode.
#
# WA8S_BASELINE=/path/to/wa8s adds a row for another build (e.g. one from before a change), in
# the same run. WA8S_TRACES=1 adds a row with request traces exported to a real
# OpenTelemetry Collector (built and cached by e2e/scripts/build-binaries.sh otelcol).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
duration="${1:-10}"
conns="${2:-50}"
cache="${WA8S_CACHE:-$HOME/.cache/wa8s}"
source shim/host/bench/common.sh

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
wasmtime="$cache/wasmtime-cli-48.0.8/bin/wasmtime"
if [ ! -x "$wasmtime" ]; then
  echo "installing wasmtime-cli 48.0.8 (about 10 minutes once)" >&2
  cargo install --quiet --locked wasmtime-cli@48.0.8 --root "$cache/wasmtime-cli-48.0.8"
fi
cargo build --quiet --release -p wa8s-cli
cargo run --quiet -p wa8s-test-components --example write-guests -- "$work" >/dev/null
wa8s="target/release/wa8s"


# Starts a server, records ms from spawn to the first 200, and leaves its PID in $server_pid.
start() {
  local port="$1"; shift
  local t0 t1
  t0=$(date +%s%N)
  # The server gets core 0 and wrk core 1, so neither steals the other's CPU (on larger
  # machines set SERVER_CPUS / LOAD_CPUS).
  taskset -c "${SERVER_CPUS:-0}" "$@" >"$work/server.log" 2>&1 &
  server_pid=$!
  pids+=("$server_pid")
  wait_http "http://127.0.0.1:$port/" 15 "$server_pid" || { cat "$work/server.log" >&2; return 1; }
  t1=$(date +%s%N); first_ms=$(( (t1 - t0) / 1000000 ))
}

measure() {
  local name="$1" port="$2"; shift 2
  start "$port" "$@"
  local rss_kb
  rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server_pid/status")
  taskset -c "${LOAD_CPUS:-1}" wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/" >/dev/null   # warm up
  local out
  out=$(taskset -c "${LOAD_CPUS:-1}" wrk -t1 -c"$conns" -d"${duration}s" --latency "http://127.0.0.1:$port/")
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr '\n' ' ' || true)
  printf '| %s | %s | %s | %s | %s ms | %s MiB | %s |\n' "$name" "$rps" "$p50" "$p99" "$first_ms" \
    "$(awk -v k="$rss_kb" 'BEGIN {printf "%.1f", k/1024}')" "${errors:-none}"
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
}

collector_pid=""
if [ "${WA8S_TRACES:-0}" = 1 ]; then
  otelcol="$(bash e2e/scripts/build-binaries.sh otelcol | sed -n 's/^otelcol=//p')"
  otlp_port=$(free_port)
  cat >"$work/otelcol.yaml" <<YAML
receivers: {otlp: {protocols: {http: {endpoint: "127.0.0.1:$otlp_port"}}}}
exporters: {file: {path: "$work/traces.json"}}
service:
  telemetry: {metrics: {level: none}}
  pipelines: {traces: {receivers: [otlp], exporters: [file]}}
YAML
  # The collector shares the load generator's core: the server's core stays the server's.
  taskset -c "${LOAD_CPUS:-1}" "$otelcol" --config="$work/otelcol.yaml" >"$work/otelcol.log" 2>&1 &
  collector_pid=$!
  pids+=("$collector_pid")
fi

echo "| server | requests/s | p50 | p99 | start → first 200 | idle RSS | errors |"
echo "|---|---|---|---|---|---|---|"
if [ -n "${WA8S_BASELINE:-}" ]; then
  p=$(free_port); measure "wa8s run --listen (baseline: $WA8S_BASELINE)" "$p" "$WA8S_BASELINE" run --listen "127.0.0.1:$p" --max-concurrent-requests 1000 "$work/http.wasm"
fi
p=$(free_port); measure "wa8s run --listen" "$p" "$wa8s" run --listen "127.0.0.1:$p" --max-concurrent-requests 1000 "$work/http.wasm"
if [ -n "$collector_pid" ]; then
  p=$(free_port); measure "wa8s run --listen, traces exported" "$p" env OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port" \
    "$wa8s" run --listen "127.0.0.1:$p" --max-concurrent-requests 1000 "$work/http.wasm"
  echo
  echo "spans the collector wrote: $(grep -o '"spanId"' "$work/traces.json" 2>/dev/null | wc -l)"
fi
p=$(free_port); measure "wasmtime serve" "$p" "$wasmtime" serve --addr "127.0.0.1:$p" "$work/http.wasm"
echo
echo "server on CPU ${SERVER_CPUS:-0}, wrk -t1 -c$conns -d${duration}s --latency on CPU ${LOAD_CPUS:-1}; $(nproc) cores; $(uname -r); component: shim/test-components/fixtures/http.wat"
