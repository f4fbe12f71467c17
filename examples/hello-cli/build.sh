#!/usr/bin/env bash
# Builds app.py into a wasi:cli component: build.sh [OUT.wasm] (default: ./hello-cli.wasm).
# Uses the same pinned componentize-py as examples/hello-python (installed once under
# $WA8S_CACHE, default ~/.cache/wa8s); the WIT is WASI 0.2.12, the version wa8s's Wasmtime links.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/hello-cli.wasm}"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
venv="$("$here/../hello-python/build.sh" --install-only)"
cd "$here"
"$venv/bin/componentize-py" -d "$here/../../shim/test-components/wit" -w wasi:cli/command@0.2.12 \
  componentize app -o "$out" >&2
echo "$out"
