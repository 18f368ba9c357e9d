#!/usr/bin/env bash
# How fast a revocation reaches another gateway node (issue: "revoked on A, refused on B within
# 1 s"). Runs the integration test `a_revocation_on_one_node_is_refused_on_the_other_within_a_second`:
# two `gatehouse serve` nodes on one real PostgreSQL (Debian's package, started by the test
# harness), 100 tokens, each revoked with `POST /.gatehouse/revocations` on node A and polled on
# node B (every 5 ms) until B refuses it. The time counted runs from node A's answer (the
# revocation committed) to B's first refusal. The store's fallback poll is set to 1 s in
# that test, so the figures show PostgreSQL's notification path.
#
# Results: bench/results/revocation-<UTC timestamp>.md and bench/results/revocation-latest.md.
# Debug build (the test profile), like the test suite: the path measured is the database's
# notification and one in-memory update, not request handling.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=bench-revocation
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
RESULTS=$ROOT/bench/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

log "cargo test (two nodes on PostgreSQL, 100 revocations)"
(cd "$ROOT" && GATEHOUSE_BENCH_OUT=$OUT cargo test -q -p gatehouse --test integration -- \
  --exact revocation::a_revocation_on_one_node_is_refused_on_the_other_within_a_second) >&2
[ -s "$OUT" ] || die "the test wrote no figures"
val() { awk -F= -v k="$1" '$1 == k { print $2 }' "$OUT"; }
MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
PG=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort | tail -1)
PGV=$("$PG/postgres" --version 2>/dev/null || echo unknown)
{
  echo "# Revocation reaching another node, $STAMP"
  echo
  echo "- Commit: \`$(git -C "$ROOT" rev-parse --short HEAD)\`"
  echo "- Machine: $(nproc) CPUs ($MODEL), $MEM memory, Linux $(uname -r)"
  echo "- PostgreSQL: $PGV, on 127.0.0.1, fsync on; both nodes and the database on the same cores"
  echo "- Method: bench/revocation.sh (two \`gatehouse serve\` nodes, one store; \`POST"
  echo "  /.gatehouse/revocations\` on node A; node B polled every 5 ms; store.revocation_poll = 1s)"
  echo
  echo "| target | measured | result |"
  echo "|---|---|---|"
  p99=$(val p99_ms)
  max=$(val max_ms)
  res=$(awk -v m="$max" 'BEGIN { print (m < 1000) ? "PASS" : "MISS" }')
  echo "| a token revoked on node A is refused on node B within 1 s (all of $(val revocations)) | max $max ms | $res |"
  echo
  echo "| revocations | min ms | p50 ms | p99 ms | max ms |"
  echo "|---|---|---|---|---|"
  echo "| $(val revocations) | $(val min_ms) | $(val p50_ms) | $p99 | $max |"
} >"$RESULTS/revocation-$STAMP.md"
cp "$RESULTS/revocation-$STAMP.md" "$RESULTS/revocation-latest.md"
log "results: bench/results/revocation-$STAMP.md"
