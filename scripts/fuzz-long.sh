#!/usr/bin/env bash
# Fuzzes every target (or the ones named) for long: until FUZZ_RUNS executions (default
# 10,000,000) or FUZZ_SECONDS seconds (default: no time limit), whichever comes first. Not part of
# the test command (CI runs scripts/fuzz-smoke.sh for a few seconds per target).
#
#   scripts/fuzz-long.sh                       every target, 10 million executions each
#   FUZZ_SECONDS=600 scripts/fuzz-long.sh jwt_parse push_request
#
# What it finds is kept: the growing corpus in fuzz/corpus/<target>/ (start of the next run),
# crashing inputs in fuzz/artifacts/<target>/ (minimize and add them to fuzz/seeds/<target>/ with
# the fix). A line per target goes to fuzz/long-runs.log: executions, executions per second,
# corpus size, and whether it failed. Exits 1 if any target failed.
#
# Env: FUZZ_RUNS, FUZZ_SECONDS, FUZZ_MAX_LEN (default 4096), FUZZ_TARGET_DIR (build directory,
# default fuzz/target). cargo-fuzz is installed when missing; see scripts/fuzz-smoke.sh for why
# RUSTC_BOOTSTRAP is set and the sanitizer is off.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}
runs=${FUZZ_RUNS:-10000000}
max_len=${FUZZ_MAX_LEN:-4096}
time_arg=()
[ -n "${FUZZ_SECONDS:-}" ] && time_arg=(-max_total_time="$FUZZ_SECONDS")
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
failed=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  log=$(mktemp)
  echo "fuzz: $target, up to $runs executions${FUZZ_SECONDS:+ or ${FUZZ_SECONDS}s}"
  start=$(date +%s)
  status=ok
  cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
    -runs="$runs" "${time_arg[@]}" -max_len="$max_len" -print_final_stats=1 \
    -artifact_prefix="artifacts/$target/" >"$log" 2>&1 || status=FAILED
  secs=$(( $(date +%s) - start ))
  execs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log" | tail -1)
  rate=$(awk '/stat::average_exec_per_sec/ { print $2 }' "$log" | tail -1)
  corpus=$(find "corpus/$target" -type f | wc -l)
  line="$(date -u +%FT%TZ) $target $status executions=${execs:-?} per_second=${rate:-?} seconds=$secs corpus=$corpus"
  echo "$line" | tee -a long-runs.log
  if [ "$status" != ok ]; then
    failed=1
    grep -E "panicked|ERROR|Test unit written" "$log" | head -20 || true
  fi
  rm -f "$log"
done
exit "$failed"
