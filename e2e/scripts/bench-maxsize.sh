#!/usr/bin/env bash
# Throughput of a write-heavy guest with and without `maxSize` (docs/benchmarks.md).
#
# The guest (fsprobe `W`) writes 64 MiB in 64 KiB writes under `wa8s run`, into:
#   plain  — a directory with no bound;
#   kernel — a directory with the bound in the kernel: an ext4 image in it, loop-mounted over
#            it with the flags the shim uses for a pod's maxSize grant (shim/src/bounded.rs);
#   counted — `wa8s run --dir …:maxSize=`, the bound the host keeps by accounting (one walk
#            at start, then every growing call charged in constant time; what local runs have).
# Each runs with the directory empty, then holding FILES small files. Needs root (loop devices).
# Usage: e2e/scripts/bench-maxsize.sh [ROUNDS] [FILES]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
LOG_PREFIX=bench-maxsize
source e2e/scripts/lib/common.sh
rounds="${1:-5}"
files="${2:-20000}"
[ "$(id -u)" = 0 ] || die "needs root (loop devices)"
command -v mkfs.ext4 >/dev/null || apt_install e2fsprogs

cargo build --release -q -p wa8s-cli
cargo build --release -q -p wa8s-test-components --example write-guests
./target/release/examples/write-guests "$PWD/target/bench-guests" >/dev/null
wa8s="$PWD/target/release/wa8s"
probe="$PWD/target/bench-guests/fsprobe.wasm"

work="$(mktemp -d)"
mounted=()
cleanup() {
  for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

bound=$((256 << 20))
prepare() { # kind dir: an empty directory of that kind
  local kind="$1" dir="$2"
  mkdir -p "$dir"
  if [ "$kind" = kernel ]; then
    truncate -s "$bound" "$dir/.wa8s-maxsize.img"
    mkfs.ext4 -q -F -m 0 -O ^has_journal,^resize_inode -b 4096 -N $((bound / 16384)) \
      -E root_owner=0:0 "$dir/.wa8s-maxsize.img"
    mount -t ext4 -o loop,nosuid,nodev,noexec,noatime "$dir/.wa8s-maxsize.img" "$dir"
    mounted+=("$dir")
    rmdir "$dir/lost+found"
  fi
}

fill() { # dir: FILES small files in it
  local dir="$1"
  mkdir -p "$dir/many"
  (cd "$dir/many" && seq "$files" | xargs -n 1000 touch)
}

run() { # kind dir: seconds for ROUNDS runs of the 64 MiB writer
  local kind="$1" dir="$2" spec="$2:/data"
  [ "$kind" = counted ] && spec="$2:/data:maxSize=$bound"
  local start end
  start=$(date +%s.%N)
  for _ in $(seq "$rounds"); do
    out=$("$wa8s" run --dir "$spec" "$probe" -- 3 W big)
    [ "$out" = "errno=0" ] || die "$kind: the guest said $out"
  done
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

printf '%-8s %-10s %12s %10s\n' config directory seconds MiB/s
for state in empty "$files files"; do
  for kind in plain kernel counted; do
    dir="$work/$kind-${state%% *}"
    prepare "$kind" "$dir"
    [ "$state" = empty ] || fill "$dir"
    secs=$(run "$kind" "$dir")
    awk -v k="$kind" -v s="${state%% *}" -v t="$secs" -v n="$rounds" \
      'BEGIN { printf "%-8s %-10s %12.2f %10.1f\n", k, s, t, 64 * n / t }'
  done
done
