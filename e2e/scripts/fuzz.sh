#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input (e2e/fuzz/src/bin/), with AFL++
# through cargo-afl on stable Rust. Each target starts from its committed corpus and runs for
# SECONDS (default 20). An input that crashes a target is copied into that corpus (where
# `cargo test` replays it from then on) and the script fails naming it.
# cargo-afl (with the AFL++ it builds) and the instrumented build are cached under
# ~/.cache/wa8s/. Usage: e2e/scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
LOG_PREFIX=fuzz
source e2e/scripts/lib/common.sh
source e2e/scripts/versions.sh
seconds="${1:-20}"
shift || true

# target → the corpus it starts from (and where its crashes go)
declare -A corpus=(
  [host_rule]=crds/tests/corpus/host_rule
  [policy]=crds/tests/corpus/policy
  [quantity]=crds/tests/corpus/quantity
  [reference]=oci/tests/corpus/reference
  [manifest]=oci/tests/corpus/manifest
  [inspector]=oci/tests/corpus/inspector
  [tar_layers]=oci/tests/corpus/tar_layers
  [containerd_config]=installer/tests/corpus/containerd_config
)
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(host_rule policy quantity reference manifest inspector tar_layers containerd_config)

afl_dir="$(cargo_afl_dir)"
if [ ! -x "$afl_dir/bin/cargo-afl" ]; then
  log "installing cargo-afl $CARGO_AFL_VERSION (builds AFL++; a few minutes, once)"
  cargo install --quiet --locked --root "$afl_dir" "cargo-afl@$CARGO_AFL_VERSION"
fi
export PATH="$afl_dir/bin:$PATH"
# AFL++'s runtime is built per rustc version, once.
cargo afl config --build >/dev/null 2>&1 || true

export CARGO_TARGET_DIR="$WA8S_CACHE/fuzz-target"
log "building the targets with AFL instrumentation"
(cd e2e/fuzz && cargo afl build --release --locked --quiet)

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
  AFL_NO_AFFINITY=1 AFL_QUIET=1
failed=0
for t in "${targets[@]}"; do
  dir="${corpus[$t]:-}"
  [ -n "$dir" ] || die "unknown target $t (known: ${!corpus[*]})"
  log "$t: ${seconds}s from $dir"
  cargo afl fuzz -V "$seconds" -i "$dir" -o "$out/$t" -- "$CARGO_TARGET_DIR/release/$t" \
    >"$out/$t.log" 2>&1 || { tail -20 "$out/$t.log" >&2; die "$t: afl-fuzz failed to run"; }
  stats="$out/$t/default/fuzzer_stats"
  [ -f "$stats" ] && log "$t: $(awk -F: '/^(execs_done|corpus_count|bitmap_cvg) / { gsub(/ /, ""); printf "%s=%s ", $1, $2 }' "$stats")"
  for crash in "$out/$t"/default/crashes/id:*; do
    [ -e "$crash" ] || continue
    keep="$dir/crash-$(sha256sum "$crash" | cut -c1-16)"
    cp "$crash" "$keep"
    log "$t CRASHED: the input is kept as $keep (cargo test replays it)"
    failed=1
  done
done
[ "$failed" = 0 ] || die "crashes found; commit the kept inputs with their fixes"
log "no crashes"
