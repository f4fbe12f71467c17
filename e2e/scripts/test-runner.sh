#!/usr/bin/env bash
# Cargo's runner for test binaries (set by test.sh): a hung test must fail the run with a
# message, not hold CI until its own limit. `timeout` puts the binary and whatever it started
# (registries, etcd, kube-apiserver) in one process group and signals the whole group.
set -uo pipefail
limit="${WA8S_TEST_BINARY_TIMEOUT:-900}"
# The kind scenarios build a three-node cluster and take it through node stops and restarts;
# the upgrade scenario builds its own cluster (the previous release is built beforehand).
case "$(basename "$1")" in kind-* | kind_upgrade-*) limit="${WA8S_KIND_TEST_TIMEOUT:-2400}" ;; esac
timeout --kill-after=15s "${limit}s" "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "error: test binary $(basename "$1") ran past ${limit}s and was stopped;" \
    "the test reported above as running for over 60 seconds is the one that hung" >&2
fi
exit "$rc"
