#!/usr/bin/env bash
# The compose `build` service: unit tests first, then the two functions cross-built for
# Lambda (glibc 2.34, as on provided.al2023) and zipped as `bootstrap`, then the generator
# for this container's platform. Terraform waits for this to exit 0.
set -euo pipefail

case "${LAMBDA_ARCH:-}" in
  x86_64) target=x86_64-unknown-linux-gnu ;;
  arm64) target=aarch64-unknown-linux-gnu ;;
  *) echo "build: LAMBDA_ARCH must be x86_64 or arm64, got '${LAMBDA_ARCH:-}' (set it in .env)" >&2; exit 2 ;;
esac
dist=${DIST_DIR:?DIST_DIR must name the output directory}

echo "build: unit tests"
cargo test --locked --workspace

echo "build: functions for ${target} (glibc 2.34)"
if ! command -v cargo-zigbuild >/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-pip zip >/dev/null
  pip3 install --quiet --break-system-packages ziglang==0.15.2 cargo-zigbuild==0.24.0
fi
rustup target add "${target}"
cargo zigbuild --locked --release --target "${target}.2.34" -p ingester -p processor

mkdir -p "${dist}"
for fn in ingester processor; do
  staging=$(mktemp -d)
  cp "${CARGO_TARGET_DIR}/${target}/release/${fn}" "${staging}/bootstrap"
  (cd "${staging}" && rm -f "${dist}/${fn}.zip" && zip -q -X "${dist}/${fn}.zip" bootstrap)
  rm -rf "${staging}"
  echo "build: ${dist}/${fn}.zip $(du -h "${dist}/${fn}.zip" | cut -f1)"
done

echo "build: job-generator for $(uname -m)"
cargo build --locked --release -p job-generator
cp "${CARGO_TARGET_DIR}/release/job-generator" "${dist}/job-generator"
echo "build: done"
