#!/usr/bin/env bash
# Builds the test guests that need a real toolchain users use:
#   build.sh python OUT.wasm   (componentize-py, from PyPI)
#   build.sh js OUT.wasm       (@bytecodealliance/componentize-js, from npm)
# Toolchains are installed once under $WA8S_CACHE (default ~/.cache/wa8s), pinned by version.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${WA8S_CACHE:-$HOME/.cache/wa8s}"
kind="${1:?usage: build.sh python|js OUT.wasm}"
out="${2:?usage: build.sh python|js OUT.wasm}"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
wit="$here/../wit"
mkdir -p "$cache"
exec 9>"$cache/.guest-tools.lock"
flock 9

case "$kind" in
  python)
    version=0.25.1
    venv="$cache/componentize-py-$version"
    if [ ! -x "$venv/bin/componentize-py" ]; then
      python3 -m venv "$venv.tmp" && "$venv.tmp/bin/pip" install -q "componentize-py==$version"
      rm -rf "$venv" && mv "$venv.tmp" "$venv"
      # venv scripts hard-code their path: recreate entry points at the final location.
      "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "componentize-py==$version"
    fi
    cd "$here/python"
    "$venv/bin/componentize-py" -d "$wit" -w wasi:http/proxy@0.2.12 componentize app -o "$out" >&2
    ;;
  js)
    version=0.23.0
    node_dir="$cache/componentize-js-$version"
    if [ ! -d "$node_dir/node_modules/@bytecodealliance/componentize-js" ]; then
      mkdir -p "$node_dir.tmp"
      (cd "$node_dir.tmp" && npm install --silent --no-audit --no-fund "@bytecodealliance/componentize-js@$version" >&2)
      rm -rf "$node_dir" && mv "$node_dir.tmp" "$node_dir"
    fi
    # componentize-js embeds wasi:http 0.2.10; give it the same WIT at that version.
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/wit/deps"
    for f in "$wit"/deps/*.wit; do sed -E 's/@0\.2\.12/@0.2.10/g; s/version = 0\.2\.1[1-9]/version = 0.2.10/g' "$f" >"$tmp/wit/deps/$(basename "$f")"; done
    printf 'package wa8s:js-guest;\nworld guest {\n  include wasi:http/proxy@0.2.10;\n}\n' >"$tmp/wit/world.wit"
    NODE_PATH="$node_dir/node_modules" node "$here/js/build.mjs" "$here/js/app.js" "$tmp/wit" "$out" "$node_dir/node_modules"
    ;;
  *) echo "unknown guest kind $kind (python|js)" >&2; exit 2 ;;
esac
echo "$out"
