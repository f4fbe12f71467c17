#!/usr/bin/env bash
# Runs every test wa8s has: formatting and lints, unit tests, and the tests against a real
# kube-apiserver + etcd (built from the upstream Go modules on first use, then cached by
# version under ~/.cache/wa8s, so later runs start in seconds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source e2e/scripts/prerequisites.sh

# Build (or find cached) upstream binaries before the Rust tests need them.
bash e2e/scripts/build-binaries.sh etcd kube-apiserver kube-controller-manager kube-scheduler \
  kubelet kube-proxy kubectl containerd ctr containerd-shim-runc-v2 crictl helm metrics-server prometheus cosign >/dev/null

# The kind node image (a Debian rootfs, kubeadm, coredns, kindnetd, ...; cached by version)
# and then the previous wa8s release (its chart and images, for the helm-upgrade scenario;
# cached by version and commit) build in the background while cargo works.
mkdir -p target
kind_image_log="$(pwd)/target/kind-node-image.log"
{ bash e2e/scripts/kind-node-image.sh && bash e2e/scripts/previous-release.sh; } >"$kind_image_log" 2>&1 &
kind_image_pid=$!

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the binaries the end-to-end scenarios run: shim, operator, CLI, cluster tool)"
build_wa8s_binaries
echo "== container images (the chart's install test imports them)"
bash e2e/scripts/images.sh
echo "== the release's build: linux/amd64 and linux/arm64, arm64 smoke-tested under qemu-user, images and SBOMs"
# (release.sh publish runs in the install test, against that test cluster's registry.)
bash e2e/scripts/release.sh build
echo "== kind node image and the previous release (built in the background)"
if ! wait "$kind_image_pid"; then
  tail -40 "$kind_image_log" >&2
  echo "error: building the kind node image or the previous release failed (log: $kind_image_log)" >&2
  exit 1
fi
tail -2 "$kind_image_log"
echo "== cargo test"
# Every test binary runs under a time limit (see test-runner.sh).
runner="$(pwd)/e2e/scripts/test-runner.sh"
# Errors returned by tests print without a captured backtrace (panics keep theirs), so the
# cause stays in the tail of a long log.
export RUST_LIB_BACKTRACE=0
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$runner" \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$runner" \
  cargo test --workspace --locked --no-fail-fast
echo "== fuzz (each AFL++ target for a bounded time; e2e/scripts/fuzz.sh)"
e2e/scripts/fuzz.sh "${WA8S_FUZZ_SECONDS:-15}"
