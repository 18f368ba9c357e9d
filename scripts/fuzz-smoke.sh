#!/usr/bin/env bash
# Smoke-runs every fuzz target for FUZZ_SECONDS (default 20) each, starting from fuzz/seeds/.
# cargo-fuzz is installed when missing. The machine's toolchain is stable: RUSTC_BOOTSTRAP lets
# cargo-fuzz pass its -Z flags, and the sanitizer is off (the code is #![forbid(unsafe_code)]).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/fuzz"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}
seconds=${FUZZ_SECONDS:-20}
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=0 2>&1 | tail -n 3
done
