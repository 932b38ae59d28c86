#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 60):
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install --locked cargo-fuzz`). Builds with the
# stable toolchain (RUSTC_BOOTSTRAP=1 lets it take libFuzzer's nightly
# flags), without a sanitizer (Frenly forbids unsafe code; what the fuzzer
# hunts is panics, overflows and hangs) and with debug assertions, so
# arithmetic overflow panics. Corpora grow in fuzz/corpus/<target>, crashes
# land in fuzz/artifacts/<target>. Prints one summary line per target
# (executions, coverage, features) and fails if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_PER_TARGET="${1:-60}"
shift || true
export RUSTC_BOOTSTRAP=1
FLAGS=(--sanitizer none --debug-assertions)
if [ "$#" -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi

cargo fuzz build "${FLAGS[@]}"
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="$(mktemp)"
  if cargo fuzz run "${FLAGS[@]}" "$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_PER_TARGET" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
  fi
  execs="$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')"
  last="$(grep -E '#[0-9]+.*(cov|ft):' "$log" | tail -1)"
  cov="$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$last")"
  ft="$(sed -nE 's/.*ft: ([0-9]+).*/\1/p' <<<"$last")"
  corp="$(sed -nE 's/.*corp: ([0-9]+).*/\1/p' <<<"$last")"
  printf '%-12s %-6s execs=%-10s cov=%-6s ft=%-6s corpus=%s\n' "$t" "$result" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}"
  if [ "$result" = CRASH ]; then
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 >&2
  fi
  rm -f "$log"
done
exit "$status"
