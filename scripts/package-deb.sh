#!/usr/bin/env bash
# Builds the Debian package: bash scripts/package-deb.sh [--profile dist] [--out DIR]
#   1. builds gatehouse and git-credential-gatehouse with the profile (default `dist`: fat LTO,
#      one codegen unit; `--no-build` packages what the profile's directory already holds),
#   2. generates the man page and the bash, zsh and fish completions from the CLI itself,
#   3. runs cargo-deb, which strips the binaries and ships their debug info under /usr/lib/debug.
# Prints the path of the .deb and the size of each stripped binary. Needs cargo-deb
# (scripts/install-deps.sh installs it).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PROFILE=dist
OUT=${CARGO_TARGET_DIR:-$ROOT/target}/debian
BUILD=1
while (($#)); do
  case $1 in
    --profile) PROFILE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) echo "usage: $0 [--profile NAME] [--out DIR] [--no-build]" >&2; exit 2 ;;
  esac
done
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# Cargo names the dev profile's directory `debug`.
DIR=$TARGET/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
if ((BUILD)); then
  # With OTLP trace export ([traces]): what an operator of the package expects to have.
  cargo build --locked --profile "$PROFILE" -p gatehouse --features otlp --bins
fi
for b in gatehouse git-credential-gatehouse; do
  [ -x "$DIR/$b" ] || { echo "package-deb: $DIR/$b not built" >&2; exit 1; }
done
GEN=$DIR/gen
mkdir -p "$GEN"
"$DIR/gatehouse" man | gzip -9n > "$GEN/gatehouse.1.gz"
"$DIR/gatehouse" completions bash > "$GEN/gatehouse.bash"
"$DIR/gatehouse" completions zsh > "$GEN/_gatehouse"
"$DIR/gatehouse" completions fish > "$GEN/gatehouse.fish"
mkdir -p "$OUT"
deb=$(cargo deb --locked -p gatehouse --no-build --profile "$PROFILE" --output "$OUT" 2>&1 | tail -1)
[ -f "$deb" ] || { echo "package-deb: cargo deb said: $deb" >&2; exit 1; }
echo "$deb"
