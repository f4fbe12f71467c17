#!/usr/bin/env bash
# The previous wa8s release, for the helm-upgrade test: its chart and its two images (tagged
# with its version), built from its commit in this repository's history, cached by version
# and commit under ~/.cache/wa8s/previous/ (a cold build is one optimized cargo build of the
# operator, shim and installer in a target directory of its own: ~10 minutes on 2 cores).
# Prints the directory: chart/ and images/wa8s-{operator,node-installer}.tar.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo="$(pwd)"
source e2e/scripts/versions.sh
out="$(previous_release_dir)"
if [ -f "$out/done" ]; then
  echo "$out"
  exit 0
fi
git -C "$repo" cat-file -e "$WA8S_PREVIOUS_COMMIT^{commit}" 2>/dev/null || {
  echo "error: commit $WA8S_PREVIOUS_COMMIT (wa8s $WA8S_PREVIOUS_VERSION) is not in this clone's history; clone without --depth, or build it elsewhere into $out" >&2
  exit 1
}
# The packing tool is this tree's (it takes another release's binaries and version).
cargo build --quiet --locked -p wa8s-e2e --bin wa8s-images >&2
src="$WA8S_CACHE/previous/src-$WA8S_PREVIOUS_COMMIT"
rm -rf "$src" "$out.tmp"
mkdir -p "$src" "$out.tmp/images"
git -C "$repo" archive "$WA8S_PREVIOUS_COMMIT" | tar -x -C "$src"
echo "building wa8s $WA8S_PREVIOUS_VERSION ($WA8S_PREVIOUS_COMMIT): cargo build --profile image (cold: ~10 min)" >&2
t0=$SECONDS
(cd "$src" && CARGO_TARGET_DIR="$WA8S_CACHE/previous/target" CARGO_INCREMENTAL=0 \
  cargo build --quiet --locked --profile image -p wa8s-operator -p wa8s-shim -p wa8s-installer --bins >&2)
target/debug/wa8s-images --bin-dir "$WA8S_CACHE/previous/target/image" \
  --version "$WA8S_PREVIOUS_VERSION" --out "$out.tmp/images" >&2
cp -r "$src/charts/wa8s" "$out.tmp/chart"
rm -rf "$src" "$out"
mv "$out.tmp" "$out"
touch "$out/done"
# Only the cached output is kept: the build's target directory is gigabytes.
rm -rf "$WA8S_CACHE/previous/target"
echo "built in $((SECONDS - t0)) s" >&2
echo "$out"
