#!/usr/bin/env bash
# CI stage: the test suite under CPU load (issue 17). A hog of four busy loops pinned over cores
# 0-1 runs beside `cargo test --workspace --locked` for the whole run; jobs must get slower, not
# fail. The build already exists when CI reaches the stages, so this is the test run only.
# Run alone: bash .ci/stage-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

hog_pids=()
stop_hog() {
    for p in "${hog_pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap stop_hog EXIT INT TERM

pin=()
if command -v taskset >/dev/null 2>&1; then
    pin=(taskset -c 0-1)
else
    echo "taskset not found: the hog runs unpinned" >&2
fi
for _ in 1 2 3 4; do
    "${pin[@]}" bash -c 'while :; do :; done' &
    hog_pids+=("$!")
done

echo "load at start: $(cat /proc/loadavg)"
start=$(date +%s)
status=0
cargo test --workspace --locked || status=$?
echo "load at end: $(cat /proc/loadavg)"
echo "tests under load took $(($(date +%s) - start)) s (exit $status)"
exit "$status"
