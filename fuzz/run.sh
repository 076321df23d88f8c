#!/usr/bin/env bash
# Runs every fuzz target in turn for a bounded time; stops at the first crash.
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET]      (default 60; from anywhere in the repository)
# Env:   TARGETS="a b"  run only these targets (default: all, from `cargo fuzz list`)
#        NICE=10        niceness of the fuzzers (default 10)
#        FUZZ_ARGS=...  extra libFuzzer flags (e.g. "-max_len=65536")
#
# Each target runs as
#   cargo +nightly fuzz run T fuzz/corpus/T fuzz/seeds/corpus/T -- \
#     -max_total_time=S -rss_limit_mb=2048 -timeout=30 -print_final_stats=1
# with its log in fuzz/logs/T.log. New inputs go to fuzz/corpus/T (git-ignored); crashes go to
# fuzz/artifacts/T/. One summary line per target is printed, and appended to
# fuzz/logs/summary.tsv. Exit status: 0 if no target crashed, 1 at the first crash.
set -euo pipefail

secs="${1:-60}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
nice_level="${NICE:-10}"
mkdir -p fuzz/logs

echo "building the fuzz targets..."
nice -n "$nice_level" cargo +nightly fuzz build >fuzz/logs/build.log 2>&1 || {
    tail -30 fuzz/logs/build.log
    echo "build failed (fuzz/logs/build.log)" >&2
    exit 2
}
targets="${TARGETS:-$(cargo +nightly fuzz list)}"

printf '%-16s %7s %12s %8s %7s %7s %7s  %s\n' target secs runs exec/s cov ft corpus result
for t in $targets; do
    mkdir -p "fuzz/corpus/$t"
    dirs=("fuzz/corpus/$t")
    [ -d "fuzz/seeds/corpus/$t" ] && dirs+=("fuzz/seeds/corpus/$t")
    log="fuzz/logs/$t.log"
    start=$(date +%s)
    rc=0
    # shellcheck disable=SC2086
    nice -n "$nice_level" cargo +nightly fuzz run "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 \
        ${FUZZ_ARGS:-} >"$log" 2>&1 || rc=$?
    elapsed=$(($(date +%s) - start))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    # The last libFuzzer status line: "#N DONE cov: C ft: F corp: K/SIZE ...".
    status=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$status")
    result=ok
    [ "$rc" -ne 0 ] && result="CRASH (exit $rc, see $log and fuzz/artifacts/$t/)"
    printf '%-16s %7s %12s %8s %7s %7s %7s  %s\n' "$t" "$elapsed" "${runs:-?}" "${eps:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$elapsed" \
        "${runs:-}" "${eps:-}" "${cov:-}" "${ft:-}" "${corp:-}" "$result" >>fuzz/logs/summary.tsv
    if [ "$rc" -ne 0 ]; then
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -10 >&2 || true
        exit 1
    fi
done
