#!/usr/bin/env bash
# The webhook relay (issue 20's benchmark): accepted deliveries per second and the p50/p99 the
# forge waits for its answer, on both store backends. Runs the ignored integration test
# `bench_webhooks::bench_webhook_accepts` against a release build: per backend, one `gatehouse
# serve` (SQLite in a file with `synchronous = FULL`; PostgreSQL from Debian's package, started
# by the test harness, fsync on) with a Gitea hook and one target (a receiver answering 204),
# `BENCH_CONNS` keep-alive connections POSTing signed push events (Gitea's pretty-printed JSON,
# about 3 KiB, each with its own delivery id) for `BENCH_SECS` seconds. An accept verifies the
# HMAC, looks the update up in the push index and commits the delivery, its id and its target
# row in one transaction before the 202; the relay sends them on meanwhile.
#
# Baseline in the same run, same connections: `/.gatehouse/auth` (forward auth) deciding a
# clone: authentication, the policy and the audit record, no store.
#
# Results: bench/results/webhooks-<UTC timestamp>.md and bench/results/webhooks-latest.md.
#
# Env: BENCH_CONNS (default 4), BENCH_SECS (default 10),
#      GATEHOUSE_BIN (default: `cargo build --release -p gatehouse`).
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=bench-webhooks
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
RESULTS=$ROOT/bench/results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
bench_binary
export BENCH_CONNS=${BENCH_CONNS:-4} BENCH_SECS=${BENCH_SECS:-10}

log "cargo test (both backends, $BENCH_CONNS connections, ${BENCH_SECS}s per run)"
(cd "$ROOT" && GATEHOUSE_BENCH_BIN=$BIN GATEHOUSE_BENCH_OUT=$OUT cargo test -q -p gatehouse \
  --test integration -- --ignored --exact bench_webhooks::bench_webhook_accepts) >&2
[ -s "$OUT" ] || die "the test wrote no figures"
val() { awk -F= -v k="$1" '$1 == k { print $2 }' "$OUT"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }'; }
MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
PG=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort | tail -1)
PGV=$("$PG/postgres" --version 2>/dev/null || echo unknown)
FS=$(df -T "${TMPDIR:-/tmp}" | awk 'NR == 2 { print $2 }')
{
  echo "# Webhook deliveries accepted, $STAMP"
  echo
  echo "- Commit: \`$(git -C "$ROOT" rev-parse --short HEAD)\`, release build"
  echo "- Machine: $(nproc) CPUs ($MODEL), $MEM memory, Linux $(uname -r); temp files on $FS"
  echo "- PostgreSQL: $PGV, on 127.0.0.1, fsync on; the gateway, the database, the receiver and"
  echo "  the load generator share the same cores"
  echo "- Method: bench/webhooks.sh ($BENCH_CONNS keep-alive connections, ${BENCH_SECS}s per run,"
  echo "  push events of $(val sqlite_body_bytes) bytes signed as Gitea signs them; the relay"
  echo "  to one target runs at the same time)"
  echo
  echo "| backend | accepted/s | p50 ms | p99 ms | serial p50 ms | serial p99 ms | decide/s (baseline) | accepted/s ÷ decide/s | relayed/s | accepted | relayed | RSS MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for b in sqlite postgres; do
    echo "| $b | $(val ${b}_accepts_per_s) | $(val ${b}_accept_p50_ms) | $(val ${b}_accept_p99_ms) | $(val ${b}_serial_p50_ms) | $(val ${b}_serial_p99_ms) | $(val ${b}_decide_per_s) | $(ratio "$(val ${b}_accepts_per_s)" "$(val ${b}_decide_per_s)") | $(val ${b}_relayed_per_s) | $(val ${b}_accepted) | $(val ${b}_relayed) | $(awk -v k="$(val ${b}_rss_kib)" 'BEGIN { printf "%.0f", k / 1024 }') |"
  done
  echo
  echo "An accept is one durable transaction (the delivery id and the body's digest, the body, one"
  echo "target row) plus a push-index read; on SQLite with \`synchronous = FULL\` the commit is an fsync,"
  echo "which bounds accepts per second on this disk. The relay's own writes (a claim and an"
  echo "outcome per delivery) share SQLite's single writer with the accepts, which is where the"
  echo "SQLite p99 comes from; PostgreSQL takes them side by side. The forge's wait is the p99:"
  echo "Gitea gives up after"
  echo "\`webhook.DELIVER_TIMEOUT\` (5 s by default). relayed/s counts from the first accept to the"
  echo "last delivery the receiver got, the accept load and the relay sharing the cores."
} >"$RESULTS/webhooks-$STAMP.md"
cp "$RESULTS/webhooks-$STAMP.md" "$RESULTS/webhooks-latest.md"
log "results: bench/results/webhooks-$STAMP.md"
cat "$RESULTS/webhooks-$STAMP.md"
