#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: the guest toolchain, the host
# workspace (unit, artifact, and end-to-end tests over real HTTP/1.1, HTTP/2,
# HTTP/3 and WebTransport against guests built by the real toolchain, and a
# headless Chromium opening the echo stream), and the guest SDK.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/guest-toolchain.sh
# The browser test drives Debian's Chromium through chromedriver; the channel
# cluster test starts its own nats-server (JetStream); the ACME tests start
# their own pebble (a real ACME CA) and pebble-challtestsrv (its DNS).
scripts/apt-install.sh chromium chromium-driver nats-server pebble
command -v cargo >/dev/null || { echo "test.sh: cargo (rustup stable) not found" >&2; exit 1; }

# One target dir for the host workspace and the guest SDK's native tests; the
# guest builds share target/guest.
export CARGO_TARGET_DIR="$PWD/target"
cargo test --workspace --locked
# The SDK's own logic, natively (its wasm side is exercised by the tests above).
cargo test --manifest-path guest-sdk/Cargo.toml --workspace
