#!/usr/bin/env bash
# The wa8s release: what a forge's CI runs on a tag (.github/workflows/release.yml), and what
# the tests run against a local registry.
#
#   release.sh build
#       The operator, shim and installer for linux/amd64 and linux/arm64 (cross-compiled
#       with Debian's aarch64 toolchain), and the CLI as a static (musl) binary for both, with
#       checksums; the arm64 binaries run under qemu-user (`--version`, and `wa8s run`
#       serving a component), then each image as a multi-platform OCI layout with a CycloneDX
#       SBOM per platform, in $WA8S_RELEASE_DIR (default target/wa8s-release).
#   release.sh publish --registry HOST[:PORT]/PREFIX --key COSIGN_KEY [--plain-http]
#       Pushes the images (one index per image), signs them (and each platform's manifest),
#       attaches each platform's SBOM as a signed CycloneDX attestation, packages the chart
#       with its images pinned by digest, pushes it as an OCI artifact, signs it, and then
#       verifies every signature and attestation with the public key. Writes the chart,
#       the public key, the SBOMs and SHA256SUMS to $WA8S_RELEASE_DIR for the forge's release.
#   release.sh all --registry … --key …     build, then publish.
#
# Environment: COSIGN_PASSWORD (the key's password); for a registry that wants credentials,
# WA8S_RELEASE_REGISTRY_USER and WA8S_RELEASE_REGISTRY_PASSWORD (images, chart, signatures).
# Cross builds keep their cargo target directory under ~/.cache/wa8s/release, so a second
# release rebuilds only what changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."
# shellcheck disable=SC2034 # read by log() in lib/common.sh
LOG_PREFIX=release
# shellcheck source=lib/common.sh
source "$here/lib/common.sh"
# shellcheck source=versions.sh
source "$here/versions.sh"

usage() {
  sed -n '4,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
[ -n "$version" ] || die "no version in Cargo.toml's [workspace.package]"
# The forge passes its tag: a tag that does not match the sources' version releases nothing.
if [ -n "${WA8S_RELEASE_TAG:-}" ] && [ "${WA8S_RELEASE_TAG#v}" != "$version" ]; then
  die "tag $WA8S_RELEASE_TAG does not match version $version in Cargo.toml"
fi
out="${WA8S_RELEASE_DIR:-$(pwd)/target/wa8s-release}"
# The SBOMs' timestamp: the commit's, so the same sources give the same bytes. Given to
# wa8s-release only: the cc crate has cargo rebuild every C dependency (Wasmtime's, aws-lc)
# when SOURCE_DATE_EPOCH changes, which would be every commit.
source_date_epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
# The image names in the SBOMs (where the forge publishes them).
canonical_prefix="ghcr.io/reconcilerio"
cross_target_dir="$WA8S_CACHE/release/target"
arm64_bins="$cross_target_dir/aarch64-unknown-linux-gnu/image"
# The static CLI builds have a target directory of their own: cargo locks a target directory
# per profile while it builds, and the two builds need not wait for each other.
cli_target_dir="$WA8S_CACHE/release/cli-target"
cli_targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

# Debian's cross toolchain and qemu-user; rustup's aarch64 standard library.
cross_prerequisites() {
  command -v aarch64-linux-gnu-gcc >/dev/null || apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  command -v qemu-aarch64-static >/dev/null || apt_install qemu-user-static
  command -v readelf >/dev/null || apt_install binutils
  # The static CLI: musl's C library and headers for C dependencies (aws-lc, ring, zstd),
  # Debian's for amd64 (musl-gcc) and, multi-arch, for arm64 (aarch64-linux-musl-gcc, which
  # drives the aarch64 cross gcc); Rust's musl targets bring their own libc for linking.
  command -v musl-gcc >/dev/null || apt_install musl-tools
  if ! command -v aarch64-linux-musl-gcc >/dev/null; then
    add_arm64_architecture
    apt_install musl-dev:arm64
  fi
  local target installed
  installed="$(rustup target list --installed 2>/dev/null)"
  for target in aarch64-unknown-linux-gnu "${cli_targets[@]}"; do
    grep -qx "$target" <<<"$installed" || timeout 600 rustup target add "$target" >&2
  done
}

# Debian's arm64 packages are installable beside the amd64 ones once dpkg knows the
# architecture and apt has its package lists.
add_arm64_architecture() {
  dpkg --print-foreign-architectures | grep -qx arm64 && return
  log "adding arm64 to dpkg's architectures (Debian's arm64 libc and musl)"
  dpkg --add-architecture arm64
  apt-get -o DPkg::Lock::Timeout=600 update -qq
}

# The arm64 libraries the images carry: Debian's own arm64 packages (not the cross
# toolchain's copies, which lag behind Debian's security updates), at the versions this
# machine's amd64 ones have, unpacked under the cache with a list of which package each file
# came from (for the SBOM). Prints the directory.
arm64_sysroot() {
  local libc gcc dir
  libc="$(dpkg-query -W -f '${Version}' "libc6:$(dpkg --print-architecture)")"
  gcc="$(dpkg-query -W -f '${Version}' "libgcc-s1:$(dpkg --print-architecture)")"
  dir="$WA8S_CACHE/release/sysroot-arm64-libc6_${libc}-libgcc-s1_${gcc}"
  if [ -f "$dir/.wa8s-packages.tsv" ]; then echo "$dir"; return; fi
  add_arm64_architecture
  if ! apt-cache show "libc6:arm64=$libc" >/dev/null 2>&1; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
  fi
  local tmp
  tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get -o APT::Sandbox::User=root download -qq "libc6:arm64=$libc" "libgcc-s1:arm64=$gcc" >&2) \
    || die "could not download libc6:arm64=$libc and libgcc-s1:arm64=$gcc from Debian's mirror"
  # (This runs in a command substitution, where set -e does not reach: each step is checked,
  # so a half-unpacked sysroot is never cached.)
  rm -rf "$dir.partial"; mkdir -p "$dir.partial" || die "cannot create $dir.partial"
  local deb fields
  for deb in "$tmp"/*.deb; do
    dpkg-deb -x "$deb" "$dir.partial" || die "unpacking $deb failed"
    fields="$(dpkg-deb -f "$deb" Package Version Architecture | awk -F': ' '{printf "%s\t", $2}')" \
      && [ -n "$fields" ] || die "reading $deb's control fields failed"
    # Every file and link the package ships, with the package's name, version, arch.
    dpkg-deb -c "$deb" | awk -v f="$fields" '$1 !~ /^d/ { p = $6; sub(/^\./, "", p); print p "\t" f }' \
      | sed 's/\t$//' >>"$dir.partial/.wa8s-packages.tsv" || die "listing $deb failed"
  done
  rm -rf "$tmp" "$dir"
  mv "$dir.partial" "$dir" || die "cannot move $dir.partial into place"
  echo "$dir"
}

build_binaries() {
  log "linux/amd64: operator, shim, installer (profile image)"
  cargo build --quiet --locked --profile image -p wa8s-operator -p wa8s-shim -p wa8s-installer --bins
  log "linux/arm64: operator, shim, installer (profile image, cross-compiled; cold: ~30 minutes)"
  CARGO_TARGET_DIR="$cross_target_dir" \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
    cargo build --quiet --locked --profile image --target aarch64-unknown-linux-gnu \
    -p wa8s-operator -p wa8s-shim -p wa8s-installer --bins
  log "the CLI, static, for linux/amd64 and linux/arm64 (musl; cold: ~30 minutes)"
  CARGO_TARGET_DIR="$cli_target_dir" \
    CC_x86_64_unknown_linux_musl=musl-gcc \
    CC_aarch64_unknown_linux_musl=aarch64-linux-musl-gcc \
    AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc \
    cargo build --quiet --locked --profile image "${cli_targets[@]/#/--target=}" -p wa8s-cli --bin wa8s
}

# The released CLI binaries: static (no program interpreter, no shared libraries), each
# saying its version (the arm64 one under qemu-user, which a static binary needs nothing
# else for), named by platform, with their checksums.
release_cli() {
  mkdir -p "$out/cli"
  local target arch bin got run=()
  for target in "${cli_targets[@]}"; do
    case "$target" in
      x86_64-*) arch=amd64; run=() ;;
      aarch64-*) arch=arm64; run=(qemu-aarch64-static) ;;
    esac
    bin="$cli_target_dir/$target/image/wa8s"
    if LC_ALL=C readelf -lW "$bin" | grep -q 'Requesting program interpreter' \
      || LC_ALL=C readelf -dW "$bin" | grep -q '(NEEDED)'; then
      die "$bin is not static: $(LC_ALL=C readelf -dW "$bin" | grep NEEDED | tr -s ' ' | head -3)"
    fi
    got="$("${run[@]}" "$bin" --version 2>&1)" || die "the static linux/$arch CLI failed to start: $got"
    [[ "$got" == *"$version"* ]] || die "the static linux/$arch CLI printed no $version: $got"
    cp "$bin" "$out/cli/wa8s-$version-linux-$arch"
    log "static CLI linux/$arch: $got ($(du -k "$bin" | cut -f1) KiB)"
    serves_component "linux/$arch" "${run[@]}" "$out/cli/wa8s-$version-linux-$arch"
  done
  (cd "$out/cli" && sha256sum wa8s-* >SHA256SUMS)
}

# The arm64 binaries run, under qemu-user with the image's own libraries: each says its
# version.
smoke_arm64() {
  local sysroot="$1" bin got
  local qemu=(qemu-aarch64-static -L "$sysroot")
  for bin in wa8s-operator:--version wa8s-node-installer:--version containerd-shim-wa8s-v1:-v; do
    got="$("${qemu[@]}" "$arm64_bins/${bin%%:*}" "${bin#*:}" 2>&1)" \
      || die "arm64 ${bin%%:*} ${bin#*:} failed under qemu: $got"
    case "$got" in
      *"$version"*) log "arm64 ${bin%%:*}: $got" ;;
      *) die "arm64 ${bin%%:*} ${bin#*:} printed no $version: $got" ;;
    esac
  done
}

# `PLATFORM COMMAND...`: the released CLI (COMMAND, e.g. under qemu-user) serves a wasi:http
# component from the tests' guests, Wasmtime compiling code for that platform.
serves_component() {
  local platform="$1"; shift
  local guests port pid body="" deadline
  guests="$(mktemp -d)"
  cargo run --quiet --locked -p wa8s-test-components --example write-guests -- "$guests" >/dev/null
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  "$@" run --listen "127.0.0.1:$port" "$guests/http.wasm" >"$guests/run.log" 2>&1 &
  pid=$!
  deadline=$((SECONDS + 180))
  while [ $SECONDS -lt $deadline ] && kill -0 "$pid" 2>/dev/null; do
    body="$(curl -fsS --max-time 10 "http://127.0.0.1:$port/" 2>/dev/null)" && break
    sleep 1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [[ "$body" != *hello* ]]; then
    cat "$guests/run.log" >&2
    rm -rf "$guests"
    die "the $platform wa8s run did not serve the component within 180 s (got ${body:-nothing})"
  fi
  log "the static $platform wa8s run served the component: $body"
  rm -rf "$guests"
}

# Every SBOM against CycloneDX's 1.5 JSON schema, strictly (CycloneDX's Python library, from
# PyPI, in a venv cached by version): what a scanner reads has to be valid.
validate_sboms() {
  local venv="$WA8S_CACHE/release/venv-cyclonedx-python-lib-$CYCLONEDX_PYTHON_LIB_VERSION"
  # (Called as `validate_sboms || die`, where set -e does not reach: each step is checked, so
  # a venv whose install failed is never cached.)
  if [ ! -x "$venv/bin/python" ]; then
    python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    rm -rf "$venv.partial"
    python3 -m venv "$venv.partial" \
      && "$venv.partial/bin/pip" install --quiet "cyclonedx-python-lib[json-validation]==$CYCLONEDX_PYTHON_LIB_VERSION" >&2 \
      && mv "$venv.partial" "$venv" \
      || die "could not install cyclonedx-python-lib $CYCLONEDX_PYTHON_LIB_VERSION into $venv"
  fi
  "$venv/bin/python" - "$out"/sbom/*.cdx.json <<'EOF'
import sys
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

validator = JsonStrictValidator(SchemaVersion.V1_5)
bad = 0
for path in sys.argv[1:]:
    with open(path) as f:
        error = validator.validate_str(f.read())
    if error is not None:
        print(f"{path} is not valid CycloneDX 1.5: {str(error).splitlines()[0]}", file=sys.stderr)
        bad += 1
sys.exit(1 if bad else 0)
EOF
}

build() {
  cross_prerequisites
  local sysroot
  sysroot="$(arm64_sysroot)"
  build_binaries
  rm -rf "$out"; mkdir -p "$out"
  release_cli
  smoke_arm64 "$sysroot"
  source "$here/prerequisites.sh"
  LOG_PREFIX=release # prerequisites.sh set its own
  build_wa8s_binaries --quiet # wa8s-release is one of them
  SOURCE_DATE_EPOCH="$source_date_epoch" target/debug/wa8s-release images --version "$version" --out "$out" \
    --repository-prefix "$canonical_prefix" \
    --platform "linux/amd64=$(pwd)/target/image" \
    --platform "linux/arm64=$arm64_bins:$sysroot" | tee "$out/images.txt" >&2
  validate_sboms || die "an SBOM is not valid CycloneDX 1.5 (above)"
  log "built wa8s $version for linux/amd64 and linux/arm64 in $out ($SECONDS s)"
}

publish() {
  local registry="" key="" plain_http=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --registry) registry="${2:?}"; shift 2 ;;
      --key) key="${2:?}"; shift 2 ;;
      --plain-http) plain_http=1; shift ;;
      *) usage ;;
    esac
  done
  [ -n "$registry" ] || die "publish needs --registry HOST[:PORT]/PREFIX"
  [ -n "$key" ] && [ -f "$key" ] || die "publish needs --key with a cosign private key (cosign generate-key-pair)"
  # Without it cosign would prompt on stdin, which inside the loops below is the list of images.
  [ -n "${COSIGN_PASSWORD+set}" ] || die "publish needs COSIGN_PASSWORD (the key's password; empty for a key without one)"
  [ -d "$out/images" ] || die "$out/images is missing: run 'release.sh build' first"
  local bins cosign helm
  bins="$(bash "$here/build-binaries.sh" cosign helm)"
  cosign="$(sed -n 's/^cosign=//p' <<<"$bins")"
  helm="$(sed -n 's/^helm=//p' <<<"$bins")"
  local registry_flags=() helm_flags=()
  if [ -n "$plain_http" ]; then
    registry_flags=(--allow-http-registry --allow-insecure-registry)
    helm_flags=(--plain-http)
  fi
  if [ -n "${WA8S_RELEASE_REGISTRY_USER:-}" ]; then
    registry_flags+=(--registry-username "$WA8S_RELEASE_REGISTRY_USER" --registry-password "${WA8S_RELEASE_REGISTRY_PASSWORD:-}")
    printf '%s' "${WA8S_RELEASE_REGISTRY_PASSWORD:-}" | "$helm" registry login "${registry%%/*}" \
      --username "$WA8S_RELEASE_REGISTRY_USER" --password-stdin "${helm_flags[@]}" >&2
  fi
  # Signatures are checked with the key alone: a local registry has no transparency log to
  # reach, and the forge's release publishes the public key beside the chart.
  local sign=("$cosign" sign --yes --key "$key" --tlog-upload=false "${registry_flags[@]}")
  "$cosign" public-key --key "$key" >"$out/cosign.pub"
  local verify=("$cosign" verify --key "$out/cosign.pub" --insecure-ignore-tlog=true "${registry_flags[@]}")

  log "pushing the images to $registry"
  local pushed
  pushed="$(target/debug/wa8s-release push "$out" --repository-prefix "$registry" --tag "$version" ${plain_http:+--plain-http})"
  printf '%s\n' "$pushed" >"$out/pushed.txt"
  local name ref platforms p digest arch
  declare -A digests
  while read -r name ref platforms; do
    digests[$name]="${ref#*@}"
    log "$name: $ref"
    # The index and, with --recursive, each platform's manifest: a node pulls one of those.
    "${sign[@]}" --recursive "$ref" </dev/null >&2 2>"$out/cosign.log" || { cat "$out/cosign.log" >&2; die "signing $ref failed"; }
    for p in $platforms; do
      digest="${p#*=}"; arch="${p%%=*}"; arch="${arch#linux/}"
      "$cosign" attest --yes --key "$key" --tlog-upload=false "${registry_flags[@]}" --type cyclonedx \
        --predicate "$out/sbom/${name}_linux_${arch}.cdx.json" "${ref%@*}@$digest" </dev/null >"$out/cosign.log" 2>&1 \
        || { cat "$out/cosign.log" >&2; die "attaching the linux/$arch SBOM to $name failed"; }
    done
  done <<<"$pushed"

  log "packaging the chart with its images pinned by digest"
  local chart_src
  chart_src="$(mktemp -d)"
  cp -r charts/wa8s "$chart_src/"
  # Each image's repository and digest, in the block that names it.
  awk -v reg="$registry" -v op="${digests[wa8s-operator]}" -v inst="${digests[wa8s-node-installer]}" '
    /^    repository: .*\/wa8s-operator$/       { sub(/repository: .*/, "repository: " reg "/wa8s-operator"); d = op }
    /^    repository: .*\/wa8s-node-installer$/ { sub(/repository: .*/, "repository: " reg "/wa8s-node-installer"); d = inst }
    /^    digest: ""$/ && d != "" { sub(/""/, "\"" d "\""); d = "" }
    { print }' charts/wa8s/values.yaml >"$chart_src/wa8s/values.yaml"
  [ "$(grep -c '^    digest: "sha256:' "$chart_src/wa8s/values.yaml")" = 2 ] \
    || die "could not pin both images' digests in the chart's values.yaml"
  mkdir -p "$out/chart"
  "$helm" package "$chart_src/wa8s" --version "$version" --app-version "$version" -d "$out/chart" >&2
  rm -rf "$chart_src"
  local chart_tgz="$out/chart/wa8s-$version.tgz" chart_out chart_digest
  chart_out="$("$helm" push "$chart_tgz" "oci://$registry/charts" "${helm_flags[@]}" 2>&1)" \
    || die "helm push failed: $chart_out"
  chart_digest="$(sed -n 's/^Digest: //p' <<<"$chart_out")"
  [ -n "$chart_digest" ] || die "helm push printed no digest: $chart_out"
  local chart_ref="$registry/charts/wa8s@$chart_digest"
  "${sign[@]}" "$chart_ref" >"$out/cosign.log" 2>&1 || { cat "$out/cosign.log" >&2; die "signing the chart failed"; }
  echo "chart oci://$registry/charts/wa8s:$version $chart_ref" >>"$out/pushed.txt"

  log "verifying every signature and SBOM attestation with $out/cosign.pub"
  while read -r name ref platforms; do
    "${verify[@]}" "$ref" </dev/null >/dev/null 2>"$out/cosign.log" || { cat "$out/cosign.log" >&2; die "cosign verify $ref failed"; }
    for p in $platforms; do
      "${verify[@]}" "${ref%@*}@${p#*=}" </dev/null >/dev/null 2>"$out/cosign.log" \
        || { cat "$out/cosign.log" >&2; die "cosign verify of $name ${p%%=*} failed"; }
      "$cosign" verify-attestation --key "$out/cosign.pub" --insecure-ignore-tlog=true "${registry_flags[@]}" \
        --type cyclonedx "${ref%@*}@${p#*=}" </dev/null >/dev/null 2>"$out/cosign.log" \
        || { cat "$out/cosign.log" >&2; die "cosign verify-attestation of $name ${p%%=*} failed"; }
    done
  done <<<"$pushed"
  "${verify[@]}" "$chart_ref" >/dev/null 2>"$out/cosign.log" || { cat "$out/cosign.log" >&2; die "cosign verify $chart_ref failed"; }
  rm -f "$out/cosign.log"
  # Bare file names: the forge release holds the files side by side, and users check them
  # there with `sha256sum -c`.
  (cd "$out" && for f in chart/*.tgz sbom/*.json cli/wa8s-* cosign.pub; do
    (cd "$(dirname "$f")" && sha256sum "$(basename "$f")") || exit 1
  done >SHA256SUMS)
  log "published wa8s $version to $registry (signed, SBOMs attested, verified) in $SECONDS s:"
  cat "$out/pushed.txt"
}

case "${1:-}" in
  build) shift; [ $# -eq 0 ] || usage; build ;;
  publish) shift; publish "$@" ;;
  all) shift; build; publish "$@" ;;
  *) usage ;;
esac
