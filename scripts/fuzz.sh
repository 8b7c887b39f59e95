#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 3600: an hour each), one after another on
# one core, and prints executions, executions per second and crashes per target. CI runs it with
# a few seconds per target (FUZZ_SECONDS in scripts/test.sh).
#
#   scripts/fuzz.sh [SECONDS]            all targets
#   FUZZ_TARGETS="body reply" scripts/fuzz.sh 600
#   FUZZ_PROFILE=dev scripts/fuzz.sh 20    unoptimised build: 2.6 min instead of 5.6 on 2 vCPUs,
#                                          fewer executions a second (CI's brief runs use it)
#
# Stable toolchain with RUSTC_BOOTSTRAP=1, no sanitizer (`-s none`): a quarter of the build time of
# ASan, and Rust panics and aborts are still caught. The corpus grows in fuzz/corpus/<target>;
# a crash, hang or out-of-memory input is saved in fuzz/artifacts/<target>/ and makes the exit
# status 1 (replay it with `cargo fuzz run -s none <target> <file>`).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-3600}"
targets="${FUZZ_TARGETS:-command session body reply dns_answer spool_recovery http_request proxy_header}"
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
profile=()
if [ "${FUZZ_PROFILE:-release}" = dev ]; then
  profile=(--dev)
fi
cargo fuzz build -s none "${profile[@]}"

dictionary() {
  case "$1" in
    command | session | body | reply) echo "-dict=smtp.dict" ;;
    http_request) echo "-dict=http.dict" ;;
    proxy_header) echo "-dict=proxy.dict" ;;
  esac
}

count_artifacts() {
  # No directory yet: none.
  { find "artifacts/$1" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) \
    2>/dev/null || true; } | wc -l
}

failed=0
printf '%-16s %12s %8s %8s %8s\n' target executions exec/s coverage crashes
for target in $targets; do
  log="$(mktemp)"
  before="$(count_artifacts "$target")"
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: others share the machine.
  # The outer timeout is a backstop for a fuzzer that does not stop on its own.
  timeout "$((seconds + 300))" cargo fuzz run -s none "${profile[@]}" "$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
    $(dictionary "$target") >"$log" 2>&1 || true
  after="$(count_artifacts "$target")"
  executions="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  per_second="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  # Edges covered, from libFuzzer's last status line.
  coverage="$({ grep -o 'cov: [0-9]*' "$log" || true; } | tail -n 1 | cut -d' ' -f2)"
  crashes=$((after - before))
  printf '%-16s %12s %8s %8s %8s\n' "$target" "${executions:-?}" "${per_second:-?}" "${coverage:-?}" "$crashes"
  if [ "$crashes" -gt 0 ] || [ -z "$executions" ]; then
    failed=1
    grep -E 'panicked at|ERROR: libFuzzer|Test unit written to|SUMMARY' "$log" | head -n 8 || true
    [ -n "$executions" ] || tail -n 20 "$log"
  fi
  rm -f "$log"
done
exit "$failed"
