#!/usr/bin/env bash
# The compose `build` service: unit tests first, then the three functions cross-built for
# Lambda (glibc 2.34, as on provided.al2023) and zipped as `bootstrap`, then the generator
# for this container's platform. Terraform waits for this to exit 0.
#
# `build.sh package` runs only the packaging step, from binaries already built (the tests
# run it on the host to check that the same binary always gives the same zip).
#
# The zips are byte for byte the same for the same binary (fixed file time, mode and
# order, no extra attributes): Terraform compares their hash, so an unchanged build
# deploys nothing.
set -euo pipefail

case "${LAMBDA_ARCH:-}" in
  x86_64) target=x86_64-unknown-linux-gnu ;;
  arm64) target=aarch64-unknown-linux-gnu ;;
  *) echo "build: LAMBDA_ARCH must be x86_64 or arm64, got '${LAMBDA_ARCH:-}' (set it in .env)" >&2; exit 2 ;;
esac
dist=${DIST_DIR:?DIST_DIR must name the output directory}
step=${1:-all}
case "$step" in
  all|package) ;;
  *) echo "build: unknown step '$step' (expected: all or package)" >&2; exit 2 ;;
esac

# One function's zip: the binary as an executable `bootstrap`, dated 2026-01-01 UTC.
package() {
  local binary=$1 zip=$2 staging
  [ -f "$binary" ] || { echo "build: $binary is missing (build the functions first)" >&2; return 1; }
  staging=$(mktemp -d)
  cp "$binary" "$staging/bootstrap"
  chmod 0755 "$staging/bootstrap"
  TZ=UTC touch -d '2026-01-01 00:00:00' "$staging/bootstrap"
  rm -f "$zip"
  # -X: no uid/gid or extended timestamps; -D: no directory entries; TZ: zip stores local time.
  (cd "$staging" && TZ=UTC zip -q -X -D "$zip.partial" bootstrap)
  mv "$zip.partial" "$zip"
  rm -rf "$staging"
  echo "build: $zip $(du -h "$zip" | cut -f1)"
}

build_functions() {
  echo "build: unit tests"
  cargo test --locked --workspace

  echo "build: functions for ${target} (glibc 2.34)"
  if ! command -v cargo-zigbuild >/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3-pip zip >/dev/null
    pip3 install --quiet --break-system-packages ziglang==0.15.2 cargo-zigbuild==0.24.0
  fi
  rustup target add "${target}"
  cargo zigbuild --locked --release --target "${target}.2.34" -p ingester -p processor -p relay
}

build_generator() {
  echo "build: job-generator for $(uname -m)"
  cargo build --locked --release -p job-generator
  cp "${CARGO_TARGET_DIR}/release/job-generator" "${dist}/job-generator"
}

[ "$step" = all ] && build_functions
mkdir -p "${dist}"
dist=$(cd "${dist}" && pwd)
for fn in ingester processor relay; do
  package "${CARGO_TARGET_DIR:?CARGO_TARGET_DIR must name the cargo target directory}/${target}/release/${fn}" "${dist}/${fn}.zip"
done
[ "$step" = all ] && build_generator
echo "build: done"
