#!/usr/bin/env bash
# Load and soak: what Gatehouse holds and whether it stays flat (not part of the test command).
#
#   (a) 10,000 concurrent idle keep-alive connections, each after one authenticated request:
#       Gatehouse's RSS and open file descriptors before, while they are held, and after.
#   (b) a mixed soak for SOAK_SECONDS (default 600): loops of real `git clone`, `git push`, API
#       reads, and requests that must be refused (403 by policy, 401 with a bad token), all
#       through Gatehouse to nginx + fcgiwrap + `git http-backend`. RSS and open fds are sampled
#       every 5 s. Pass: RSS at the end within 10% of RSS after the first minute (warm-up), no fd
#       growth (end within 16 of the start), `gatehouse audit verify` passes, and no error other
#       than the intended refusals.
#
# Results: bench/results/soak-<UTC timestamp>.md (with the machine) and soak-latest.md.
# Env: GATEHOUSE_BIN (default: cargo build --release -p gatehouse), SOAK_SECONDS (600),
#      IDLE_CONNS (10000), BENCH_PORT_BASE (19540; three ports).
set -euo pipefail
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
BENCH_NAME=soak
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"
WORK=$BENCH/work/soak
RESULTS=$BENCH/results
SOAK=${SOAK_SECONDS:-600}
IDLE=${IDLE_CONNS:-10000}
PORT_BASE=${BENCH_PORT_BASE:-19540}
P_UP=$PORT_BASE
P_GH=$((PORT_BASE + 1))
P_ADMIN=$((PORT_BASE + 2))

GH_PID="" PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  wait "${PIDS[@]}" 2>/dev/null
  if [ -n "$GH_PID" ]; then kill -TERM "$GH_PID" 2>/dev/null; wait "$GH_PID" 2>/dev/null; fi
  "$BENCH/git-http.sh" stop "$WORK/nginx" >/dev/null 2>&1
  [ "$rc" = 0 ] || log "failed (exit $rc); logs in ${WORK#"$ROOT"/}/"
  exit "$rc"
}
trap cleanup EXIT

bench_require git curl nginx fcgiwrap python3
need=$((IDLE + 1024))
[ "$(ulimit -n)" -ge "$need" ] || ulimit -n "$need" 2>/dev/null || die "ulimit -n is $(ulimit -n); $IDLE idle connections need $need"

bench_binary

rm -rf "$WORK"
mkdir -p "$WORK/repos/bench" "$WORK/repos/secret" "$WORK/gh" "$WORK/nginx"
bench_git_home "$WORK/home" soak
for r in bench/repo secret/repo; do
  git init -q --bare "$WORK/repos/$r.git"
done
git init -q "$WORK/seed"
(cd "$WORK/seed" && head -c 200000 /dev/urandom >blob && git add blob && git commit -qm seed \
  && git push -q "$WORK/repos/bench/repo.git" HEAD:refs/heads/main \
  && git push -q "$WORK/repos/secret/repo.git" HEAD:refs/heads/main)
GIT_HTTP_WRITES=1 FCGI_CHILDREN=4 "$BENCH/git-http.sh" start "$P_UP" "$WORK/repos" "$WORK/nginx" >&2

GH=$WORK/gh
bench_gatehouse "$GH" "$P_GH" "$P_ADMIN" "$P_UP" soak $'shutdown_grace = "5s"\nidle_timeout = "30m"'
TOKEN=$(bench_token "$GH" soak soak)
OTHER=$(bench_token "$GH" other nobody)
# The server process (the subshell exec'd it, so $GH_PID is gatehouse itself).
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$GH_PID/status"; }
fds() { find "/proc/$GH_PID/fd" -mindepth 1 -maxdepth 1 | wc -l; }

# ---------------------------------------------------------------- (a) idle connections
log "(a) $IDLE idle keep-alive connections"
RSS0=$(rss_kib) FD0=$(fds)
cat >"$WORK/idle.py" <<'PY'
import socket, sys, time
port, n, token, hold = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
req = ("GET /api/v1/repos/bench/repo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
       "Authorization: Bearer %s\r\n\r\n" % token).encode()
socks, failed = [], 0
for _ in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(req)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("closed")
            data += chunk
        if not data.startswith(b"HTTP/1.1 "):
            raise OSError("not HTTP")
        socks.append(s)
    except OSError:
        failed += 1
print(len(socks), failed, flush=True)
open(hold, "w").close()
while True:
    time.sleep(1)
PY
rm -f "$WORK/holding"
python3 "$WORK/idle.py" "$P_GH" "$IDLE" "$TOKEN" "$WORK/holding" >"$WORK/idle.out" &
IDLE_PID=$!
PIDS+=("$IDLE_PID")
for _ in $(seq 1 600); do [ -f "$WORK/holding" ] && break; sleep 0.5; done
[ -f "$WORK/holding" ] || die "the idle connections were not opened"
sleep 2
read -r HELD HELD_FAILED <"$WORK/idle.out"
RSS_HELD=$(rss_kib) FD_HELD=$(fds)
kill "$IDLE_PID"; wait "$IDLE_PID" 2>/dev/null || true
PIDS=()
for _ in $(seq 1 100); do [ "$(fds)" -le $((FD0 + 16)) ] && break; sleep 0.2; done
RSS_AFTER=$(rss_kib) FD_AFTER=$(fds)
log "held $HELD ($HELD_FAILED failed): RSS $RSS0 -> $RSS_HELD -> $RSS_AFTER KiB, fds $FD0 -> $FD_HELD -> $FD_AFTER"

# ---------------------------------------------------------------- (b) soak
log "(b) mixed soak for ${SOAK}s"
AUTH="Authorization: Bearer $TOKEN"
URL="http://127.0.0.1:$P_GH/bench/repo.git"
END=$(( $(date +%s) + SOAK ))
mkdir -p "$WORK/counts"
count() { echo "$2" >>"$WORK/counts/$1"; }
clones() {
  while [ "$(date +%s)" -lt "$END" ]; do
    rm -rf "$WORK/clone"
    if git -c "http.extraHeader=$AUTH" clone -q "$URL" "$WORK/clone" 2>>"$WORK/counts/clone.err"; then count clone ok; else count clone ERROR; fi
  done
}
pushes() {
  git -c "http.extraHeader=$AUTH" clone -q "$URL" "$WORK/pusher" 2>/dev/null
  cd "$WORK/pusher"
  local i=0
  while [ "$(date +%s)" -lt "$END" ]; do
    i=$((i + 1))
    echo "$i" >f && git add f && git commit -qm "soak $i"
    if git -c "http.extraHeader=$AUTH" push -q origin "HEAD:refs/heads/soak-$((i % 50))" -f 2>>"$WORK/counts/push.err"; then count push ok; else count push ERROR; fi
  done
}
api() {
  while [ "$(date +%s)" -lt "$END" ]; do
    c=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "http://127.0.0.1:$P_GH/api/v1/repos/bench/repo")
    # The test nginx answers /api/ with 201 for any method (GIT_HTTP_WRITES=1).
    case "$c" in 2??) count api ok ;; *) count api "ERROR $c" ;; esac
  done
}
refusals() {
  while [ "$(date +%s)" -lt "$END" ]; do
    a=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $OTHER" "http://127.0.0.1:$P_GH/secret/repo.git/info/refs?service=git-upload-pack")
    b=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer not-a-token" "http://127.0.0.1:$P_GH/bench/repo.git/info/refs?service=git-upload-pack")
    if [ "$a" = 403 ] && [ "$b" = 401 ]; then count refusal ok; else count refusal "ERROR $a $b"; fi
  done
}
clones & PIDS+=($!)
pushes & PIDS+=($!)
api & PIDS+=($!)
refusals & PIDS+=($!)
: >"$WORK/samples.csv"
START=$(date +%s)
while [ "$(date +%s)" -lt "$END" ]; do
  echo "$(( $(date +%s) - START )),$(rss_kib),$(fds)" >>"$WORK/samples.csv"
  sleep 5
done
wait "${PIDS[@]}" 2>/dev/null || true
PIDS=()
sleep 2
echo "$(( $(date +%s) - START )),$(rss_kib),$(fds)" >>"$WORK/samples.csv"
kill -TERM "$GH_PID"; wait "$GH_PID" 2>/dev/null || true
GH_PID=""
"$BIN" audit verify "$GH/audit.log" >"$WORK/verify.txt" 2>&1 && VERIFY=ok || VERIFY=FAILED

tally() { if [ -f "$WORK/counts/$1" ]; then grep -c "^$2" "$WORK/counts/$1" || true; else echo 0; fi; }
ERRORS=$(cat "$WORK"/counts/clone "$WORK"/counts/push "$WORK"/counts/api "$WORK"/counts/refusal 2>/dev/null | grep -c ERROR || true)
# Warm-up: the first minute (a quarter of a short run).
WARM_AT=$(( SOAK / 4 < 60 ? SOAK / 4 : 60 ))
WARM=$(awk -F, -v t="$WARM_AT" '$1 >= t { print $2; exit }' "$WORK/samples.csv")
LAST_RSS=$(tail -1 "$WORK/samples.csv" | cut -d, -f2)
MAX_RSS=$(cut -d, -f2 "$WORK/samples.csv" | sort -n | tail -1)
FD_START=$(head -1 "$WORK/samples.csv" | cut -d, -f3)
FD_END=$(tail -1 "$WORK/samples.csv" | cut -d, -f3)
RSS_OK=$(awk -v w="$WARM" -v l="$LAST_RSS" 'BEGIN { print (l <= w * 1.10 && l >= w * 0.90) ? "PASS" : "MISS" }')
FD_OK=$([ "$FD_END" -le $((FD_START + 16)) ] && echo PASS || echo MISS)

TS=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$RESULTS/soak-$TS.md
{
  echo "# Gatehouse load and soak, $TS"
  echo
  echo "- Commit: \`$(git -C "$ROOT" rev-parse --short HEAD)\`$(git -C "$ROOT" status --porcelain | grep -q . && echo ' (dirty)'); \`$("$BIN" --version)\`"
  echo "- Machine: $(nproc) CPUs ($(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
  echo "- Upstream: nginx + fcgiwrap (4) + \`git http-backend\` on 127.0.0.1; Gatehouse default threads, audit on"
  echo
  echo "## (a) $IDLE idle keep-alive connections"
  echo
  echo "| | RSS KiB | open fds |"
  echo "|---|---|---|"
  echo "| before | $RSS0 | $FD0 |"
  echo "| holding $HELD ($HELD_FAILED failed to open) | $RSS_HELD | $FD_HELD |"
  echo "| after they closed | $RSS_AFTER | $FD_AFTER |"
  echo
  awk -v a="$RSS0" -v b="$RSS_HELD" -v n="$HELD" 'BEGIN { if (n > 0) printf "- %.1f KiB per idle connection.\n", (b - a) / n }'
  echo
  echo "## (b) ${SOAK} s mixed soak"
  echo
  echo "| loop | ok | errors |"
  echo "|---|---|---|"
  for l in clone push api refusal; do echo "| $l | $(tally "$l" ok) | $(tally "$l" ERROR) |"; done
  echo
  echo "| check | measured | result |"
  echo "|---|---|---|"
  echo "| RSS at the end within 10% of RSS after ${WARM_AT} s | $WARM KiB -> $LAST_RSS KiB (max $MAX_RSS) | $RSS_OK |"
  echo "| open fds at the end within 16 of the start | $FD_START -> $FD_END | $FD_OK |"
  echo "| errors other than the intended refusals | $ERRORS | $([ "$ERRORS" = 0 ] && echo PASS || echo MISS) |"
  echo "| \`gatehouse audit verify\` | $(cat "$WORK/verify.txt") | $VERIFY |"
  echo
  echo "Samples (seconds, RSS KiB, fds) are in bench/work/soak/samples.csv while the work directory lasts."
} >"$OUT"
cp "$OUT" "$RESULTS/soak-latest.md"
log "results: ${OUT#"$ROOT"/}"
cat "$OUT"
