#!/usr/bin/env bash
# Installs the Rust -> wasm32-wasip1 guest toolchain from Debian packages and
# checks it. Idempotent: installs only what is missing.
#
# Debian's rustc-web ships LLVM's WebAssembly backend and, in rust-web-src,
# the standard-library sources of the same release, so guests build std with
# -Zbuild-std (toil build sets that up). wasm-ld must match rustc's LLVM.
set -euo pipefail

install() { "$(dirname "$0")/apt-install.sh" "$@"; }

install rustc-web cargo-web rust-web-src wasi-libc
llvm_major=$(/usr/bin/rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$llvm_major" ] || { echo "guest-toolchain: /usr/bin/rustc names no LLVM version" >&2; exit 1; }
install "lld-${llvm_major}"

# Checks: compiler and library sources of one release, the linker, WASI libc.
rustc_release=$(/usr/bin/rustc -vV | sed -n 's/^release: //p')
src=$(readlink -f /usr/lib/rustlib/src/rust)
case "$src" in
    *"$rustc_release"*) ;;
    *) echo "guest-toolchain: rustc $rustc_release but std sources at $src" >&2; exit 1 ;;
esac
command -v "wasm-ld-${llvm_major}" >/dev/null || { echo "guest-toolchain: wasm-ld-${llvm_major} missing" >&2; exit 1; }
[ -d /usr/lib/wasm32-wasi ] || { echo "guest-toolchain: /usr/lib/wasm32-wasi missing (wasi-libc)" >&2; exit 1; }
echo "guest-toolchain: rustc-web $rustc_release, wasm-ld-${llvm_major}, wasi-libc: ok"
