#!/usr/bin/env bash
# Builds the Rust example into a component: examples/hello-rust/build.sh [OUT.wasm]
# Needs Rust's wasm32-wasip2 target (`rustup target add wasm32-wasip2`), whose linker emits
# a component directly. Prints the path of the component.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/hello-rust.wasm}"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  echo "the wasm32-wasip2 target is not installed: rustup target add wasm32-wasip2" >&2
  exit 3
fi
cargo build --quiet --locked --release --target wasm32-wasip2 --manifest-path "$here/Cargo.toml" \
  --target-dir "${CARGO_TARGET_DIR:-$here/target}"
cp "${CARGO_TARGET_DIR:-$here/target}/wasm32-wasip2/release/hello_rust.wasm" "$out"
echo "$out"
