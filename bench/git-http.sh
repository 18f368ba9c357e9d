#!/usr/bin/env bash
# A Git smart-HTTP server on loopback: nginx -> fcgiwrap -> `git http-backend`.
#
#   bench/git-http.sh start PORT REPOS_DIR STATE_DIR   serves REPOS_DIR/<owner>/<repo>.git
#                                                      at http://127.0.0.1:PORT/<owner>/<repo>.git
#   bench/git-http.sh stop STATE_DIR                   stops what `start` left in STATE_DIR
#
# Env: NGINX_WORKERS (default 1), FCGI_CHILDREN (default 2: one git process per concurrent request),
# GIT_HTTP_WRITES=1 (accept pushes, and answer `/api/...` with 201 `{}` for any method: a forge
# API's writes without the forge; used by bench/writes.sh).
# Without GIT_HTTP_WRITES, reads only; pushes are refused (no http.receivepack). REMOTE_USER is taken from the
# X-WEBAUTH-USER header, the name Gatehouse sends upstream by default.
# Needs nginx and fcgiwrap (scripts/install-deps.sh installs them).
set -euo pipefail
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

die() { printf 'git-http: %s\n' "$*" >&2; exit 1; }

stop() {
  local d=$1 fp="" np="" kids="" p
  [ -f "$d/fcgiwrap.pid" ] && fp=$(cat "$d/fcgiwrap.pid")
  [ -f "$d/nginx.pid" ] && np=$(cat "$d/nginx.pid")
  # fcgiwrap's preforked children do not exit with their parent, and the parent replaces a child
  # that dies. So: note the children, end the parent, then end the noted children. Both parents
  # take a second or two to exit, so they are stopped together.
  [ -z "$fp" ] || kids=$(pgrep -P "$fp" || true)
  for p in $fp $np; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $fp $np; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  # shellcheck disable=SC2086
  [ -z "$kids" ] || kill -TERM $kids 2>/dev/null || true
  rm -f "$d/fcgiwrap.sock" "$d/fcgiwrap.pid" "$d/nginx.pid"
}

start() {
  local port=$1 repos d backend user_line api_location push_params
  repos=$(realpath "$2")
  mkdir -p "$3/tmp"
  d=$(realpath "$3")
  backend="$(git --exec-path)/git-http-backend"
  [ -x "$backend" ] || die "no git-http-backend at $backend"
  command -v nginx >/dev/null || die "nginx not found"
  command -v fcgiwrap >/dev/null || die "fcgiwrap not found"
  # Workers must reach fcgiwrap's socket, and git refuses repositories owned by another user.
  user_line=""
  [ "$(id -u)" = 0 ] && user_line="user root root;"
  api_location="" push_params=""
  if [ "${GIT_HTTP_WRITES:-0}" = 1 ]; then
    api_location='    location /api/ { default_type application/json; return 201 "{}\n"; }'
    push_params='      fastcgi_param GIT_CONFIG_COUNT 1;
      fastcgi_param GIT_CONFIG_KEY_0 http.receivepack;
      fastcgi_param GIT_CONFIG_VALUE_0 true;'
  fi

  rm -f "$d/fcgiwrap.sock"
  fcgiwrap -c "${FCGI_CHILDREN:-2}" -s "unix:$d/fcgiwrap.sock" </dev/null >"$d/fcgiwrap.log" 2>&1 &
  echo $! >"$d/fcgiwrap.pid"
  for _ in $(seq 1 50); do [ -S "$d/fcgiwrap.sock" ] && break; sleep 0.1; done
  [ -S "$d/fcgiwrap.sock" ] || { stop "$d"; die "fcgiwrap did not create its socket"; }

  cat >"$d/nginx.conf" <<CONF
$user_line
worker_processes ${NGINX_WORKERS:-1};
daemon on;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d/tmp/body;
  fastcgi_temp_path $d/tmp/fastcgi;
  proxy_temp_path $d/tmp/proxy;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  server {
    listen 127.0.0.1:$port;
    client_max_body_size 0;
$api_location
    location / {
      fastcgi_pass unix:$d/fcgiwrap.sock;
      # Our own parameter list rather than /etc/nginx/fastcgi_params, whose REMOTE_USER would be
      # a second (empty) one. Request headers reach the CGI as HTTP_* (HTTP_GIT_PROTOCOL for v2).
      fastcgi_param REQUEST_METHOD \$request_method;
      fastcgi_param QUERY_STRING \$query_string;
      fastcgi_param CONTENT_TYPE \$content_type;
      fastcgi_param CONTENT_LENGTH \$content_length;
      fastcgi_param REMOTE_ADDR \$remote_addr;
      fastcgi_param SERVER_PROTOCOL \$server_protocol;
      fastcgi_param SCRIPT_FILENAME $backend;
      fastcgi_param GIT_PROJECT_ROOT $repos;
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO \$uri;
      fastcgi_param REMOTE_USER \$http_x_webauth_user;
$push_params
      fastcgi_request_buffering off;
      fastcgi_buffering off;
      fastcgi_read_timeout 300s;
    }
  }
}
CONF
  nginx -q -t -p "$d" -e "$d/error.log" -c "$d/nginx.conf" || { stop "$d"; die "bad nginx config"; }
  nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" || { stop "$d"; die "nginx did not start"; }
  for _ in $(seq 1 50); do
    if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; then
      echo "git-http: http://127.0.0.1:$port/ -> $repos"
      return 0
    fi
    sleep 0.1
  done
  cat "$d/error.log" >&2 || true
  stop "$d"
  die "nginx is not answering on 127.0.0.1:$port"
}

case "${1:-}" in
  start) [ $# -eq 4 ] || die "usage: $0 start PORT REPOS_DIR STATE_DIR"; start "$2" "$3" "$4" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop STATE_DIR"; stop "$2" ;;
  *) die "usage: $0 start PORT REPOS_DIR STATE_DIR | stop STATE_DIR" ;;
esac
