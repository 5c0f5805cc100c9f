#!/usr/bin/env bash
# Runs every libFuzzer target of a QTRAIN_FUZZ build for a bounded time, each starting from its
# committed seed corpus (tests/fuzz/corpus/<target>). Any crash, sanitizer report, leak,
# per-input timeout or out-of-memory fails the run; the offending input is kept in
# $QTRAIN_FUZZ_ARTIFACTS (default <build>/fuzz-artifacts) for a regression test.
#   bash scripts/fuzz.sh [seconds per target, default 60] [target ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${QTRAIN_BUILD:-$root/build-check}"
seconds="${1:-60}"
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  for dir in "$root"/tests/fuzz/corpus/*/; do targets+=("$(basename "$dir")"); done
fi
source "$root/scripts/sanitizer_env.sh"
artifacts="${QTRAIN_FUZZ_ARTIFACTS:-$build/fuzz-artifacts}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$artifacts"
total=0
printf '%-24s %10s %8s %8s %8s\n' target executions exec/s cov ft
for target in "${targets[@]}"; do
  binary="$build/tests/fuzz/$target"
  [[ -x "$binary" ]] || { echo "fuzz: $binary is missing (configure with -DQTRAIN_FUZZ=ON)"; exit 2; }
  mkdir -p "$work/$target"
  log="$work/$target.log"
  if ! (cd "$work" && TMPDIR="$work" "$binary" "$work/$target" "$root/tests/fuzz/corpus/$target" \
      -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -malloc_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$artifacts/$target-" >"$log" 2>&1); then
    tail -n 80 "$log"
    echo "fuzz: $target failed; the input is under $artifacts"
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
  last="$(grep -E '^#[0-9]+' "$log" | tail -n 1)"
  cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
  ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
  printf '%-24s %10s %8s %8s %8s\n' "$target" "$runs" "$rate" "${cov:--}" "${ft:--}"
  total=$((total + runs))
done
echo "fuzz: ${#targets[@]} targets, $total executions, no crash"
