#!/usr/bin/env bash
# The whole test suite: installs and starts what it needs, runs every test, stops it all.
# Works on a fresh Debian machine with the Rust toolchain, as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/testbed-setup.sh

# Each test starts its own private dockerd under /tmp/tb-*; they stop when the test ends.
# Should a test process die hard, stop whatever it left running.
cleanup() {
    pkill -TERM -f 'dockerd --host unix:///tmp/tb-' 2>/dev/null || true
    pkill -TERM -f 'moto_server -H 127.0.0.1' 2>/dev/null || true
}
trap cleanup EXIT

export DROVER_MOTO_SERVER="$PWD/.testbed/venv/bin/moto_server"
cargo build --workspace --all-targets
cargo test --workspace --all-targets -- --test-threads="${DROVER_TEST_THREADS:-2}"
