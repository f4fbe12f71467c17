#!/usr/bin/env bash
# Builds app.py into a wasi:http component: build.sh [OUT.wasm] (default: ./hello-python.wasm).
# build.sh --install-only installs componentize-py and prints its venv (examples/hello-cli).
# componentize-py is installed once under $WA8S_CACHE (default ~/.cache/wa8s), pinned by
# version; the WIT is WASI 0.2.12, the version wa8s's Wasmtime links.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
install_only=false
[ "${1:-}" = "--install-only" ] && install_only=true && shift
out="${1:-$here/hello-python.wasm}"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
version=0.25.1
cache="${WA8S_CACHE:-$HOME/.cache/wa8s}"
venv="$cache/componentize-py-$version"
mkdir -p "$cache"
exec 9>"$cache/.guest-tools.lock"
flock 9
if [ ! -x "$venv/bin/componentize-py" ]; then
  python3 -m venv "$venv.tmp" && "$venv.tmp/bin/pip" install -q "componentize-py==$version"
  rm -rf "$venv" && mv "$venv.tmp" "$venv"
  # venv scripts hard-code their path: recreate entry points at the final location.
  "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "componentize-py==$version"
fi
if $install_only; then
  echo "$venv"
  exit 0
fi
cd "$here"
"$venv/bin/componentize-py" -d "$here/../../shim/test-components/wit" -w wasi:http/proxy@0.2.12 \
  componentize app -o "$out" >&2
echo "$out"
