#!/usr/bin/env bash
# Builds the wa8s container images without a Docker engine: the operator, installer and shim
# binaries (cargo profile `image`: optimized, stripped), then OCI image tarballs in
# target/images/ (`wa8s-images`). Prints name=path (size) per image.
#   e2e/scripts/images.sh            # profile image
#   WA8S_IMAGE_PROFILE=dev e2e/scripts/images.sh   # debug binaries (faster to build, larger)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
profile="${WA8S_IMAGE_PROFILE:-image}"
cargo build --quiet --locked --profile "$profile" -p wa8s-operator -p wa8s-shim -p wa8s-installer --bins >&2
source e2e/scripts/prerequisites.sh
build_wa8s_binaries --quiet >&2   # wa8s-images is one of them
target/debug/wa8s-images --profile "$profile" --out target/images
