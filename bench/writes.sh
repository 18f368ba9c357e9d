#!/usr/bin/env bash
# What it costs a write to be on record before it is forwarded (docs/audit.md, `forwarding`).
#
# A request that can change the forge waits for its `forwarding` audit record to be synced
# (`fdatasync` of the audit log) before it goes upstream; a read does not. Measured in one run,
# loopback only, against baselines from the same run:
#
#   (a) API writes: wrk against `/api/v1/repos/bench/repo/issues` on nginx (`return 201`), through
#       Gatehouse (`forge.kind = "gitea"`) with POST (repo:write: committed before forwarding) and
#       with GET (repo:read: the same route, answer and decision path, group-committed), and
#       directly to nginx. At 1 connection (each write pays a whole sync) and 8 (writes share
#       syncs). The cost of the commit is POST through Gatehouse against GET through Gatehouse.
#   (b) Pushes: a real `git push` of one new commit to a new branch, nginx + fcgiwrap +
#       `git http-backend` directly and through Gatehouse, in interleaved pairs; median wall time
#       of each, and the mean time Gatehouse's pushes waited for their record
#       (`gatehouse_audit_commit_seconds`).
#
# Results: bench/results/writes-<UTC timestamp>.md and bench/results/writes-latest.md.
#
# Env:
#   GATEHOUSE_BIN   binary to measure (default: `cargo build --release -p gatehouse` and use it)
#   BENCH_QUICK=1   3 s wrk runs, 5 push pairs; not for committing
#   BENCH_WRK_SECS  seconds per wrk run (default 10)
#   BENCH_PUSHES    push pairs (default 25)
#   BENCH_PORT_BASE first of four loopback ports (default 19520)
set -euo pipefail
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
BENCH_NAME=bench-writes
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"
WORK=$BENCH/work/writes
RESULTS=$BENCH/results
QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
  WRK_SECS=${BENCH_WRK_SECS:-3}
  PUSHES=${BENCH_PUSHES:-5}
else
  WRK_SECS=${BENCH_WRK_SECS:-10}
  PUSHES=${BENCH_PUSHES:-25}
fi
PORT_BASE=${BENCH_PORT_BASE:-19520}
P_UP=$PORT_BASE
P_GH=$((PORT_BASE + 1))
P_GH_ADMIN=$((PORT_BASE + 2))

GH_PID=""
cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  if [ -n "$GH_PID" ]; then kill -TERM "$GH_PID" 2>/dev/null; wait "$GH_PID" 2>/dev/null; fi
  "$BENCH/git-http.sh" stop "$WORK/nginx" >/dev/null 2>&1
  [ "$rc" = 0 ] || log "failed (exit $rc); logs in ${WORK#"$ROOT"/}/"
  exit "$rc"
}
trap cleanup EXIT

bench_require git curl nginx fcgiwrap wrk
bench_binary

rm -rf "$WORK"
mkdir -p "$WORK/repos/bench" "$WORK/gh" "$WORK/nginx"
bench_git_home "$WORK/home" bench
git init -q --bare "$WORK/repos/bench/repo.git"
git init -q "$WORK/seed"
(cd "$WORK/seed" && echo seed >f && git add f && git commit -qm seed \
  && git push -q "$WORK/repos/bench/repo.git" HEAD:refs/heads/main)

log "upstream: nginx + git http-backend with pushes, /api/ answering 201, on :$P_UP"
GIT_HTTP_WRITES=1 FCGI_CHILDREN=2 "$BENCH/git-http.sh" start "$P_UP" "$WORK/repos" "$WORK/nginx" >&2

GH=$WORK/gh
bench_gatehouse "$GH" "$P_GH" "$P_GH_ADMIN" "$P_UP" bench $'shutdown_grace = "1s"\nworker_threads = 1'
TOKEN=$(bench_token "$GH" bench bench)

API=/api/v1/repos/bench/repo/issues
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$P_GH$API")
[ "$code" = 201 ] || die "POST through Gatehouse answered $code"
grep -q '"event":"forwarding"' "$GH/audit.log" || die "no forwarding record for the POST"

# ---------------------------------------------------------------- (a) API writes
cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
LUA
cat >"$WORK/get.lua" <<'LUA'
wrk.method = "GET"
LUA
# wrk_run METHOD URL CONNS [AUTH] -> "req/s p50_ms p99_ms"
wrk_run() {
  local out args=(-t1 -c"$3" -d"${WRK_SECS}s" --latency -s "$WORK/$(echo "$1" | tr A-Z a-z).lua")
  [ -n "${4:-}" ] && args+=(-H "$4")
  out=$(wrk "${args[@]}" "$2")
  echo "$out" >>"$WORK/wrk.txt"
  if echo "$out" | grep -q "Non-2xx"; then die "non-2xx answers in: $out"; fi
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
  p50=$(echo "$out" | awk '$1 == "50%" { print $2 }')
  p99=$(echo "$out" | awk '$1 == "99%" { print $2 }')
  echo "$rps $(ms "$p50") $(ms "$p99")"
}
ms() { # wrk's 1.23ms / 456.00us / 1.2s -> milliseconds
  case "$1" in
    *us) awk -v v="${1%us}" 'BEGIN { printf "%.3f", v / 1000 }' ;;
    *ms) awk -v v="${1%ms}" 'BEGIN { printf "%.3f", v }' ;;
    *s) awk -v v="${1%s}" 'BEGIN { printf "%.3f", v * 1000 }' ;;
  esac
}
AUTH="Authorization: Bearer $TOKEN"
declare -A R
for c in 1 8; do
  log "(a) $c connection(s): direct POST, Gatehouse GET, Gatehouse POST"
  R[direct_$c]=$(wrk_run POST "http://127.0.0.1:$P_UP$API" "$c")
  R[get_$c]=$(wrk_run GET "http://127.0.0.1:$P_GH$API" "$c" "$AUTH")
  R[post_$c]=$(wrk_run POST "http://127.0.0.1:$P_GH$API" "$c" "$AUTH")
done
commits_a=$(curl -s "http://127.0.0.1:$P_GH_ADMIN/metrics" | awk '/^gatehouse_audit_commit_seconds_count/ { print $2 }')

# ---------------------------------------------------------------- (b) pushes
log "(b) $PUSHES pairs of pushes, direct and through Gatehouse"
git clone -q "http://127.0.0.1:$P_UP/bench/repo.git" "$WORK/work" 2>/dev/null
cd "$WORK/work"
now_ms() { date +%s%N | awk '{ printf "%.3f", $1 / 1000000 }'; }
: >"$WORK/push-direct.txt"
: >"$WORK/push-gatehouse.txt"
metric() { curl -s "http://127.0.0.1:$P_GH_ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
sum0=$(metric gatehouse_audit_commit_seconds_sum)
cnt0=$(metric gatehouse_audit_commit_seconds_count)
for i in $(seq 1 "$PUSHES"); do
  for via in direct gatehouse; do
    echo "$via $i" >"f-$via"
    git add "f-$via" && git commit -qm "$via $i"
    if [ "$via" = direct ]; then
      url="http://127.0.0.1:$P_UP/bench/repo.git"; hdr=()
    else
      url="http://127.0.0.1:$P_GH/bench/repo.git"; hdr=(-c "http.extraHeader=$AUTH")
    fi
    t0=$(now_ms)
    git "${hdr[@]}" push -q "$url" "HEAD:refs/heads/$via-$i" 2>>"$WORK/push.err" || die "push $via $i failed: $(tail -3 "$WORK/push.err")"
    t1=$(now_ms)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }' >>"$WORK/push-$via.txt"
  done
done
cd "$ROOT"
sum1=$(metric gatehouse_audit_commit_seconds_sum)
cnt1=$(metric gatehouse_audit_commit_seconds_count)
median() { sort -n "$1" | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
PD=$(median "$WORK/push-direct.txt")
PG=$(median "$WORK/push-gatehouse.txt")
# Per push (its ref advertisement is not committed; its receive-pack POST is, once).
PUSH_COMMIT_MS=$(awk -v s0="$sum0" -v s1="$sum1" -v n="$PUSHES" 'BEGIN { printf "%.3f", (s1 - s0) / n * 1000 }')
PUSH_COMMITS=$(awk -v c0="$cnt0" -v c1="$cnt1" -v n="$PUSHES" 'BEGIN { printf "%.2f", (c1 - c0) / n }')
forwarded=$(grep -c '"event":"forwarding"' "$GH/audit.log")
"$BIN" audit verify "$GH/audit.log" >"$WORK/verify.txt" 2>&1 || die "audit verify failed: $(cat "$WORK/verify.txt")"

# ---------------------------------------------------------------- results
field() { echo "${R[$1]}" | awk -v i="$2" '{ print $i }'; }
TS=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RESULTS"
OUT=$RESULTS/writes-$TS.md
MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
FS=$(stat -f -c %T "$GH")
DEV=$(df -P "$GH" | awk 'NR == 2 { print $1 }')
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD)
DIRTY=$(git -C "$ROOT" status --porcelain | grep -q . && echo " (dirty: uncommitted changes)" || true)
{
  echo "# Gatehouse write benchmark, $TS"
  echo
  echo "## Setup"
  echo
  echo "- Commit: \`$COMMIT\`$DIRTY; binary \`${BIN#"$ROOT"/}\` ($("$BIN" --version))"
  echo "- Machine: $(nproc) CPUs ($MODEL), $MEM memory, Linux $(uname -r)"
  echo "- Audit log on \`$FS\` ($DEV): what one \`fdatasync\` costs depends on it"
  echo "- Tools: $(git --version); $(nginx -v 2>&1 | sed 's/.*: //'); wrk $(wrk -v 2>&1 | head -1 | awk '{ print $2 }'); $(curl --version | head -1 | awk '{ print $1, $2 }')"
  echo "- Everything on 127.0.0.1 and the same cores; Gatehouse \`server.worker_threads = 1\`, default \`[audit]\` (\`flush_interval = 5ms\`)"
  echo "- wrk runs of ${WRK_SECS} s; $PUSHES push pairs$( [ "$QUICK" = 1 ] && echo '; QUICK run: not comparable')"
  echo
  echo "## (a) API writes"
  echo
  echo "\`$API\` on nginx (\`return 201\`), \`Authorization: Bearer\` through Gatehouse (\`forge.kind = \"gitea\"\`)."
  echo "POST is \`repo:write\`: its \`forwarding\` record is synced before it is forwarded. GET is \`repo:read\`"
  echo "on the same route: the same work without that wait (its record is group-committed)."
  echo
  echo "| connections | request | req/s | p50 ms | p99 ms |"
  echo "|---|---|---|---|---|"
  for c in 1 8; do
    echo "| $c | POST directly to nginx | $(field direct_$c 1) | $(field direct_$c 2) | $(field direct_$c 3) |"
    echo "| $c | GET through Gatehouse (no wait) | $(field get_$c 1) | $(field get_$c 2) | $(field get_$c 3) |"
    echo "| $c | POST through Gatehouse (synced first) | $(field post_$c 1) | $(field post_$c 2) | $(field post_$c 3) |"
  done
  echo
  for c in 1 8; do
    awk -v c="$c" -v gr="$(field get_$c 1)" -v pr="$(field post_$c 1)" -v g50="$(field get_$c 2)" -v p50="$(field post_$c 2)" -v g99="$(field get_$c 3)" -v p99="$(field post_$c 3)" \
      'BEGIN { printf "- At %d connection(s) a write through Gatehouse serves %.3f of the req/s of a read on the same route, and takes %+.3f ms at p50, %+.3f ms at p99.\n", c, pr / gr, p50 - g50, p99 - g99 }'
  done
  echo
  echo "## (b) Pushes"
  echo
  echo "\`git push\` of one new commit (one small file) to a new branch, nginx + fcgiwrap + \`git http-backend\`,"
  echo "$PUSHES interleaved pairs. Wall time of the \`git push\` process, median."
  echo
  echo "| push | median ms |"
  echo "|---|---|"
  echo "| directly | $PD |"
  echo "| through Gatehouse | $PG |"
  echo
  awk -v d="$PD" -v g="$PG" -v w="$PUSH_COMMIT_MS" -v c="$PUSH_COMMITS" \
    'BEGIN { printf "- Through Gatehouse a push takes %+.3f ms (%.3f of direct). Of that, a push waited %s ms on average for its audit record to be synced (%s commits per push; gatehouse_audit_commit_seconds over the pushes).\n", g - d, g / d, w, c }'
  echo "- Records: $forwarded \`forwarding\` records in the run ($commits_a commits by the end of (a)); \`gatehouse audit verify\`: $(cat "$WORK/verify.txt")"
} >"$OUT"
cp "$OUT" "$RESULTS/writes-latest.md"
log "results: ${OUT#"$ROOT"/}"
cat "$OUT"
