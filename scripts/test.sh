#!/usr/bin/env bash
# The whole test suite: installs what it needs, then format, lint and every
# test (unit, property, and integration tests that drive the real binary
# with net_null, net_pcap and net_tap between network namespaces).
# Needs root (namespaces, taps). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== cargo test"
cargo test --workspace --release
