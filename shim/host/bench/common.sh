# Sourced by the benchmark scripts here: a work directory, processes stopped (by PID) and the
# directory removed on exit, and a free loopback port.
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until URL answers 2xx, at most SECONDS; fails if PID (when given) exits first.
wait_http() {
  local url="$1" seconds="$2" pid="${3:-}" deadline
  deadline=$(( SECONDS + seconds ))   # bash's clock: no process per poll
  until curl -fs "$url" >/dev/null 2>&1; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    if [ "$SECONDS" -ge "$deadline" ]; then echo "$url did not answer within ${seconds}s" >&2; return 1; fi
    sleep 0.002
  done
}
