#!/usr/bin/env bash
# The secrets broker's read path (issue 19's benchmark): secret reads per second and p50/p99 with
# a cached workload token, on both store backends, and the first read of a new job (its token's
# signature verified). Runs the ignored integration test `bench_secrets::bench_secret_reads`
# against a release build: per backend, one `gatehouse serve` (SQLite in a file with
# `synchronous = FULL`; PostgreSQL from Debian's package, started by the test harness, fsync on),
# a GitHub-Actions-shaped job token from the real IdP (`oidc-provider`), `BENCH_CONNS` keep-alive
# connections for `BENCH_SECS` seconds. Every read writes its lease to the store before the value
# is sent, so a read costs one durable write.
#
# Baseline in the same run, same connections, same token: `/.gatehouse/auth` (forward auth)
# deciding a clone: authentication, the policy and the audit record, no store. The ratio
# read/decide is what the broker adds (store reads, the lease's durable write, opening the value).
#
# Results: bench/results/secrets-<UTC timestamp>.md and bench/results/secrets-latest.md.
#
# Env: BENCH_CONNS (default 4), BENCH_SECS (default 10), BENCH_FIRST (default 200),
#      GATEHOUSE_BIN (default: `cargo build --release -p gatehouse`).
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=bench-secrets
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
RESULTS=$ROOT/bench/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
bench_binary
export BENCH_CONNS=${BENCH_CONNS:-4} BENCH_SECS=${BENCH_SECS:-10} BENCH_FIRST=${BENCH_FIRST:-200}

log "cargo test (both backends, $BENCH_CONNS connections, ${BENCH_SECS}s per run, $BENCH_FIRST first reads)"
(cd "$ROOT" && GATEHOUSE_BENCH_BIN=$BIN GATEHOUSE_BENCH_OUT=$OUT cargo test -q -p gatehouse \
  --test integration -- --ignored --exact bench_secrets::bench_secret_reads) >&2
[ -s "$OUT" ] || die "the test wrote no figures"
val() { awk -F= -v k="$1" '$1 == k { print $2 }' "$OUT"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }'; }
MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
PG=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort | tail -1)
PGV=$("$PG/postgres" --version 2>/dev/null || echo unknown)
FS=$(df -T "${TMPDIR:-/tmp}" | awk 'NR == 2 { print $2 }')
{
  echo "# Secret reads, $STAMP"
  echo
  echo "- Commit: \`$(git -C "$ROOT" rev-parse --short HEAD)\`, release build"
  echo "- Machine: $(nproc) CPUs ($MODEL), $MEM memory, Linux $(uname -r); temp files on $FS"
  echo "- PostgreSQL: $PGV, on 127.0.0.1, fsync on; the gateway, the database, the IdP and the"
  echo "  load generator share the same cores"
  echo "- Method: bench/secrets.sh ($BENCH_CONNS keep-alive connections, ${BENCH_SECS}s per run;"
  echo "  $BENCH_FIRST first reads by new jobs, one at a time, each token signed beforehand)"
  echo
  echo "| backend | reads/s | p50 ms | p99 ms | decide/s (baseline) | decide p50 ms | reads/s ÷ decide/s | serial read p50 ms | first read p50 ms | first read p99 ms | RSS MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for b in sqlite postgres; do
    echo "| $b | $(val ${b}_reads_per_s) | $(val ${b}_read_p50_ms) | $(val ${b}_read_p99_ms) | $(val ${b}_decide_per_s) | $(val ${b}_decide_p50_ms) | $(ratio "$(val ${b}_reads_per_s)" "$(val ${b}_decide_per_s)") | $(val ${b}_serial_p50_ms) | $(val ${b}_first_p50_ms) | $(val ${b}_first_p99_ms) | $(awk -v k="$(val ${b}_rss_kib)" 'BEGIN { printf "%.0f", k / 1024 }') |"
  done
  echo
  echo "A read is one durable write (its lease) plus two indexed row reads; on SQLite with"
  echo "\`synchronous = FULL\` the write is an fsync, which bounds reads per second on this disk."
  echo "A first read adds verifying a new token's RS256 signature and mapping its claims."
} >"$RESULTS/secrets-$STAMP.md"
cp "$RESULTS/secrets-$STAMP.md" "$RESULTS/secrets-latest.md"
log "results: bench/results/secrets-$STAMP.md"
cat "$RESULTS/secrets-$STAMP.md"
