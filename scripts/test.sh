#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script):
#   install what the tests need, check formatting and lints, run every unit and integration
#   test (real IdP, nginx, git http-backend, git clients), and smoke-run the fuzz targets.
# Usage: bash scripts/test.sh            (FUZZ_SECONDS=0 skips the fuzz smoke run)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
bash scripts/install-deps.sh

step "format"
cargo fmt --all -- --check

# The full run builds the optional parts too (OTLP trace export); the default build, which has
# none of them, is linted too, and its refusal of [traces] tested after the suite.
FEATURES=(--features gatehouse/otlp)

step "lint"
cargo clippy --workspace --all-targets --locked "${FEATURES[@]}" -- -D warnings
cargo clippy -p gatehouse-app -p gatehouse --all-targets --locked -- -D warnings

step "tests"
# Integration tests start real processes; two at a time fits a 2-core machine.
cargo test --workspace --locked "${FEATURES[@]}" -- --test-threads "${TEST_THREADS:-2}" 2>&1 | tee "${TMPDIR:-/tmp}/gatehouse-test.log"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || exit "$status"

step "tests of the default build (no optional features)"
cargo test -p gatehouse --locked --test integration -- --test-threads "${TEST_THREADS:-2}" traces:: 2>&1 | tee -a "${TMPDIR:-/tmp}/gatehouse-test.log"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] || exit "$status"

if [ "${FUZZ_SECONDS:-20}" != 0 ]; then
  step "fuzz smoke run"
  bash scripts/fuzz-smoke.sh
fi

# One closing line that sums up every test binary's results.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "\n%d passed, %d failed, %d skipped\n", p, f, i }' \
  "${TMPDIR:-/tmp}/gatehouse-test.log"
