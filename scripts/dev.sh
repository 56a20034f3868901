#!/usr/bin/env bash
# Sets up a fresh machine and runs `toil dev` on the examples (toilconfig.json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/guest-toolchain.sh
exec cargo run -p toil-cli -- dev "$@"
